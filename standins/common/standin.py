"""The base of the HTTPS stand-ins: what each request goes through before its protocol, and
what every stand-in keeps (secret, lock, fault rules, control API, state file)."""

from __future__ import annotations

import json
import os
import secrets
import ssl
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from standins.common.control import CONTROL_PREFIX, ControlAPI
from standins.common.faults import FaultBook, FaultRule
from standins.common.http import Reply, StandInHandler, StandInServer
from standins.tls import StandIn


class HttpStandIn(StandIn):
    """A stand-in speaking HTTPS. A subclass builds ``faults`` and ``control`` in its
    __init__ and implements ``_serve`` (its protocol), ``state``, ``reset``, ``call_log``,
    ``_snapshot`` and ``_restore``. Requests are applied one at a time (``_lock``)."""

    handler: ClassVar[type[StandInHandler]] = StandInHandler
    json_content_type: ClassVar[str] = "application/json; charset=utf-8"

    faults: FaultBook[Any]
    control: ControlAPI

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        client_secret: str | None,
        state_file: str | Path | None,
        cert_dir: str | Path | None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self._state_file = Path(state_file) if state_file else None
        self._cert_dir = Path(cert_dir) if cert_dir else None
        self._own_cert_dir = None
        self.ca_path = ""
        self._url = ""
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._dirty = threading.Event()
        self._httpd = None
        self._threads = []
        self._more_httpds = []

    def _server(self, address: tuple[str, int], context: ssl.SSLContext) -> StandInServer:
        return StandInServer(address, self, self.handler, context)

    # -- what a subclass provides ------------------------------------------------------------

    def _serve(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply | None:
        raise NotImplementedError

    def state(self, *, records: bool = True) -> dict[str, Any]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    @property
    def call_log(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def json_default(self, value: Any) -> Any:
        """How JSON bodies and the state file encode what json cannot (timestamps)."""
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    def _snapshot(self) -> dict[str, Any]:
        """What the state file keeps (called with the lock held)."""
        raise NotImplementedError

    def _restore(self, data: Mapping[str, Any]) -> None:
        """Take back what _snapshot gave (called with the lock held)."""
        raise NotImplementedError

    # -- faults ------------------------------------------------------------------------------

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        until: Callable[[], bool] | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> int:
        """Make matching requests fail (or stall) while the fault lasts; returns its id."""
        return self.faults.add(
            kind,
            times=times,
            until=until,
            for_seconds=for_seconds,
            seconds=seconds,
            path_contains=path_contains,
        )

    def clear_faults(self) -> None:
        self.faults.clear()

    def mark_changed(self) -> None:
        """The state file is due a save (the saver thread gathers a burst into one)."""
        self._dirty.set()

    def hold(self, delay: FaultRule | None) -> bool:
        """Hold a request for a delay fault. True if the stand-in began stopping meanwhile:
        the request is then dropped rather than answered."""
        return delay is not None and self._stopping.wait(delay.seconds)

    # -- requests ----------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        """Answer one HTTP request; None means drop the connection (stopping)."""
        split = urlsplit(raw_path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if split.path.startswith(CONTROL_PREFIX):
            return self.control.handle(method, split.path, params, headers, body)
        return self._serve(method, split.path, params, headers, body)

    def encode(self, reply: Reply) -> tuple[bytes, str]:
        """The bytes of a reply's body and their content type."""
        if isinstance(reply.body, bytes):
            return reply.body, reply.content_type or "application/octet-stream"
        if reply.body is None:
            return b"", ""
        data = json.dumps(reply.body, default=self.json_default).encode()
        return data, reply.content_type or self.json_content_type

    # -- the state file ----------------------------------------------------------------------

    def _save(self, path: Path) -> None:
        with self._lock:
            self._dirty.clear()
            data = json.dumps(self._snapshot(), default=self.json_default)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(data)
        os.replace(temporary, path)  # a crash mid-write leaves the previous state

    def _load_state(self) -> None:
        if self._state_file is not None and self._state_file.exists():
            data = json.loads(self._state_file.read_text())
            with self._lock:
                self._restore(data)
