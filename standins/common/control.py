"""The control API under ``/__standin__/``, and the client that drives it from another
process.

Every request must carry the stand-in's client secret in ``X-Standin-Secret``. The common
endpoints: ``GET state`` (``?records=0`` for counters only), ``POST reset``, ``POST faults``
(a fault rule, as ``fail()`` takes it), ``DELETE faults`` and ``GET calls`` (the call log). A
stand-in subclasses ControlAPI and StandInClient for its own helpers.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote

import requests

from standins.common.faults import FaultBook
from standins.common.http import Reply
from standins.tls import run_standin_process

CONTROL_PREFIX = "/__standin__/"
SECRET_HEADER = "X-Standin-Secret"  # noqa: S105 (a header name)
DEFAULT_CLIENT_ID = "preference-desk"


class Controllable(Protocol):
    """What the common endpoints use: an HttpStandIn."""

    client_secret: str
    faults: FaultBook[Any]

    @property
    def call_log(self) -> list[tuple[str, str]]: ...

    def state(self, *, records: bool = True) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> int: ...

    def clear_faults(self) -> None: ...


class ControlAPI:
    """Answers ``/__standin__/...`` for one stand-in; a subclass extends ``route`` (and
    narrows ``standin`` to a protocol with its stand-in's helpers)."""

    standin: Controllable

    def __init__(self, standin: Controllable) -> None:
        self.standin = standin

    def handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        secret = headers.get(SECRET_HEADER.lower(), "")
        if not hmac.compare_digest(secret.encode(), self.standin.client_secret.encode()):
            return Reply(403, {"error": f"{SECRET_HEADER} must carry the client secret"})
        parts = [unquote(p) for p in path[len(CONTROL_PREFIX) :].strip("/").split("/")]
        try:
            data = json.loads(body) if body else {}
            reply = self.route(method, parts, params, data)
        except KeyError as exc:
            return Reply(400 if method == "POST" else 404, {"error": f"missing or unknown: {exc}"})
        except (TypeError, ValueError, AttributeError) as exc:
            return Reply(400, {"error": str(exc)})
        if reply is None:
            return Reply(404, {"error": f"no control endpoint {method} {path}"})
        return reply

    def route(
        self, method: str, parts: list[str], params: Mapping[str, str], data: Any
    ) -> Reply | None:
        """The reply to one control request, or None if there is no such endpoint."""
        standin = self.standin
        match [method, *parts]:
            case ["GET", "state"]:
                return Reply(200, standin.state(records=params.get("records", "1") != "0"))
            case ["POST", "reset"]:
                standin.reset()
                return Reply(204)
            case ["POST", "faults"]:
                kind = data["kind"]
                names = ("times", "for_seconds", "seconds", "path_contains")
                options = {name: data.get(name) for name in names}
                options.update({name: data.get(name) for name in standin.faults.rule.filters})
                return Reply(201, {"id": standin.fail(kind, **options)})
            case ["DELETE", "faults"]:
                standin.clear_faults()
                return Reply(204)
            case ["GET", "calls"]:
                return Reply(200, [list(entry) for entry in standin.call_log])
        return None


class StandInClient:
    """Drives a stand-in in another process through its control endpoints, over HTTPS.

    The same helpers as the stand-in, except ``fail(until=...)`` (a callable cannot cross
    processes: use ``times`` or ``for_seconds``).
    """

    def __init__(
        self, url: str, ca_path: str, client_secret: str, client_id: str = DEFAULT_CLIENT_ID
    ) -> None:
        self.url = url.rstrip("/")
        self.ca_path = ca_path
        self.client_id = client_id
        self.client_secret = client_secret
        self._http = requests.Session()
        self._http.headers[SECRET_HEADER] = client_secret

    def _request(
        self, method: str, path: str, payload: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        response = self._http.request(
            method,
            self.url + CONTROL_PREFIX + path,
            json=payload,
            params=params,
            timeout=30,
            verify=self.ca_path,
        )
        if response.status_code >= 400:
            raise RuntimeError(
                f"stand-in {method} {path}: HTTP {response.status_code} {response.text[:500]}"
            )
        return response.json() if response.content else None

    def close(self) -> None:
        self._http.close()

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> int:
        return self._add_fault(
            kind, times=times, for_seconds=for_seconds, seconds=seconds, path_contains=path_contains
        )

    def _add_fault(self, kind: str, **options: Any) -> int:
        return int(self._request("POST", "faults", {"kind": kind, **options})["id"])

    def clear_faults(self) -> None:
        self._request("DELETE", "faults")

    def reset(self) -> None:
        self._request("POST", "reset")

    def state(self, *, records: bool = True) -> dict[str, Any]:
        return dict(self._request("GET", "state", params={"records": "1" if records else "0"}))

    @property
    def api_calls(self) -> int:
        return int(self.state(records=False)["api_calls"])

    @property
    def call_log(self) -> list[tuple[str, str]]:
        return [(first, second) for first, second in self._request("GET", "calls")]


Client = TypeVar("Client", bound=StandInClient)


@contextmanager
def client_process(
    client: type[Client],
    module: str,
    *,
    label: str,
    env_name: str,
    clear_env: Iterable[str] = (),
    port: int = 0,
    args: Iterable[str] = (),
    startup_timeout: float = 20.0,
) -> Iterator[Client]:
    """Run ``python -m <module>`` in a subprocess and yield a client for it."""
    with run_standin_process(
        module,
        label=label,
        env_name=env_name,
        clear_env=clear_env,
        port=port,
        args=args,
        startup_timeout=startup_timeout,
    ) as (info, secret):
        remote = client(info["url"], info["ca_path"], secret, info["client_id"])
        try:
            yield remote
        finally:
            remote.close()
