"""A stand-in for the part of the Salesforce REST API (v60.0) that Preference Desk uses.

A real HTTPS server on loopback, with a certificate generated at start (clients verify it
against ``ca_path``). It keeps contacts and tasks in memory, counts API calls, sends the
``Sforce-Limit-Info`` header, and can be told to fail. Three ways to run it:

- in-process: ``server = SalesforceStandIn(port=0); server.start(); ...; server.stop()``, or
  ``with running_standin() as server: ...`` (wrap that in a pytest fixture);
- in another process, driven over HTTPS: ``with standin_process() as server: ...`` yields a
  ``SalesforceStandInClient`` with the same helper methods, talking to the control endpoints
  under ``/__standin__/`` (authenticated by the client secret);
- standalone for the demo:
  ``python -m standins.salesforce --port 8443 --state-file .data/salesforce.json``.

Deliberate simplifications, each one safe for what the app does: one org, one API user;
only Contact and Task; SOQL limited to the two shapes the inbound sync sends; requests are
applied one at a time (a global lock), so every call is atomic.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import ssl
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import requests
from cryptography.hazmat.primitives import serialization

from standins.tls import StandIn, TLSRequestHandler, TLSServer, run_standin_process

logger = logging.getLogger(__name__)

API_VERSION = "v60.0"
MAX_RECORDS = 200  # sObject Collections
MAX_SUBREQUESTS = 25  # composite
MAX_COLLECTION_SUBREQUESTS = 5  # composite: collections and queries among the 25
DEFAULT_PAGE_SIZE = 2000
DEFAULT_API_ALLOWANCE = 100_000
DEFAULT_TASK_EXTERNAL_ID = "Preference_Change_Id__c"
DEFAULT_CLIENT_ID = "preference-desk"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/services/oauth2/token"  # noqa: S105 (a path, not a password)
CONTROL_PREFIX = "/__standin__/"
SECRET_HEADER = "X-Standin-Secret"  # noqa: S105 (a header name)

FAULT_KINDS = frozenset(
    {
        "latency",
        "timeout",
        "http_503",
        "http_500",
        "unable_to_lock_row",
        "request_limit_exceeded",
        "expire_sessions",
    }
)
_DELAY_KINDS = frozenset({"latency", "timeout"})
_ERROR_KINDS = FAULT_KINDS - _DELAY_KINDS
_DEFAULT_DELAY = {"latency": 1.0, "timeout": 60.0}

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_DATA_PATH = re.compile(r"^/services/data/(v\d+\.\d+)/(.*?)/?$")
_DATETIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})"
_SELECT = re.compile(
    r"^SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)\s+WHERE\s+(?P<where>.+)$", re.I
)
_WINDOW = re.compile(
    rf"^SystemModstamp\s*>\s*(?P<since>{_DATETIME})"
    rf"(?:\s+AND\s+SystemModstamp\s*<=\s*(?P<until>{_DATETIME}))?"
    r"\s+ORDER\s+BY\s+SystemModstamp(?:\s+ASC)?(?:\s*,\s*Id(?:\s+ASC)?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?$",
    re.I,
)
_ID_LIST = re.compile(
    r"^Id\s+IN\s*\((?P<ids>\s*'[A-Za-z0-9]+'(?:\s*,\s*'[A-Za-z0-9]+')*\s*)\)"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?$",
    re.I,
)
_DATETIME_FIELDS = ("SystemModstamp", "LastModifiedDate", "CreatedDate")
_READ_ONLY = frozenset(
    name.lower()
    for name in (
        "Id",
        "IsDeleted",
        "SystemModstamp",
        "LastModifiedDate",
        "LastModifiedById",
        "CreatedDate",
        "CreatedById",
    )
)
_STANDARD_CONTACT_FIELDS = (
    "Id",
    "IsDeleted",
    "FirstName",
    "LastName",
    "Email",
    "Phone",
    "HasOptedOutOfEmail",
    "DoNotCall",
    "SystemModstamp",
    "LastModifiedDate",
    "LastModifiedById",
    "CreatedDate",
    "CreatedById",
)


def id18(id15: str) -> str:
    """The 18-character, case-insensitive form of a 15-character Salesforce ID."""
    if len(id15) != 15:
        return id15
    suffix = ""
    for start in range(0, 15, 5):
        bits = sum(1 << i for i, ch in enumerate(id15[start : start + 5]) if "A" <= ch <= "Z")
        suffix += _CHECKSUM[bits]
    return id15 + suffix


def normalize_id(value: object) -> str | None:
    """The canonical 18-character form of a 15- or 18-character Id, or None if it is not one.

    An 18-character Id is case-insensitive: its suffix says which letters are capitals.
    """
    if not isinstance(value, str) or not _ID.match(value):
        return None
    if len(value) == 15:
        return id18(value)
    chars = list(value[:15])
    suffix = value[15:].upper()
    for chunk, letter in enumerate(suffix):
        bits = _CHECKSUM.find(letter)
        for offset in range(5):
            i = chunk * 5 + offset
            chars[i] = chars[i].upper() if bits >> offset & 1 else chars[i].lower()
    restored = "".join(chars)
    return restored + suffix if id18(restored) == restored + suffix else None


def _make_id(prefix: str, number: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = _BASE62[rest] + digits
    return id18(prefix + "Sb" + digits.rjust(10, "0"))


ORG_ID = id18("00DSb0000000Org")
API_USER_ID = id18("005Sb000000ApiU")  # the connected app's run-as user: the app's writes
INTEGRATION_USER_ID = id18("005Sb000000McCn")  # Marketing Cloud Connect: external_update()
ADMIN_USER_ID = id18("005Sb000000Admn")  # whoever loaded the seed data: add_contact()


def format_datetime(value: datetime) -> str:
    """Salesforce's wire format: ``2024-05-01T12:00:00.000+0000``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError(f"date-time without a time zone: {text!r}")
    return value.astimezone(UTC)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return format_datetime(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _revive(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record read back from JSON, with its timestamps as datetimes again."""
    revived = dict(record)
    for name in _DATETIME_FIELDS:
        if isinstance(revived.get(name), str):
            revived[name] = parse_datetime(revived[name])
    return revived


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Refusal(Exception):
    """An error answer in Salesforce's shape: ``[{"message", "errorCode"}]``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def reply(self) -> _Reply:
        return _Reply(self.status, [{"message": self.message, "errorCode": self.code}])


_HALTED = _Refusal(
    400,
    "PROCESSING_HALTED",
    "The transaction was rolled back since another operation in the same transaction failed.",
)


@dataclass
class _Fault:
    id: int
    kind: str
    seconds: float
    times: int | None
    deadline: float | None
    until: Callable[[], bool] | None
    path_contains: str | None

    def active(self) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return not (self.until is not None and self.until())

    def matches(self, path: str) -> bool:
        # Without a filter a fault hits the REST API only, not the token endpoint: a test
        # that says "the next call fails" means the next API call.
        if self.path_contains is None:
            return path.startswith("/services/data/")
        return self.path_contains in path

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "seconds": self.seconds,
            "times": self.times,
            "path_contains": self.path_contains,
        }


@dataclass
class _Rejection:
    code: str
    message: str
    fields: list[str]
    times: int | None


def _fault_reply(kind: str) -> _Reply:
    status, code, message = {
        "http_503": (503, "SERVER_UNAVAILABLE", "Service unavailable (stand-in fault)"),
        "http_500": (500, "UNKNOWN_EXCEPTION", "An unexpected error occurred (stand-in fault)"),
        "unable_to_lock_row": (
            400,
            "UNABLE_TO_LOCK_ROW",
            "unable to obtain exclusive access to this record",
        ),
        "request_limit_exceeded": (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    }[kind]
    return _Refusal(status, code, message).reply()


def _record_result(
    record_id: str | None, error: tuple[str, str, list[str]] | None, created: bool | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": record_id,
        "success": error is None,
        "errors": []
        if error is None
        else [{"statusCode": error[0], "message": error[1], "fields": error[2]}],
    }
    if created is not None:
        result["created"] = created
    return result


_ROLLED_BACK: tuple[str, str, list[str]] = (
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
    [],
)


# --- the HTTPS server -----------------------------------------------------------------------


class _Server(TLSServer):
    def __init__(
        self, address: tuple[str, int], standin: SalesforceStandIn, context: ssl.SSLContext
    ) -> None:
        self.standin = standin
        super().__init__(address, _Handler, context)


class _Handler(TLSRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.standin.handle(self.command, self.path, headers, body)
        if reply is None:  # the stand-in is stopping while this request was held
            self.close_connection = True
            return
        payload = b"" if reply.body is None else json.dumps(reply.body, default=_json_default)
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
            if reply.status != 204:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout fault, or a test that moved on)
            self.close_connection = True


# --- the stand-in ---------------------------------------------------------------------------


class SalesforceStandIn(StandIn):
    """One Salesforce org with one API user, speaking HTTPS on loopback.

    Helpers for tests: ``add_contact``, ``contact``, ``tasks``, ``external_update``,
    ``delete_contact``, ``fail``, ``reject_record``, ``expire_sessions``, ``api_calls``,
    ``call_log``, ``reset``. All are thread-safe.
    """

    name = "salesforce-standin"
    ca_name = "Preference Desk Salesforce stand-in CA"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = None,
        jwt_public_key: str | bytes | None = None,
        jwt_username: str | None = None,
        jwt_audiences: Iterable[str] = (),
        task_external_id: str = DEFAULT_TASK_EXTERNAL_ID,
        page_size: int = DEFAULT_PAGE_SIZE,
        api_allowance: int = DEFAULT_API_ALLOWANCE,
        contact_fields: Iterable[str] | None = None,
        auto_create: bool = False,
        whole_second_modstamps: bool = False,
        state_file: str | Path | None = None,
        cert_dir: str | Path | None = None,
    ) -> None:
        """
        - ``jwt_public_key``: PEM of the connected app's certificate key; enables the JWT
          bearer flow. ``jwt_username``: if set, the only ``sub`` accepted.
        - ``contact_fields``: if given, the Contact's custom and standard fields beyond the
          built-in ones; writing or selecting any other field fails with ``INVALID_FIELD``,
          as a misconfigured category mapping would in a real org.
        - ``auto_create``: an update to an unknown (well-formed, 003) Id creates the contact,
          as if the org already held every contact the app knows (demo, benchmark).
        - ``whole_second_modstamps``: real Salesforce stores SystemModstamp to the second,
          so several writes can share one; by default the stand-in keeps milliseconds and
          makes every write call's stamp strictly greater than the last.
        """
        self.host = host
        self.port = port
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.jwt_username = jwt_username
        self.task_external_id = task_external_id
        self.page_size = page_size
        self.auto_create = auto_create
        self.whole_second_modstamps = whole_second_modstamps
        self._default_allowance = api_allowance
        self._jwt_key: Any = None
        self._jwt_audiences = set(jwt_audiences)
        if jwt_public_key is not None:
            self.set_jwt_public_key(jwt_public_key)
        self._schema: set[str] | None = None
        self._field_names = {name.lower(): name for name in _STANDARD_CONTACT_FIELDS}
        if contact_fields is not None:
            names = [*_STANDARD_CONTACT_FIELDS, *contact_fields]
            self._schema = {name.lower() for name in names}
            self._field_names.update({name.lower(): name for name in names})
        self._state_file = Path(state_file) if state_file else None
        self._cert_dir = Path(cert_dir) if cert_dir else None
        self._own_cert_dir: Path | None = None
        self.ca_path = ""
        self._url = ""
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._dirty = threading.Event()
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._tokens: dict[str, float] = {}
        self._fault_ids = 0
        self._clear()
        if self._state_file is not None and self._state_file.exists():
            self._load(self._state_file)

    def _clear(self) -> None:
        self._contacts: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, dict[str, Any]] = {}
        # (SystemModstamp, Id) in write order, which is stamp order: the window queries
        # bisect it instead of scanning every contact. Superseded entries are skipped.
        self._by_stamp: list[tuple[datetime, str]] = []
        self._cursors: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._faults: list[_Fault] = []
        self._rejections: dict[str, list[_Rejection]] = {}
        self._journal: dict[tuple[str, str], dict[str, Any] | None] | None = None
        self._serials: dict[str, int] = {}
        self._last_stamp = datetime(2000, 1, 1, tzinfo=UTC)
        self._api_used = 0
        self._api_calls = 0
        self._api_allowance = self._default_allowance
        self._log: deque[tuple[str, str]] = deque(maxlen=100_000)  # a demo runs for days

    # -- lifecycle ---------------------------------------------------------------------------

    def _server(self, address: tuple[str, int], context: ssl.SSLContext) -> _Server:
        return _Server(address, self, context)

    # -- helpers for tests and the demo -------------------------------------------------------

    def set_jwt_public_key(self, pem: str | bytes) -> None:
        self._jwt_key = serialization.load_pem_public_key(
            pem.encode() if isinstance(pem, str) else pem
        )

    def add_contact(self, **fields: Any) -> str:
        """Create a contact (as a data load would) and return its 18-character Id."""
        return self.add_contacts([fields])[0]

    def add_contacts(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        with self._lock:
            stamp = self._next_stamp()
            ids = []
            for fields in records:
                given = fields.get("Id")
                contact_id = self._normalize_id(given) if given else self._next_id("003")
                if contact_id is None:
                    raise ValueError(f"not a Salesforce Id: {given!r}")
                values = {k: v for k, v in fields.items() if k.lower() not in _READ_ONLY}
                record = self._new_contact(contact_id, stamp, ADMIN_USER_ID)
                record.update(self._canonical(values))
                self._put_contact(record)
                ids.append(contact_id)
            self._dirty.set()
            return ids

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        with self._lock:
            key = self._normalize_id(contact_id)
            record = self._contacts.get(key) if key else None
            return dict(record) if record is not None else None

    def contacts(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {key: dict(record) for key, record in self._contacts.items()}

    def tasks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(task) for task in self._tasks.values()]

    def task(self, external_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(external_id)
            return dict(task) if task is not None else None

    def external_update(self, contact_id: str, **fields: Any) -> datetime:
        """Change a contact as another integration would (Marketing Cloud Connect
        unsubscribing someone): LastModifiedById is the integration user, not the API user.
        Returns the new SystemModstamp."""
        with self._lock:
            key = self._normalize_id(contact_id)
            if key is None or key not in self._contacts:
                raise KeyError(contact_id)
            stamp = self._next_stamp()
            self._write_contact(key, self._canonical(fields), stamp, INTEGRATION_USER_ID)
            self._dirty.set()
            return stamp

    def delete_contact(self, contact_id: str) -> None:
        with self._lock:
            key = self._normalize_id(contact_id)
            if key is None or key not in self._contacts:
                raise KeyError(contact_id)
            self._write_contact(key, {"IsDeleted": True}, self._next_stamp(), ADMIN_USER_ID)
            self._dirty.set()

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
        """Make matching requests fail (or stall) while the fault lasts.

        ``kind``: latency (answer after ``seconds``), timeout (hold the request ``seconds``,
        default 60, then apply it anyway if still running — the client has given up by
        then, as with a real slow org), http_503, http_500, unable_to_lock_row (400),
        request_limit_exceeded (403), expire_sessions (invalidates every token; 401).
        Lasts ``times`` requests, ``for_seconds``, ``until`` the callable returns true, or
        (none given) until ``clear_faults``/``reset``. Without ``path_contains`` it hits
        every REST API path but not the token endpoint. Returns the fault's id.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        with self._lock:
            self._fault_ids += 1
            self._faults.append(
                _Fault(
                    id=self._fault_ids,
                    kind=kind,
                    seconds=seconds if seconds is not None else _DEFAULT_DELAY.get(kind, 0.0),
                    times=times,
                    deadline=time.monotonic() + for_seconds if for_seconds is not None else None,
                    until=until,
                    path_contains=path_contains,
                )
            )
            return self._fault_ids

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._rejections.clear()

    def reject_record(
        self,
        contact_id: str,
        code: str,
        message: str | None = None,
        *,
        fields: Iterable[str] = (),
        times: int | None = None,
    ) -> None:
        """Make updates of this contact fail per record with ``code`` (INVALID_FIELD,
        FIELD_CUSTOM_VALIDATION_EXCEPTION, ENTITY_IS_DELETED, UNABLE_TO_LOCK_ROW...) — every
        time, or the next ``times`` times."""
        key = self._normalize_id(contact_id)
        if key is None:
            raise ValueError(f"not a Salesforce Id: {contact_id!r}")
        with self._lock:
            self._rejections.setdefault(key, []).append(
                _Rejection(code, message or f"{code} (stand-in rejection)", list(fields), times)
            )

    def expire_sessions(self) -> None:
        """Invalidate every token issued so far; a fresh login works again."""
        with self._lock:
            self._tokens.clear()

    def set_api_usage(self, used: int | None = None, allowance: int | None = None) -> None:
        with self._lock:
            if used is not None:
                self._api_used = used
            if allowance is not None:
                self._api_allowance = allowance

    @property
    def api_calls(self) -> int:
        """REST API calls answered since start or reset (a composite is one; token requests,
        401s, injected faults and refusals for the limit are not counted)."""
        with self._lock:
            return self._api_calls

    @property
    def call_log(self) -> list[tuple[str, str]]:
        """(method, path) of every request, token requests and failed calls included."""
        with self._lock:
            return list(self._log)

    @property
    def api_usage(self) -> tuple[int, int]:
        with self._lock:
            return self._api_used, self._api_allowance

    def reset(self) -> None:
        """Forget contacts, tasks, faults, counters. Issued tokens stay valid, so a worker
        holding one carries on (use expire_sessions() to test that)."""
        with self._lock:
            self._clear()
            self._dirty.set()

    def state(self, *, records: bool = True) -> dict[str, Any]:
        with self._lock:
            state: dict[str, Any] = {
                "api_calls": self._api_calls,
                "api_usage": [self._api_used, self._api_allowance],
                "faults": [fault.describe() for fault in self._faults if fault.active()],
                "contact_count": len(self._contacts),
                "task_count": len(self._tasks),
                "page_size": self.page_size,
            }
            if records:
                state["call_log"] = [list(entry) for entry in self._log]
                state["contacts"] = {key: dict(value) for key, value in self._contacts.items()}
                state["tasks"] = [dict(task) for task in self._tasks.values()]
            return state

    # -- requests ----------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> _Reply | None:
        """Answer one HTTP request; None means drop the connection (stopping)."""
        split = urlsplit(raw_path)
        path = split.path
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, params, headers, body)
        with self._lock:
            self._log.append((method, path))
            delay = self._take_fault(path, _DELAY_KINDS)
        if delay is not None and self._stopping.wait(delay.seconds):
            return None
        try:
            if path == TOKEN_PATH:
                with self._lock:
                    fault = self._take_fault(path, _ERROR_KINDS - {"expire_sessions"})
                if fault is not None:
                    return _fault_reply(fault.kind)
                return self._token(method, headers, body)
            if not path.startswith("/services/data/"):
                raise _Refusal(404, "NOT_FOUND", "The requested resource does not exist")
            return self._api(method, path, params, headers, body)
        except _Refusal as refusal:
            return refusal.reply()

    def _api(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Reply:
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            if self._take_fault(path, frozenset({"expire_sessions"})) is not None:
                self._tokens.clear()
            if scheme.lower() not in ("bearer", "oauth") or token.strip() not in self._tokens:
                reply = _Refusal(401, "INVALID_SESSION_ID", "Session expired or invalid").reply()
            elif self._api_used >= self._api_allowance:
                reply = _Refusal(
                    403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."
                ).reply()
            elif (fault := self._take_fault(path, _ERROR_KINDS - {"expire_sessions"})) is not None:
                reply = _fault_reply(fault.kind)
            else:
                self._api_used += 1
                self._api_calls += 1
                try:
                    payload = json.loads(body) if body else None
                except ValueError:
                    reply = _Refusal(400, "JSON_PARSER_ERROR", "The body is not JSON").reply()
                else:
                    try:
                        reply = self._route(method, path, params, payload)
                    except _Refusal as refusal:
                        reply = refusal.reply()
                self._dirty.set()
            reply.headers["Sforce-Limit-Info"] = f"api-usage={self._api_used}/{self._api_allowance}"
            return reply

    def _token(self, method: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        def refuse(error: str, description: str) -> _Reply:
            return _Reply(400, {"error": error, "error_description": description})

        if method != "POST":
            return refuse("invalid_request", "must use HTTP POST")
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
            client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
            scheme, _, basic = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "basic" and not client_id:
                try:
                    decoded = base64.b64decode(basic, validate=True).decode("utf-8", "replace")
                except ValueError:
                    decoded = ""
                client_id, _, client_secret = decoded.partition(":")
            if not (
                hmac.compare_digest(client_id.encode(), self.client_id.encode())
                and hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
            ):
                return refuse("invalid_client", "invalid client credentials")
            user_id = API_USER_ID
        elif grant == JWT_GRANT:
            if self._jwt_key is None:
                return refuse("invalid_grant", "no certificate is configured for this client")
            audiences = {self.url, self.url + "/", *self._jwt_audiences}
            try:
                claims = jwt.decode(
                    form.get("assertion", ""),
                    self._jwt_key,
                    algorithms=["RS256"],
                    audience=list(audiences),
                    options={"require": ["iss", "sub", "aud", "exp"]},
                )
            except jwt.ExpiredSignatureError:
                return refuse("invalid_grant", "expired authorization code")
            except jwt.InvalidAudienceError:
                return refuse("invalid_grant", "audience is invalid")
            except jwt.PyJWTError:
                return refuse("invalid_grant", "invalid assertion")
            if claims["iss"] != self.client_id:
                return refuse("invalid_client_id", "client identifier invalid")
            if self.jwt_username is not None and claims["sub"] != self.jwt_username:
                return refuse("invalid_grant", "user hasn't approved this consumer")
            user_id = API_USER_ID
        else:
            return refuse("unsupported_grant_type", "grant type not supported")

        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        issued_at = str(int(time.time() * 1000))
        identity = f"{self.url}/id/{ORG_ID}/{user_id}"
        signature = base64.b64encode(
            hmac.new(
                self.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
            ).digest()
        ).decode()
        with self._lock:
            self._tokens[token] = time.time()
        return _Reply(
            200,
            {
                "access_token": token,
                "instance_url": self.url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
                "signature": signature,
                "scope": "api",
            },
        )

    def _route(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        payload: Any,
        *,
        nested: bool = False,
    ) -> _Reply:
        match = _DATA_PATH.match(path)
        if match is None:
            raise _Refusal(404, "NOT_FOUND", "The requested resource does not exist")
        version, rest = match.groups()
        parts = [unquote(part) for part in rest.split("/")] if rest else []
        match parts:
            case ["sobjects", "Contact", "updated"]:
                _allow(method, "GET")
                return self._updated(params)
            case ["sobjects", "Contact", contact_id]:
                _allow(method, "GET", "PATCH")
                if method == "GET":
                    return self._get_contact(contact_id, params, version)
                return self._patch_contact(contact_id, payload)
            case ["sobjects", "Task", external_field, value]:
                _allow(method, "PATCH")
                return self._upsert_task(external_field, value, payload)
            case ["composite", "sobjects"]:
                _allow(method, "PATCH")
                return _Reply(200, self._update_collection(payload))
            case ["composite", "sobjects", "Task", external_field]:
                _allow(method, "PATCH")
                return _Reply(200, self._upsert_task_collection(external_field, payload))
            case ["composite"] if not nested:
                _allow(method, "POST")
                return self._composite(payload)
            case ["query" | "queryAll" as endpoint]:
                _allow(method, "GET")
                return self._query(params.get("q", ""), endpoint, version)
            case ["query" | "queryAll" as endpoint, locator]:
                _allow(method, "GET")
                return self._query_more(locator, endpoint, version)
        raise _Refusal(404, "NOT_FOUND", "The requested resource does not exist")

    # -- contacts ----------------------------------------------------------------------------

    def _get_contact(self, contact_id: str, params: Mapping[str, str], version: str) -> _Reply:
        key = self._normalize_id(contact_id)
        record = self._contacts.get(key) if key else None
        if record is None:
            raise _Refusal(404, "NOT_FOUND", "The requested resource does not exist")
        if record["IsDeleted"]:
            raise _Refusal(404, "ENTITY_IS_DELETED", "entity is deleted")
        names = [n.strip() for n in params["fields"].split(",")] if params.get("fields") else None
        return _Reply(200, self._row(record, names, version))

    def _patch_contact(self, contact_id: str, payload: Any) -> _Reply:
        if not isinstance(payload, dict):
            raise _Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object of fields")
        key = self._normalize_id(contact_id)
        error = self._contact_error(key or contact_id, payload)
        if error is not None:
            code, message, _fields = error
            status = 404 if code in ("NOT_FOUND", "ENTITY_IS_DELETED") else 400
            raise _Refusal(status, code, message)
        assert key is not None
        self._write_contact(key, self._canonical(payload), self._next_stamp(), API_USER_ID)
        return _Reply(204)

    def _update_collection(self, payload: Any) -> list[dict[str, Any]]:
        records, all_or_none = _collection(payload)
        keys: list[str | None] = []
        errors: list[tuple[str, str, list[str]] | None] = []
        for record in records:
            raw_id = record.get("id", record.get("Id"))
            key = normalize_id(raw_id)
            if raw_id is None:
                error: tuple[str, str, list[str]] | None = (
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    [],
                )
            elif _record_type(record) not in (None, "Contact"):
                error = ("INVALID_TYPE", "the stand-in updates Contact records only", [])
            elif key is not None and key in keys:
                error = ("DUPLICATE_VALUE", f"Duplicate ID in list: {raw_id}", [])
            else:
                error = self._contact_error(str(raw_id), _fields_of(record))
            keys.append(key)
            errors.append(error)
        if all_or_none and any(errors):
            return [
                _record_result(key, error or _ROLLED_BACK)
                for key, error in zip(keys, errors, strict=True)
            ]
        stamp = self._next_stamp()
        for record, key, error in zip(records, keys, errors, strict=True):
            if error is None and key is not None:
                self._write_contact(key, self._canonical(_fields_of(record)), stamp, API_USER_ID)
        return [_record_result(key, error) for key, error in zip(keys, errors, strict=True)]

    def _contact_error(
        self, contact_id: str, fields: Mapping[str, Any]
    ) -> tuple[str, str, list[str]] | None:
        key = self._normalize_id(contact_id)
        if key is None or not key.startswith("003"):
            return ("MALFORMED_ID", f"Contact ID: id value of incorrect type: {contact_id}", [])
        rejection = self._take_rejection(key)
        if rejection is not None:
            return (rejection.code, rejection.message, rejection.fields)
        record = self._contacts.get(key)
        if record is None and not self.auto_create:
            return ("NOT_FOUND", "The requested resource does not exist", [])
        if record is not None and record["IsDeleted"]:
            return ("ENTITY_IS_DELETED", "entity is deleted", [])
        return self._field_error(fields)

    def _field_error(self, fields: Mapping[str, Any]) -> tuple[str, str, list[str]] | None:
        read_only = [name for name in fields if name.lower() in _READ_ONLY]
        if read_only:
            return (
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(read_only)}.",
                read_only,
            )
        if self._schema is not None:
            unknown = [name for name in fields if name.lower() not in self._schema]
            if unknown:
                return (
                    "INVALID_FIELD",
                    f"No such column '{unknown[0]}' on sobject of type Contact",
                    unknown,
                )
        return None

    # -- tasks -------------------------------------------------------------------------------

    def _check_external_field(self, name: str) -> None:
        if name.lower() != self.task_external_id.lower():
            raise _Refusal(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {name}",
            )

    def _upsert_task(self, external_field: str, value: str, payload: Any) -> _Reply:
        self._check_external_field(external_field)
        if not isinstance(payload, dict):
            raise _Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object of fields")
        record = {k: v for k, v in payload.items() if k != "attributes"}
        record[self.task_external_id] = value
        error = self._task_error(record, set())
        if error is not None:
            raise _Refusal(400, error[0], error[1])
        task_id, created = self._write_task(value, record, self._next_stamp())
        return _Reply(201 if created else 200, _record_result(task_id, None, created))

    def _upsert_task_collection(self, external_field: str, payload: Any) -> list[dict[str, Any]]:
        self._check_external_field(external_field)
        records, all_or_none = _collection(payload)
        values = [record.get(self.task_external_id) for record in records]
        duplicates = {v for v in values if isinstance(v, str) and values.count(v) > 1}
        errors = [self._task_error(record, duplicates) for record in records]
        if all_or_none and any(errors):
            return [_record_result(None, error or _ROLLED_BACK, False) for error in errors]
        stamp = self._next_stamp()
        results = []
        for record, error in zip(records, errors, strict=True):
            if error is not None:
                results.append(_record_result(None, error, False))
                continue
            fields = {k: v for k, v in record.items() if k != "attributes"}
            task_id, created = self._write_task(record[self.task_external_id], fields, stamp)
            results.append(_record_result(task_id, None, created))
        return results

    def _task_error(
        self, record: Mapping[str, Any], duplicates: set[str]
    ) -> tuple[str, str, list[str]] | None:
        name = self.task_external_id
        value = record.get(name)
        if not isinstance(value, str) or not value:
            return ("MISSING_ARGUMENT", f"{name} not specified", [name])
        if value in duplicates:
            return ("DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", [name])
        who = record.get("WhoId")
        if who is not None:
            key = self._normalize_id(who) if isinstance(who, str) else None
            contact = self._contacts.get(key) if key else None
            if contact is None:
                message = "Name ID: id value of incorrect type"
                return ("FIELD_INTEGRITY_EXCEPTION", message, ["WhoId"])
            if contact["IsDeleted"]:
                return ("ENTITY_IS_DELETED", "entity is deleted", ["WhoId"])
        read_only = [n for n in record if n.lower() in _READ_ONLY]
        if read_only:
            return (
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(read_only)}.",
                read_only,
            )
        return None

    # -- composite ---------------------------------------------------------------------------

    def _composite(self, payload: Any) -> _Reply:
        if not isinstance(payload, dict) or not isinstance(payload.get("compositeRequest"), list):
            raise _Refusal(400, "JSON_PARSER_ERROR", "compositeRequest is required")
        subrequests = payload["compositeRequest"]
        all_or_none = payload.get("allOrNone") is True
        if len(subrequests) > MAX_SUBREQUESTS:
            raise _Refusal(
                400,
                "LIMIT_EXCEEDED",
                f"A composite request can't contain more than {MAX_SUBREQUESTS} subrequests",
            )
        parsed: list[tuple[str, str, str, dict[str, str], Any]] = []
        references: set[str] = set()
        heavy = 0
        for sub in subrequests:
            if not isinstance(sub, dict):
                raise _Refusal(400, "JSON_PARSER_ERROR", "each subrequest must be an object")
            method, url, reference = sub.get("method"), sub.get("url"), sub.get("referenceId")
            if not (isinstance(method, str) and isinstance(url, str)):
                raise _Refusal(400, "INVALID_INPUT", "each subrequest needs a method and a url")
            if not isinstance(reference, str) or not re.fullmatch(r"[A-Za-z0-9_]+", reference):
                raise _Refusal(400, "INVALID_INPUT", "each subrequest needs a referenceId")
            if reference in references:
                raise _Refusal(400, "INVALID_INPUT", f"Duplicate referenceId: {reference}")
            references.add(reference)
            split = urlsplit(url)
            if not _DATA_PATH.match(split.path):
                raise _Refusal(400, "INVALID_INPUT", f"Invalid subrequest url: {url}")
            if re.search(r"/(composite/sobjects|query|queryAll)(/|$)", split.path):
                heavy += 1
            params = {k: v[-1] for k, v in parse_qs(split.query).items()}
            parsed.append((reference, method.upper(), split.path, params, sub.get("body")))
        if heavy > MAX_COLLECTION_SUBREQUESTS:
            raise _Refusal(
                400,
                "LIMIT_EXCEEDED",
                f"A composite request can contain at most {MAX_COLLECTION_SUBREQUESTS} "
                "sObject Collections or query subrequests",
            )

        answers: list[tuple[str, _Reply]] = []
        failed = False
        self._journal = {} if all_or_none else None
        try:
            for reference, method, path, params, body in parsed:
                if failed:
                    answers.append((reference, _HALTED.reply()))
                    continue
                try:
                    reply = self._route(method, path, params, body, nested=True)
                except _Refusal as refusal:
                    reply = refusal.reply()
                failed = all_or_none and reply.status >= 400
                answers.append((reference, reply))
            if failed:
                self._rollback()
                answers = [(ref, r if r.status >= 400 else _HALTED.reply()) for ref, r in answers]
        finally:
            self._journal = None
        return _Reply(
            200,
            {
                "compositeResponse": [
                    {
                        "body": reply.body,
                        "httpHeaders": reply.headers,
                        "httpStatusCode": reply.status,
                        "referenceId": reference,
                    }
                    for reference, reply in answers
                ]
            },
        )

    def _rollback(self) -> None:
        assert self._journal is not None
        for (kind, key), previous in self._journal.items():
            store = self._contacts if kind == "contact" else self._tasks
            if previous is None:
                store.pop(key, None)
            else:
                store[key] = previous
        self._rebuild_index()

    # -- queries -----------------------------------------------------------------------------

    def _query(self, soql: str, endpoint: str, version: str) -> _Reply:
        text = " ".join(soql.split())
        select = _SELECT.match(text)
        if select is None:
            raise _malformed(soql)
        if select["object"].lower() != "contact":
            message = f"sObject type '{select['object']}' is not supported"
            raise _Refusal(400, "INVALID_TYPE", message)
        names = [name.strip() for name in select["fields"].split(",")]
        if not all(_FIELD_NAME.match(name) for name in names):
            raise _malformed(soql)
        lowered = [name.lower() for name in names]
        if len(set(lowered)) != len(lowered):
            raise _Refusal(400, "MALFORMED_QUERY", "duplicate field selected")
        if self._schema is not None:
            unknown = [name for name in names if name.lower() not in self._schema]
            if unknown:
                raise _Refusal(
                    400, "INVALID_FIELD", f"No such column '{unknown[0]}' on entity 'Contact'"
                )
        include_deleted = endpoint == "queryAll"
        where = select["where"]
        window = _WINDOW.match(where)
        id_list = _ID_LIST.match(where)
        if window is not None:
            since = parse_datetime(window["since"])
            until = parse_datetime(window["until"]) if window["until"] else None
            matches = self._in_window(since, until, inclusive_start=False)
            limit = window["limit"]
        elif id_list is not None:
            keys = [self._normalize_id(raw.strip().strip("'")) for raw in id_list["ids"].split(",")]
            matches = [self._contacts[k] for k in dict.fromkeys(keys) if k in self._contacts]
            limit = id_list["limit"]
        else:
            raise _malformed(soql)
        if not include_deleted:
            matches = [record for record in matches if not record["IsDeleted"]]
        if limit is not None:
            matches = matches[: int(limit)]
        rows = [self._row(record, names, version) for record in matches]
        return _Reply(200, self._page(rows, 0, endpoint, version, None))

    def _query_more(self, locator: str, endpoint: str, version: str) -> _Reply:
        cursor, _, position = locator.rpartition("-")
        rows = self._cursors.get(cursor)
        if rows is None or not position.isdigit():
            raise _Refusal(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return _Reply(200, self._page(rows, int(position), endpoint, version, cursor))

    def _page(
        self,
        rows: list[dict[str, Any]],
        start: int,
        endpoint: str,
        version: str,
        cursor: str | None,
    ) -> dict[str, Any]:
        end = start + max(1, self.page_size)
        done = end >= len(rows)
        page: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": rows[start:end]}
        if not done:
            if cursor is None:
                cursor = "01g" + "".join(secrets.choice(_BASE62) for _ in range(15))
                self._cursors[cursor] = rows
                while len(self._cursors) > 50:  # like Salesforce, old cursors expire
                    self._cursors.popitem(last=False)
            page["nextRecordsUrl"] = f"/services/data/{version}/{endpoint}/{cursor}-{end}"
        return page

    def _updated(self, params: Mapping[str, str]) -> _Reply:
        try:
            start = parse_datetime(params["start"])
            end = parse_datetime(params["end"])
        except (KeyError, ValueError):
            raise _Refusal(
                400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 date-times"
            ) from None
        if end <= start:
            raise _Refusal(400, "INVALID_REPLICATION_DATE", "end date must be after start date")
        matches = self._in_window(start, end, inclusive_start=True)
        ids = [record["Id"] for record in matches if not record["IsDeleted"]]
        return _Reply(200, {"ids": ids, "latestDateCovered": format_datetime(end)})

    def _in_window(
        self, since: datetime, until: datetime | None, *, inclusive_start: bool
    ) -> list[dict[str, Any]]:
        if inclusive_start:
            low = bisect_left(self._by_stamp, (since, ""))
        else:
            low = bisect_right(self._by_stamp, (since, "\uffff"))
        high = (
            len(self._by_stamp)
            if until is None
            else bisect_right(self._by_stamp, (until, "\uffff"))
        )
        found: dict[str, dict[str, Any]] = {}
        for stamp, key in self._by_stamp[low:high]:
            record = self._contacts.get(key)
            if record is not None and record["SystemModstamp"] == stamp:
                found[key] = record
        return sorted(found.values(), key=lambda r: (r["SystemModstamp"], r["Id"]))

    def _row(
        self, record: Mapping[str, Any], names: list[str] | None, version: str
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "attributes": {
                "type": "Contact",
                "url": f"/services/data/{version}/sobjects/Contact/{record['Id']}",
            }
        }
        if names is None:
            row.update(record)
            return row
        for name in names:
            canonical = self._field_names.get(name.lower(), name)
            row[canonical] = record.get(canonical)
        return row

    # -- state -------------------------------------------------------------------------------

    def _next_stamp(self) -> datetime:
        now = datetime.now(UTC)
        if self.whole_second_modstamps:
            stamp = max(now.replace(microsecond=0), self._last_stamp)
        else:
            stamp = now.replace(microsecond=now.microsecond // 1000 * 1000)
            if stamp <= self._last_stamp:
                stamp = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = stamp
        return stamp

    def _next_id(self, prefix: str) -> str:
        self._serials[prefix] = self._serials.get(prefix, 0) + 1
        return _make_id(prefix, self._serials[prefix])

    def _normalize_id(self, value: object) -> str | None:
        return normalize_id(value)

    def _canonical(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        # Field names are case-insensitive in Salesforce; keep the first spelling seen.
        result = {}
        for name, value in fields.items():
            canonical = self._field_names.setdefault(name.lower(), name)
            result[canonical] = value
        return result

    def _new_contact(self, contact_id: str, stamp: datetime, user_id: str) -> dict[str, Any]:
        return {
            "Id": contact_id,
            "IsDeleted": False,
            "HasOptedOutOfEmail": False,
            "DoNotCall": False,
            "CreatedDate": stamp,
            "CreatedById": user_id,
            "LastModifiedDate": stamp,
            "LastModifiedById": user_id,
            "SystemModstamp": stamp,
        }

    def _write_contact(
        self, contact_id: str, fields: Mapping[str, Any], stamp: datetime, user_id: str
    ) -> None:
        old = self._contacts.get(contact_id) or self._new_contact(contact_id, stamp, user_id)
        # A new dict, never a mutation: the composite journal keeps the old one to roll back.
        record = {**old, **fields}
        record.update(SystemModstamp=stamp, LastModifiedDate=stamp, LastModifiedById=user_id)
        self._put_contact(record)

    def _put_contact(self, record: dict[str, Any]) -> None:
        key = record["Id"]
        if self._journal is not None:
            self._journal.setdefault(("contact", key), self._contacts.get(key))
        self._contacts[key] = record
        self._by_stamp.append((record["SystemModstamp"], key))
        if len(self._by_stamp) > 2 * len(self._contacts) + 1000:
            self._rebuild_index()

    def _rebuild_index(self) -> None:
        self._by_stamp = sorted((r["SystemModstamp"], k) for k, r in self._contacts.items())

    def _write_task(
        self, external_id: str, fields: Mapping[str, Any], stamp: datetime
    ) -> tuple[str, bool]:
        old = self._tasks.get(external_id)
        if self._journal is not None:
            self._journal.setdefault(("task", external_id), old)
        if old is None:
            record: dict[str, Any] = {
                "Id": self._next_id("00T"),
                "Status": "Not Started",
                "CreatedDate": stamp,
                "CreatedById": API_USER_ID,
            }
        else:
            record = dict(old)
        record.update(fields)
        record[self.task_external_id] = external_id
        record.update(SystemModstamp=stamp, LastModifiedDate=stamp, LastModifiedById=API_USER_ID)
        self._tasks[external_id] = record
        return record["Id"], old is None

    def _take_fault(self, path: str, kinds: frozenset[str]) -> _Fault | None:
        self._faults = [fault for fault in self._faults if fault.active()]
        for fault in self._faults:
            if fault.kind in kinds and fault.matches(path):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def _take_rejection(self, contact_id: str) -> _Rejection | None:
        rules = self._rejections.get(contact_id)
        if not rules:
            return None
        rule = rules[0]
        if rule.times is not None:
            rule.times -= 1
            if rule.times <= 0:
                rules.pop(0)
        return rule

    # -- persistence (standalone demo) --------------------------------------------------------

    def _save(self, path: Path) -> None:
        with self._lock:
            self._dirty.clear()
            data = json.dumps(
                {
                    "format": 1,
                    "contacts": list(self._contacts.values()),
                    "tasks": list(self._tasks.values()),
                    "serials": self._serials,
                    "last_stamp": self._last_stamp,
                    "api_used": self._api_used,
                    "api_allowance": self._api_allowance,
                },
                default=_json_default,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(data)
        os.replace(temporary, path)  # a crash mid-write leaves the previous state

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        with self._lock:
            self._contacts = {r["Id"]: _revive(r) for r in data.get("contacts", [])}
            ext = self.task_external_id
            self._tasks = {t[ext]: _revive(t) for t in data.get("tasks", []) if ext in t}
            self._serials = {k: int(v) for k, v in data.get("serials", {}).items()}
            if data.get("last_stamp"):
                self._last_stamp = parse_datetime(data["last_stamp"])
            self._api_used = int(data.get("api_used", 0))
            self._api_allowance = int(data.get("api_allowance", self._default_allowance))
            for record in self._contacts.values():
                self._canonical(record)
            self._rebuild_index()

    # -- control endpoints ---------------------------------------------------------------------

    def _control(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Reply:
        secret = headers.get(SECRET_HEADER.lower(), "")
        if not hmac.compare_digest(secret.encode(), self.client_secret.encode()):
            return _Reply(403, {"error": f"{SECRET_HEADER} must carry the client secret"})
        parts = [unquote(p) for p in path[len(CONTROL_PREFIX) :].strip("/").split("/")]
        try:
            data = json.loads(body) if body else {}
            match [method, *parts]:
                case ["GET", "state"]:
                    return _Reply(200, self.state(records=params.get("records", "1") != "0"))
                case ["POST", "reset"]:
                    self.reset()
                    return _Reply(204)
                case ["POST", "faults"]:
                    fault_id = self.fail(
                        data["kind"],
                        times=data.get("times"),
                        for_seconds=data.get("for_seconds"),
                        seconds=data.get("seconds"),
                        path_contains=data.get("path_contains"),
                    )
                    return _Reply(201, {"id": fault_id})
                case ["DELETE", "faults"]:
                    self.clear_faults()
                    return _Reply(204)
                case ["POST", "rejections"]:
                    self.reject_record(
                        data["contact_id"],
                        data["code"],
                        data.get("message"),
                        fields=data.get("fields", ()),
                        times=data.get("times"),
                    )
                    return _Reply(204)
                case ["POST", "contacts"]:
                    return _Reply(201, {"ids": self.add_contacts(data["contacts"])})
                case ["GET", "contacts", contact_id]:
                    record = self.contact(contact_id)
                    return _Reply(200, record) if record else _Reply(404, {"error": "not found"})
                case ["POST", "contacts", contact_id, "external-update"]:
                    stamp = self.external_update(contact_id, **data)
                    return _Reply(200, {"SystemModstamp": stamp})
                case ["POST", "contacts", contact_id, "delete"]:
                    self.delete_contact(contact_id)
                    return _Reply(204)
                case ["GET", "calls"]:
                    return _Reply(200, [list(entry) for entry in self.call_log])
                case ["GET", "tasks"]:
                    return _Reply(200, self.tasks())
                case ["POST", "expire-sessions"]:
                    self.expire_sessions()
                    return _Reply(204)
                case ["POST", "config"]:
                    with self._lock:
                        if "page_size" in data:
                            self.page_size = int(data["page_size"])
                        if "auto_create" in data:
                            self.auto_create = bool(data["auto_create"])
                    self.set_api_usage(data.get("api_used"), data.get("api_allowance"))
                    return _Reply(204)
        except KeyError as exc:
            return _Reply(400 if method == "POST" else 404, {"error": f"missing or unknown: {exc}"})
        except (TypeError, ValueError) as exc:
            return _Reply(400, {"error": str(exc)})
        return _Reply(404, {"error": f"no control endpoint {method} {path}"})


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _Refusal(
            405,
            "METHOD_NOT_ALLOWED",
            f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}",
        )


def _collection(payload: Any) -> tuple[list[dict[str, Any]], bool]:
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise _Refusal(400, "JSON_PARSER_ERROR", 'expected {"allOrNone": ..., "records": [...]}')
    records = payload["records"]
    if len(records) > MAX_RECORDS:
        raise _Refusal(
            400,
            "EXCEEDED_ID_LIMIT",
            f"record limit reached. cannot submit more than {MAX_RECORDS} records into this call",
        )
    if not all(isinstance(record, dict) for record in records):
        raise _Refusal(400, "JSON_PARSER_ERROR", "each record must be a JSON object")
    return records, payload.get("allOrNone") is True


def _fields_of(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}


def _record_type(record: Mapping[str, Any]) -> str | None:
    attributes = record.get("attributes")
    return attributes.get("type") if isinstance(attributes, dict) else None


def _malformed(soql: str) -> _Refusal:
    return _Refusal(
        400,
        "MALFORMED_QUERY",
        "The stand-in answers only 'SELECT f FROM Contact WHERE SystemModstamp > t "
        "[AND SystemModstamp <= t] ORDER BY SystemModstamp[, Id] [LIMIT n]' and "
        f"'SELECT f FROM Contact WHERE Id IN (...)'; got: {soql[:200]}",
    )


# --- running it -----------------------------------------------------------------------------


@contextmanager
def running_standin(**options: Any) -> Iterator[SalesforceStandIn]:
    """A started stand-in for the duration of a ``with`` block (wrap in a pytest fixture)."""
    standin = SalesforceStandIn(**options)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


class SalesforceStandInClient:
    """Drives a stand-in in another process through its HTTPS control endpoints.

    The same helpers as SalesforceStandIn, except ``fail(until=...)`` (a callable cannot
    cross processes: use ``times`` or ``for_seconds``). Timestamps come back as datetimes.
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
        payload = {
            "kind": kind,
            "times": times,
            "for_seconds": for_seconds,
            "seconds": seconds,
            "path_contains": path_contains,
        }
        return int(self._request("POST", "faults", payload)["id"])

    def clear_faults(self) -> None:
        self._request("DELETE", "faults")

    def reject_record(
        self,
        contact_id: str,
        code: str,
        message: str | None = None,
        *,
        fields: Iterable[str] = (),
        times: int | None = None,
    ) -> None:
        payload = {
            "contact_id": contact_id,
            "code": code,
            "message": message,
            "fields": list(fields),
            "times": times,
        }
        self._request("POST", "rejections", payload)

    def add_contact(self, **fields: Any) -> str:
        return self.add_contacts([fields])[0]

    def add_contacts(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        payload = {"contacts": [dict(r) for r in records]}
        return list(self._request("POST", "contacts", payload)["ids"])

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        try:
            return _revive(self._request("GET", f"contacts/{contact_id}"))
        except RuntimeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def contacts(self) -> dict[str, dict[str, Any]]:
        return {k: _revive(v) for k, v in self.state()["contacts"].items()}

    def tasks(self) -> list[dict[str, Any]]:
        return [_revive(task) for task in self._request("GET", "tasks")]

    def external_update(self, contact_id: str, **fields: Any) -> datetime:
        answer = self._request("POST", f"contacts/{contact_id}/external-update", fields)
        return parse_datetime(answer["SystemModstamp"])

    def delete_contact(self, contact_id: str) -> None:
        self._request("POST", f"contacts/{contact_id}/delete")

    def expire_sessions(self) -> None:
        self._request("POST", "expire-sessions")

    def set_api_usage(self, used: int | None = None, allowance: int | None = None) -> None:
        payload = {
            key: value
            for key, value in (("api_used", used), ("api_allowance", allowance))
            if value is not None
        }
        self._request("POST", "config", payload)

    def configure(self, *, page_size: int | None = None, auto_create: bool | None = None) -> None:
        payload = {
            key: value
            for key, value in (("page_size", page_size), ("auto_create", auto_create))
            if value is not None
        }
        self._request("POST", "config", payload)

    def reset(self) -> None:
        self._request("POST", "reset")

    def state(self, *, records: bool = True) -> dict[str, Any]:
        return dict(self._request("GET", "state", params={"records": "1" if records else "0"}))

    @property
    def api_calls(self) -> int:
        return int(self.state(records=False)["api_calls"])

    @property
    def call_log(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self._request("GET", "calls")]

    @property
    def api_usage(self) -> tuple[int, int]:
        used, allowance = self.state(records=False)["api_usage"]
        return int(used), int(allowance)


@contextmanager
def standin_process(
    *, port: int = 0, args: Iterable[str] = (), startup_timeout: float = 20.0
) -> Iterator[SalesforceStandInClient]:
    """Run ``python -m standins.salesforce`` in a subprocess and yield a client for it."""
    with run_standin_process(
        "standins.salesforce",
        label="Salesforce",
        env_name="SALESFORCE_CLIENT_SECRET",
        clear_env=["SALESFORCE_CLIENT_ID"],
        port=port,
        args=args,
        startup_timeout=startup_timeout,
    ) as (info, secret):
        client = SalesforceStandInClient(info["url"], info["ca_path"], secret, info["client_id"])
        try:
            yield client
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.salesforce",
        description="Run the Salesforce stand-in (HTTPS on loopback) until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--state-file", help="keep contacts and tasks here across restarts")
    parser.add_argument(
        "--cert-dir", help="where the CA and server certificate live (default: beside the state)"
    )
    parser.add_argument(
        "--client-id", default=os.environ.get("SALESFORCE_CLIENT_ID") or DEFAULT_CLIENT_ID
    )
    parser.add_argument(
        "--jwt-public-key", help="PEM file of the public key that signs JWT bearer assertions"
    )
    parser.add_argument("--jwt-username", help="the only username JWT assertions may name")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--api-allowance", type=int, default=DEFAULT_API_ALLOWANCE)
    parser.add_argument("--task-external-id", default=DEFAULT_TASK_EXTERNAL_ID)
    parser.add_argument(
        "--auto-create", action="store_true", help="create unknown contacts on first update"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    # The secret comes from the environment only (a command line is visible to every user);
    # SALESFORCE_CLIENT_SECRET is the name the app reads too, so one export serves both.
    secret = os.environ.get("SALESFORCE_CLIENT_SECRET", "")
    generated = not secret
    state_file = Path(args.state_file) if args.state_file else None
    cert_dir = args.cert_dir or (state_file.parent / "salesforce-standin" if state_file else None)
    standin = SalesforceStandIn(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=secret or None,
        jwt_public_key=Path(args.jwt_public_key).read_bytes() if args.jwt_public_key else None,
        jwt_username=args.jwt_username,
        task_external_id=args.task_external_id,
        page_size=args.page_size,
        api_allowance=args.api_allowance,
        auto_create=args.auto_create,
        state_file=state_file,
        cert_dir=cert_dir,
    )
    standin.start()
    info = {"url": standin.url, "ca_path": standin.ca_path, "client_id": standin.client_id}
    if generated:
        info["client_secret"] = standin.client_secret
    print(json.dumps(info), flush=True)
    print(
        f"Salesforce stand-in on {standin.url} (API {API_VERSION})\n"
        f"  CA certificate: {standin.ca_path}\n"
        f"  client id:      {standin.client_id}\n"
        f"  state file:     {state_file or '(memory only)'}",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
