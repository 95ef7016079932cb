"""A stand-in for the part of Marketing Cloud that Preference Desk uses.

A real HTTPS server on loopback, with a certificate generated at start (clients verify it
against ``ca_path``), speaking:

- the OAuth 2.0 client-credentials token endpoint, ``POST /v2/token`` (JSON), which names the
  SOAP and REST instance URLs (both this server);
- the SOAP API at ``POST /Service.asmx`` (SOAP 1.1, ``<fueloauth>`` header): ``Retrieve`` of
  ``Subscriber`` (filtered on ``SubscriberKey``, in the business units named by ``ClientIDs``,
  or all of them with ``QueryAllAccounts``) and ``Update`` of ``Subscriber`` (the status).

It keeps one status per business unit and subscriber key (``{(mid, key): status}``), counts
calls, and can be told to fail: latency, timeouts, HTTP 500/503, expired tokens, SOAP Server
(transient) and Client (permanent) faults. Three ways to run it:

- in-process: ``with running_standin() as server: ...`` (wrap that in a pytest fixture);
- in another process, driven over HTTPS: ``with standin_process() as server: ...`` yields a
  ``MarketingCloudStandInClient`` with the same helper methods, talking to the control
  endpoints under ``/__standin__/`` (authenticated by the client secret);
- standalone for the demo: ``python -m standins.marketing_cloud --port 8444
  --state-file .data/marketing-cloud.json [--seed subscribers.json]``.

Deliberate simplifications, each one safe for what the app does: one enterprise account (a
parent business unit and its children), one installed package; only the Subscriber object;
filters on SubscriberKey only; requests are applied one at a time (a global lock). Error
messages for refusals the documentation does not spell out are the stand-in's own.
"""

from __future__ import annotations

import argparse
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
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from lxml import etree

from standins.tls import StandIn, TLSRequestHandler, TLSServer, run_standin_process

logger = logging.getLogger(__name__)

TOKEN_PATH = "/v2/token"  # noqa: S105 (a path, not a password)
SOAP_PATH = "/Service.asmx"
CONTROL_PREFIX = "/__standin__/"
SECRET_HEADER = "X-Standin-Secret"  # noqa: S105 (a header name)
DEFAULT_CLIENT_ID = "preference-desk"
# The demo's business units (seed_demo creates BusinessUnit rows with these MIDs).
PARENT_MID = "510000001"
CHILD_MIDS = ("510000002", "510000003")
TOKEN_LIFETIME = 1079  # seconds, what Marketing Cloud's v2 tokens say in expires_in

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_API = "http://exacttarget.com/wsdl/partnerAPI"
FUEL_OAUTH = "http://exacttarget.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
API_FAULT = "urn:fault.partner.exacttarget.com"

STATUSES = ("Active", "Bounced", "Held", "Unsubscribed", "Deleted")
# The API may set these; Bounced and Held are Marketing Cloud's own verdicts.
SETTABLE_STATUSES = ("Active", "Unsubscribed")
SUBSCRIBER_PROPERTIES = (
    "Client.ID",
    "CreatedDate",
    "ID",
    "EmailAddress",
    "SubscriberKey",
    "UnsubscribedDate",
    "Status",
    "EmailTypePreference",
)

FAULT_KINDS = frozenset(
    {
        "latency",
        "timeout",
        "http_500",
        "http_503",
        "expire_tokens",
        "server_fault",
        "client_fault",
    }
)
_DELAY_KINDS = frozenset({"latency", "timeout"})
_HTTP_KINDS = frozenset({"http_500", "http_503"})
_SOAP_KINDS = frozenset({"server_fault", "client_fault"})
_DEFAULT_DELAY = {"latency": 1.0, "timeout": 60.0}
_MID = re.compile(r"\d{1,20}")


def _status(value: str) -> str:
    """Marketing Cloud's spelling of a status given in any case."""
    for status in STATUSES:
        if value.lower() == status.lower():
            return status
    raise ValueError(f"unknown subscriber status {value!r}; one of {', '.join(STATUSES)}")


def _timestamp(value: datetime | None = None) -> str:
    # Marketing Cloud writes dates without a zone (they are in its server time, CST).
    value = value or datetime.now(UTC) - timedelta(hours=6)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def _parser() -> etree.XMLParser:
    # One per call (lxml parsers are not meant to be shared between threads); no DTDs, no
    # entity expansion, no network: the body comes from whoever connects.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, remove_blank_text=True
    )


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _partner(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    return _sub(parent, _q(PARTNER_API, name), text)


def _text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _xsi_type(element: etree._Element) -> str:
    value = element.get(_q(XSI, "type")) or ""
    return value.rpartition(":")[2]


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/xml; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, payload: Any) -> _Reply:
    body = b"" if payload is None else json.dumps(payload).encode()
    return _Reply(status, body, "application/json; charset=utf-8")


def _html_reply(status: int, title: str) -> _Reply:
    # What a load balancer in front of the API answers: not SOAP at all.
    page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return _Reply(status, page.encode(), "text/html; charset=utf-8")


class _SoapFault(Exception):
    """A SOAP 1.1 fault, as Marketing Cloud sends them (always with HTTP 500)."""

    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # Server, Client or Security
        self.message = message
        self.code = code

    def reply(self, url: str) -> _Reply:
        envelope = etree.Element(_q(SOAP_ENV, "Envelope"), nsmap={"soap": SOAP_ENV})
        body = _sub(envelope, _q(SOAP_ENV, "Body"))
        fault = _sub(body, _q(SOAP_ENV, "Fault"))
        if self.kind == "Security":
            faultcode = etree.SubElement(fault, "faultcode", nsmap={"q0": WSSE})
            faultcode.text = "q0:Security"
        else:
            _sub(fault, "faultcode", f"soap:{self.kind}")
        _sub(fault, "faultstring", self.message)
        _sub(fault, "faultactor", url + SOAP_PATH)
        if self.kind == "Server":
            # Only Server faults carry an API fault structure.
            detail = _sub(fault, "detail")
            apifault = etree.SubElement(detail, _q(API_FAULT, "apifault"), nsmap={None: API_FAULT})
            _sub(apifault, _q(API_FAULT, "Code"), str(self.code or 2))
            _sub(apifault, _q(API_FAULT, "Message"), self.message)
        return _Reply(500, etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


_FAULTS = {
    "server_fault": ("Server", "Unplanned Outage", 2),
    "client_fault": ("Client", "User Not Authorized: web service access has not been set", 11),
}


@dataclass
class _Fault:
    id: int
    kind: str
    seconds: float
    times: int | None
    deadline: float | None
    until: Callable[[], bool] | None
    path_contains: str | None
    action: str | None
    mid: str | None

    def active(self) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return not (self.until is not None and self.until())

    def matches(self, path: str, action: str, mids: Sequence[str]) -> bool:
        # Without a path filter a fault hits the SOAP API only, not the token endpoint: a
        # test that says "the next call fails" means the next API call.
        if self.path_contains is None:
            if path != SOAP_PATH:
                return False
        elif self.path_contains not in path:
            return False
        if self.action is not None and self.action != action:
            return False
        return self.mid is None or self.mid in mids

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "seconds": self.seconds,
            "times": self.times,
            "path_contains": self.path_contains,
            "action": self.action,
            "mid": self.mid,
        }


@dataclass
class _SoapRequest:
    action: str
    token: str
    operation: etree._Element
    message_id: str
    mids: tuple[str, ...]  # business units named in the request (empty: the token's own)


# --- the HTTPS server -----------------------------------------------------------------------


class _Server(TLSServer):
    def __init__(
        self, address: tuple[str, int], standin: MarketingCloudStandIn, context: ssl.SSLContext
    ) -> None:
        self.standin = standin
        super().__init__(address, _Handler, context)


class _Handler(TLSRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
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
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.body:
                self.send_header("Content-Type", reply.content_type)
            if reply.status != 204:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client gave up (a timeout fault, or a test that moved on)
            self.close_connection = True


# --- the stand-in ---------------------------------------------------------------------------


class MarketingCloudStandIn(StandIn):
    """One Marketing Cloud enterprise account (a parent business unit and its children) with
    one installed package, speaking HTTPS on loopback.

    Helpers for tests and the demo: ``set_subscriber``, ``subscriber``, ``status``,
    ``subscribers``, ``fail``, ``clear_faults``, ``expire_tokens``, ``token_calls``,
    ``api_calls``, ``call_log``, ``reset``. All are thread-safe.
    """

    name = "marketing-cloud"
    ca_name = "Preference Desk Marketing Cloud stand-in CA"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = None,
        parent_mid: str = PARENT_MID,
        child_mids: Iterable[str] = CHILD_MIDS,
        token_lifetime: float = TOKEN_LIFETIME,
        state_file: str | Path | None = None,
        cert_dir: str | Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.parent_mid = parent_mid
        self.child_mids = tuple(child_mids)
        for mid in (parent_mid, *self.child_mids):
            if not _MID.fullmatch(mid):
                raise ValueError(f"a MID is a number, got {mid!r}")
        self.token_lifetime = token_lifetime
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
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (MID, monotonic expiry)
        self._fault_ids = 0
        self._clear()
        if self._state_file is not None and self._state_file.exists():
            self._load(self._state_file)

    def _clear(self) -> None:
        self._subscribers: dict[tuple[str, str], dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self._serial = 0
        self._token_calls = 0
        self._api_calls = 0
        self._log: deque[tuple[str, str]] = deque(maxlen=100_000)  # a demo runs for days

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def mids(self) -> tuple[str, ...]:
        return (self.parent_mid, *self.child_mids)

    def _server(self, address: tuple[str, int], context: ssl.SSLContext) -> _Server:
        return _Server(address, self, context)

    # -- helpers for tests and the demo -------------------------------------------------------

    def set_subscriber(
        self, key: str, status: str, *, mid: str | None = None, email: str | None = None
    ) -> None:
        """Give ``key`` this status (Active, Bounced, Held, Unsubscribed, Deleted; any case)
        in one business unit (default: the parent), creating the subscriber if need be."""
        self.set_subscribers([{"key": key, "status": status, "mid": mid, "email": email}])

    def set_subscribers(
        self, records: Iterable[Mapping[str, Any]], *, only_new: bool = False
    ) -> int:
        """Several at once: ``{"key", "status", "mid"?, "email"?}`` each. With ``only_new``,
        subscribers that exist already keep their state (a demo seed over a state file).
        Returns how many were written."""
        checked = []
        for record in records:
            key = record.get("key")
            if not isinstance(key, str) or not key or len(key) > 254:
                raise ValueError(f"a subscriber key is a non-empty string, got {key!r}")
            mid = str(record.get("mid") or self.parent_mid)
            if mid not in self.mids:
                raise ValueError(f"MID {mid} is not one of this account's: {', '.join(self.mids)}")
            status = _status(str(record.get("status", "")))
            checked.append((mid, key, status, record.get("email")))
        written = 0
        with self._lock:
            for mid, key, status, email in checked:
                if only_new and (mid, key) in self._subscribers:
                    continue
                self._write(mid, key, status, str(email) if email else None)
                written += 1
            self._dirty.set()
        return written

    def subscriber(self, key: str, mid: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            record = self._subscribers.get((mid or self.parent_mid, key))
            return dict(record) if record is not None else None

    def status(self, key: str, mid: str | None = None) -> str | None:
        """The status in that business unit (default: the parent), or None if unknown."""
        record = self.subscriber(key, mid)
        return record["status"] if record is not None else None

    def subscribers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._subscribers.values()]

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        until: Callable[[], bool] | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
        action: str | None = None,
        mid: str | None = None,
    ) -> int:
        """Make matching requests fail (or stall) while the fault lasts.

        ``kind``: latency (answer after ``seconds``), timeout (hold the request ``seconds``,
        default 60, then answer anyway if still running: the client has given up by then),
        http_500 / http_503 (an HTML error page, as from a load balancer), expire_tokens
        (invalidates every token; the call gets a Security fault "Login Failed"),
        server_fault (soap:Server "Unplanned Outage": transient), client_fault (soap:Client
        "User Not Authorized": will not heal by itself).

        Lasts ``times`` requests, ``for_seconds``, ``until`` the callable returns true, or
        (none given) until ``clear_faults``/``reset``. Without ``path_contains`` it hits the
        SOAP API only, not the token endpoint (``path_contains="/v2/token"`` for that; only
        latency, timeout and the HTTP kinds apply there). ``action`` (Retrieve, Update) and
        ``mid`` narrow it to one operation or business unit. Returns the fault's id.
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
                    action=action,
                    mid=mid,
                )
            )
            return self._fault_ids

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far; a new token works again."""
        with self._lock:
            self._tokens.clear()

    @property
    def token_calls(self) -> int:
        """Token requests answered, refused ones included (injected faults are not)."""
        with self._lock:
            return self._token_calls

    @property
    def api_calls(self) -> int:
        """SOAP calls answered (Login Failed and injected faults are not counted)."""
        with self._lock:
            return self._api_calls

    @property
    def call_log(self) -> list[tuple[str, str]]:
        """(operation, MID) of every request: ("token", account_id), ("Retrieve", mid),
        ("Update", mid), in arrival order; failed ones included. A request naming several
        business units is one entry per MID."""
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        """Forget subscribers, faults, counters. Issued tokens stay valid, so a worker
        holding one carries on (use expire_tokens() to test that)."""
        with self._lock:
            self._clear()
            self._dirty.set()

    def state(self, *, records: bool = True) -> dict[str, Any]:
        with self._lock:
            state: dict[str, Any] = {
                "token_calls": self._token_calls,
                "api_calls": self._api_calls,
                "faults": [fault.describe() for fault in self._faults if fault.active()],
                "subscriber_count": len(self._subscribers),
                "mids": list(self.mids),
            }
            if records:
                state["call_log"] = [list(entry) for entry in self._log]
                state["subscribers"] = [dict(record) for record in self._subscribers.values()]
            return state

    # -- requests ----------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> _Reply | None:
        """Answer one HTTP request; None means drop the connection (stopping)."""
        path = urlsplit(raw_path).path
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, headers, body)
        if path == TOKEN_PATH:
            return self._token_endpoint(method, path, body)
        if path.rstrip("/").lower() == SOAP_PATH.lower():
            return self._soap_endpoint(method, SOAP_PATH, headers, body)
        return _html_reply(404, "404 - File or directory not found.")

    def _token_endpoint(self, method: str, path: str, body: bytes) -> _Reply | None:
        try:
            form = json.loads(body) if body else {}
        except ValueError:
            form = None
        account_id = str(form.get("account_id") or "") if isinstance(form, dict) else ""
        with self._lock:
            self._log.append(("token", account_id))
            delay = self._take_fault(path, "", (), _DELAY_KINDS)
        if delay is not None and self._stopping.wait(delay.seconds):
            return None
        with self._lock:
            fault = self._take_fault(path, "", (), _HTTP_KINDS)
            if fault is not None:
                return self._fault_reply(fault.kind)
            self._token_calls += 1

        def refuse(status: int, error: str, description: str) -> _Reply:
            payload = {
                "error": error,
                "error_description": description,
                "error_uri": "https://developer.salesforce.com/docs",
            }
            return _json_reply(status, payload)

        if method != "POST":
            return refuse(405, "invalid_request", "The token endpoint takes POST only.")
        if not isinstance(form, dict):
            return refuse(400, "invalid_request", "The request body is not a JSON object.")
        if form.get("grant_type") != "client_credentials":
            return refuse(400, "unsupported_grant_type", "Use grant_type client_credentials.")
        client_id, client_secret = (
            str(form.get("client_id", "")),
            str(form.get("client_secret", "")),
        )
        if not (
            hmac.compare_digest(client_id.encode(), self.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        ):
            return refuse(
                401,
                "invalid_client",
                "Client authentication failed. Make sure that the client ID and client "
                "secret are valid.",
            )
        mid = account_id or self.parent_mid
        if mid not in self.mids:
            return refuse(
                403, "unauthorized_client", f"The package is not installed in account {mid}."
            )
        token = secrets.token_urlsafe(48)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (mid, now + self.token_lifetime)
        return _json_reply(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(self.token_lifetime),
                "scope": "email_read list_and_subscribers_read list_and_subscribers_write",
                "soap_instance_url": self.url + "/",
                "rest_instance_url": self.url + "/",
            },
        )

    def _soap_endpoint(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> _Reply | None:
        if method != "POST":
            return _html_reply(405, "405 - HTTP verb used to access this page is not allowed.")
        try:
            request = _parse_soap(headers, body)
        except _SoapFault as unreadable:
            with self._lock:
                self._log.append(("?", ""))
            return unreadable.reply(self.url)
        with self._lock:
            token_mid = self._tokens.get(request.token, ("", 0.0))[0]
            mids = request.mids or ((token_mid,) if token_mid else ())
            self._log.extend((request.action, mid) for mid in mids or ("",))
            delay = self._take_fault(path, request.action, mids, _DELAY_KINDS)
        if delay is not None and self._stopping.wait(delay.seconds):
            return None
        with self._lock:
            if self._take_fault(path, request.action, mids, frozenset({"expire_tokens"})):
                self._tokens.clear()
            entry = self._tokens.get(request.token)
            if entry is None or entry[1] <= time.monotonic():
                return _SoapFault("Security", "Login Failed").reply(self.url)
            injected = self._take_fault(path, request.action, mids, _HTTP_KINDS | _SOAP_KINDS)
            if injected is not None:
                return self._fault_reply(injected.kind)
            self._api_calls += 1
            try:
                if request.action == "Retrieve":
                    answer = self._retrieve(request.operation, entry[0])
                else:
                    answer = self._update(request.operation, entry[0])
                    self._dirty.set()
            except _SoapFault as refusal:
                return refusal.reply(self.url)
        return _Reply(200, _envelope(answer, request, self.url))

    def _fault_reply(self, kind: str) -> _Reply:
        if kind == "http_500":
            return _html_reply(500, "500 - Internal server error.")
        if kind == "http_503":
            return _html_reply(503, "Service Unavailable")
        fault_kind, message, code = _FAULTS[kind]
        return _SoapFault(fault_kind, message, code).reply(self.url)

    def _accessible(self, token_mid: str) -> tuple[str, ...]:
        # A token for the parent reaches every business unit; one for a child, that child.
        return self.mids if token_mid == self.parent_mid else (token_mid,)

    def _retrieve(self, operation: etree._Element, token_mid: str) -> etree._Element:
        answer = etree.Element(_q(PARTNER_API, "RetrieveResponseMsg"), nsmap={None: PARTNER_API})

        def error(message: str) -> etree._Element:
            _partner(answer, "OverallStatus", f"Error: {message}")
            _partner(answer, "RequestID", str(uuid.uuid4()))
            return answer

        request = operation.find(_q(PARTNER_API, "RetrieveRequest"))
        if request is None:
            raise _SoapFault("Client", "RetrieveRequest is required")
        object_type = _text(request.find(_q(PARTNER_API, "ObjectType")))
        if object_type != "Subscriber":
            return error(f"The stand-in retrieves Subscriber only, not {object_type!r}")
        properties = [_text(p) for p in request.findall(_q(PARTNER_API, "Properties"))]
        unknown = [name for name in properties if name not in SUBSCRIBER_PROPERTIES]
        if not properties or unknown:
            return error(
                f"The Request Property(s) {', '.join(unknown) or '(none)'} do not match with "
                "the fields of Subscriber retrieve"
            )
        accessible = self._accessible(token_mid)
        client_ids = [
            _text(client.find(_q(PARTNER_API, "ClientID")))
            for client in request.findall(_q(PARTNER_API, "ClientIDs"))
        ]
        if client_ids:
            refused = [mid for mid in client_ids if mid not in accessible]
            if refused:
                return error(f"Invalid ClientID: {', '.join(refused)} is not accessible")
            mids = list(dict.fromkeys(client_ids))
        elif _text(request.find(_q(PARTNER_API, "QueryAllAccounts"))).lower() == "true":
            mids = list(accessible)
        else:
            mids = [token_mid]
        keys = _filter_keys(request.find(_q(PARTNER_API, "Filter")))
        if isinstance(keys, str):
            return error(keys)

        _partner(answer, "OverallStatus", "OK")
        _partner(answer, "RequestID", str(uuid.uuid4()))
        for mid in mids:
            if keys is None:
                found = sorted(key for (m, key) in self._subscribers if m == mid)
            else:
                found = [key for key in keys if (mid, key) in self._subscribers]
            for key in found:
                _subscriber_result(answer, self._subscribers[(mid, key)], properties)
        return answer

    def _update(self, operation: etree._Element, token_mid: str) -> etree._Element:
        if _local(operation.tag) != "UpdateRequest":
            raise _SoapFault("Client", "UpdateRequest is required")
        answer = etree.Element(_q(PARTNER_API, "UpdateResponse"), nsmap={None: PARTNER_API})
        accessible = self._accessible(token_mid)
        outcomes = []
        for ordinal, item in enumerate(operation.findall(_q(PARTNER_API, "Objects"))):
            result = _partner(answer, "Results")
            mid = _text(item.find(f"{_q(PARTNER_API, 'Client')}/{_q(PARTNER_API, 'ID')}"))
            mid = mid or token_mid
            key = _text(item.find(_q(PARTNER_API, "SubscriberKey")))
            wanted = _text(item.find(_q(PARTNER_API, "Status")))
            record = self._subscribers.get((mid, key))
            if _xsi_type(item) != "Subscriber":
                problem = "The stand-in updates Subscriber objects only"
            elif mid not in accessible:
                problem = f"Invalid ClientID: {mid} is not accessible"
            elif not key:
                problem = "SubscriberKey is required"
            elif wanted not in SETTABLE_STATUSES:
                problem = f"Status must be one of {', '.join(SETTABLE_STATUSES)}"
            elif record is None or record["status"] == "Deleted":
                problem = f"Subscriber {key} does not exist in business unit {mid}"
            else:
                problem = ""
                self._write(mid, key, wanted, None)
            outcomes.append(not problem)
            _partner(result, "StatusCode", "Error" if problem else "OK")
            _partner(result, "StatusMessage", problem or "Updated Subscriber.")
            _partner(result, "OrdinalID", str(ordinal))
            if problem:
                _partner(result, "ErrorCode", "12000")
            obj = _partner(result, "Object")
            obj.set(_q(XSI, "type"), "Subscriber")
            client = _partner(obj, "Client")
            _partner(client, "ID", mid)
            _partner(obj, "SubscriberKey", key)
            if not problem:
                _partner(obj, "Status", wanted)
        _partner(answer, "RequestID", str(uuid.uuid4()))
        if not outcomes:
            overall = "Error: no Objects to update"
        elif all(outcomes):
            overall = "OK"
        else:
            overall = "Has Errors" if any(outcomes) else "Error"
        _partner(answer, "OverallStatus", overall)
        return answer

    # -- state -------------------------------------------------------------------------------

    def _write(self, mid: str, key: str, status: str, email: str | None) -> None:
        old = self._subscribers.get((mid, key))
        now = _timestamp()
        if old is None:
            self._serial += 1
            record: dict[str, Any] = {
                "mid": mid,
                "key": key,
                "id": self._serial,
                "email": email or "",
                "created": now,
                "unsubscribed": None,
            }
        else:
            record = dict(old)
            if email:
                record["email"] = email
        if status == "Unsubscribed" and record.get("status") != "Unsubscribed":
            record["unsubscribed"] = now
        record["status"] = status
        record["modified"] = now
        self._subscribers[(mid, key)] = record

    def _take_fault(
        self, path: str, action: str, mids: Sequence[str], kinds: frozenset[str]
    ) -> _Fault | None:
        self._faults = [fault for fault in self._faults if fault.active()]
        for fault in self._faults:
            if fault.kind in kinds and fault.matches(path, action, mids):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    # -- persistence (standalone demo) --------------------------------------------------------

    def _save(self, path: Path) -> None:
        with self._lock:
            self._dirty.clear()
            data = json.dumps(
                {
                    "format": 1,
                    "serial": self._serial,
                    "subscribers": list(self._subscribers.values()),
                }
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(data)
        os.replace(temporary, path)  # a crash mid-write leaves the previous state

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        with self._lock:
            self._subscribers = {
                (record["mid"], record["key"]): record for record in data.get("subscribers", [])
            }
            self._serial = int(data.get("serial", len(self._subscribers)))

    # -- control endpoints ---------------------------------------------------------------------

    def _control(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        secret = headers.get(SECRET_HEADER.lower(), "")
        if not hmac.compare_digest(secret.encode(), self.client_secret.encode()):
            return _json_reply(403, {"error": f"{SECRET_HEADER} must carry the client secret"})
        parts = [unquote(p) for p in path[len(CONTROL_PREFIX) :].strip("/").split("/")]
        try:
            data = json.loads(body) if body else {}
            match [method, *parts]:
                case ["GET", "state"]:
                    return _json_reply(200, self.state())
                case ["POST", "reset"]:
                    self.reset()
                    return _json_reply(204, None)
                case ["POST", "faults"]:
                    fault_id = self.fail(
                        data["kind"],
                        times=data.get("times"),
                        for_seconds=data.get("for_seconds"),
                        seconds=data.get("seconds"),
                        path_contains=data.get("path_contains"),
                        action=data.get("action"),
                        mid=data.get("mid"),
                    )
                    return _json_reply(201, {"id": fault_id})
                case ["DELETE", "faults"]:
                    self.clear_faults()
                    return _json_reply(204, None)
                case ["POST", "subscribers"]:
                    records = data.get("subscribers", [data])
                    written = self.set_subscribers(records, only_new=bool(data.get("only_new")))
                    return _json_reply(201, {"written": written})
                case ["GET", "subscribers", mid, key]:
                    record = self.subscriber(key, mid)
                    if record is None:
                        return _json_reply(404, {"error": "not found"})
                    return _json_reply(200, record)
                case ["GET", "calls"]:
                    return _json_reply(200, [list(entry) for entry in self.call_log])
                case ["POST", "expire-tokens"]:
                    self.expire_tokens()
                    return _json_reply(204, None)
        except KeyError as exc:
            return _json_reply(400, {"error": f"missing: {exc}"})
        except (TypeError, ValueError, AttributeError) as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(404, {"error": f"no control endpoint {method} {path}"})


# --- SOAP -------------------------------------------------------------------------------------


def _parse_soap(headers: Mapping[str, str], body: bytes) -> _SoapRequest:
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError:
        raise _SoapFault("Client", "Server was unable to read request.") from None
    if root.tag != _q(SOAP_ENV, "Envelope"):
        raise _SoapFault("Client", "The request is not a SOAP 1.1 envelope.")
    header = root.find(_q(SOAP_ENV, "Header"))
    soap_body = root.find(_q(SOAP_ENV, "Body"))
    operation = soap_body[0] if soap_body is not None and len(soap_body) else None
    if operation is None:
        raise _SoapFault("Client", "The SOAP Body is empty.")
    action = headers.get("soapaction", "").strip().strip('"')
    if not action and header is not None:
        action = _text(header.find(_q(WSA, "Action")))
    if not action:
        raise _SoapFault("Client", "SOAP Action could not be determined from HTTP or SOAP header.")
    expected = {"Retrieve": "RetrieveRequestMsg", "Update": "UpdateRequest"}.get(action)
    if expected is None or operation.tag != _q(PARTNER_API, expected):
        raise _SoapFault(
            "Client", f"Server did not recognize the value of HTTP Header SOAPAction: {action}."
        )
    token = _text(header.find(_q(FUEL_OAUTH, "fueloauth"))) if header is not None else ""
    message_id = _text(header.find(_q(WSA, "MessageID"))) if header is not None else ""
    if action == "Retrieve":
        named = operation.iterfind(
            f"{_q(PARTNER_API, 'RetrieveRequest')}/{_q(PARTNER_API, 'ClientIDs')}"
            f"/{_q(PARTNER_API, 'ClientID')}"
        )
    else:
        named = operation.iterfind(
            f"{_q(PARTNER_API, 'Objects')}/{_q(PARTNER_API, 'Client')}/{_q(PARTNER_API, 'ID')}"
        )
    mids = tuple(dict.fromkeys(_text(element) for element in named if _text(element)))
    return _SoapRequest(action, token, operation, message_id, mids)


def _filter_keys(element: etree._Element | None) -> list[str] | str | None:
    """The keys a Filter asks for, None for no filter, or the error to answer."""
    if element is None:
        return None
    if _xsi_type(element) != "SimpleFilterPart":
        return "The stand-in filters with a SimpleFilterPart only"
    prop = _text(element.find(_q(PARTNER_API, "Property")))
    operator = _text(element.find(_q(PARTNER_API, "SimpleOperator")))
    values = [_text(v) for v in element.findall(_q(PARTNER_API, "Value"))]
    if prop != "SubscriberKey":
        return f"The stand-in filters on SubscriberKey only, not {prop!r}"
    if operator == "equals" and len(values) == 1:
        return values
    if operator == "IN" and values:
        return list(dict.fromkeys(values))
    return f"SimpleOperator {operator!r} with {len(values)} values is not supported"


def _subscriber_result(
    parent: etree._Element, record: Mapping[str, Any], properties: Sequence[str]
) -> None:
    result = _partner(parent, "Results")
    result.set(_q(XSI, "type"), "Subscriber")
    wanted = set(properties)
    if "Client.ID" in wanted:
        client = _partner(result, "Client")
        _partner(client, "ID", record["mid"])
    _partner(result, "PartnerKey").set(_q(XSI, "nil"), "true")
    if "CreatedDate" in wanted:
        _partner(result, "CreatedDate", record["created"])
    if "ID" in wanted:
        _partner(result, "ID", str(record["id"]))
    _partner(result, "ObjectID").set(_q(XSI, "nil"), "true")
    if "EmailAddress" in wanted:
        _partner(result, "EmailAddress", record["email"])
    if "SubscriberKey" in wanted:
        _partner(result, "SubscriberKey", record["key"])
    if "UnsubscribedDate" in wanted and record.get("unsubscribed"):
        _partner(result, "UnsubscribedDate", record["unsubscribed"])
    if "Status" in wanted:
        _partner(result, "Status", record["status"])
    if "EmailTypePreference" in wanted:
        _partner(result, "EmailTypePreference", "HTML")


def _envelope(answer: etree._Element, request: _SoapRequest, url: str) -> bytes:
    envelope = etree.Element(
        _q(SOAP_ENV, "Envelope"),
        nsmap={"soap": SOAP_ENV, "xsi": XSI, "wsa": WSA, "wsse": WSSE, "wsu": WSU},
    )
    header = _sub(envelope, _q(SOAP_ENV, "Header"))
    _sub(header, _q(WSA, "Action"), f"{request.action}Response")
    _sub(header, _q(WSA, "MessageID"), f"urn:uuid:{uuid.uuid4()}")
    if request.message_id:
        _sub(header, _q(WSA, "RelatesTo"), request.message_id)
    _sub(header, _q(WSA, "To"), "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous")
    security = _sub(header, _q(WSSE, "Security"))
    stamp = _sub(security, _q(WSU, "Timestamp"))
    now = datetime.now(UTC)
    _sub(stamp, _q(WSU, "Created"), now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    _sub(stamp, _q(WSU, "Expires"), (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    body = _sub(envelope, _q(SOAP_ENV, "Body"))
    body.append(answer)
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


# --- running it -----------------------------------------------------------------------------


@contextmanager
def running_standin(**options: Any) -> Iterator[MarketingCloudStandIn]:
    """A started stand-in for the duration of a ``with`` block (wrap in a pytest fixture)."""
    standin = MarketingCloudStandIn(**options)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


class MarketingCloudStandInClient:
    """Drives a stand-in in another process through its HTTPS control endpoints.

    The same helpers as MarketingCloudStandIn, except ``fail(until=...)`` (a callable cannot
    cross processes: use ``times`` or ``for_seconds``).
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

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        response = self._http.request(
            method,
            self.url + CONTROL_PREFIX + path,
            json=payload,
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

    def set_subscriber(
        self, key: str, status: str, *, mid: str | None = None, email: str | None = None
    ) -> None:
        self._request(
            "POST", "subscribers", {"key": key, "status": status, "mid": mid, "email": email}
        )

    def set_subscribers(
        self, records: Iterable[Mapping[str, Any]], *, only_new: bool = False
    ) -> int:
        payload = {"subscribers": [dict(r) for r in records], "only_new": only_new}
        return int(self._request("POST", "subscribers", payload)["written"])

    def subscriber(self, key: str, mid: str | None = None) -> dict[str, Any] | None:
        mid = mid or str(self.state(records=False)["mids"][0])
        try:
            return dict(self._request("GET", f"subscribers/{mid}/{key}"))
        except RuntimeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def status(self, key: str, mid: str | None = None) -> str | None:
        record = self.subscriber(key, mid)
        return str(record["status"]) if record is not None else None

    def subscribers(self) -> list[dict[str, Any]]:
        return list(self.state()["subscribers"])

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
        action: str | None = None,
        mid: str | None = None,
    ) -> int:
        payload = {
            "kind": kind,
            "times": times,
            "for_seconds": for_seconds,
            "seconds": seconds,
            "path_contains": path_contains,
            "action": action,
            "mid": mid,
        }
        return int(self._request("POST", "faults", payload)["id"])

    def clear_faults(self) -> None:
        self._request("DELETE", "faults")

    def expire_tokens(self) -> None:
        self._request("POST", "expire-tokens")

    def reset(self) -> None:
        self._request("POST", "reset")

    def state(self, *, records: bool = True) -> dict[str, Any]:
        state = dict(self._request("GET", "state"))
        if not records:
            state.pop("call_log", None)
            state.pop("subscribers", None)
        return state

    @property
    def token_calls(self) -> int:
        return int(self.state(records=False)["token_calls"])

    @property
    def api_calls(self) -> int:
        return int(self.state(records=False)["api_calls"])

    @property
    def call_log(self) -> list[tuple[str, str]]:
        return [(operation, mid) for operation, mid in self._request("GET", "calls")]


@contextmanager
def standin_process(
    *, port: int = 0, args: Iterable[str] = (), startup_timeout: float = 20.0
) -> Iterator[MarketingCloudStandInClient]:
    """Run ``python -m standins.marketing_cloud`` in a subprocess and yield a client for it."""
    with run_standin_process(
        "standins.marketing_cloud",
        label="Marketing Cloud",
        env_name="MARKETING_CLOUD_CLIENT_SECRET",
        clear_env=["MARKETING_CLOUD_CLIENT_ID", "MARKETING_CLOUD_ACCOUNT_ID"],
        port=port,
        args=args,
        startup_timeout=startup_timeout,
    ) as (info, secret):
        client = MarketingCloudStandInClient(
            info["url"], info["ca_path"], secret, info["client_id"]
        )
        try:
            yield client
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.marketing_cloud",
        description="Run the Marketing Cloud stand-in (HTTPS on loopback) until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8444)
    parser.add_argument("--state-file", help="keep subscribers here across restarts")
    parser.add_argument(
        "--cert-dir", help="where the CA and server certificate live (default: beside the state)"
    )
    parser.add_argument(
        "--client-id", default=os.environ.get("MARKETING_CLOUD_CLIENT_ID") or DEFAULT_CLIENT_ID
    )
    parser.add_argument(
        "--parent-mid",
        default=os.environ.get("MARKETING_CLOUD_ACCOUNT_ID") or PARENT_MID,
        help="the parent business unit's MID (the token's account_id)",
    )
    parser.add_argument(
        "--child-mid",
        action="append",
        dest="child_mids",
        help=f"a child business unit's MID; repeat for each (default: {', '.join(CHILD_MIDS)})",
    )
    parser.add_argument(
        "--seed",
        help='JSON file: [{"key", "status", "mid"?, "email"?}, ...], for subscribers the state '
        "does not hold yet",
    )
    parser.add_argument("--token-lifetime", type=float, default=TOKEN_LIFETIME)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    # The secret comes from the environment only (a command line is visible to every user);
    # MARKETING_CLOUD_CLIENT_SECRET is the name the app reads too, so one export serves both.
    secret = os.environ.get("MARKETING_CLOUD_CLIENT_SECRET", "")
    generated = not secret
    state_file = Path(args.state_file) if args.state_file else None
    cert_dir = args.cert_dir or (
        state_file.parent / "marketing-cloud-standin" if state_file else None
    )
    standin = MarketingCloudStandIn(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=secret or None,
        parent_mid=args.parent_mid,
        child_mids=CHILD_MIDS if args.child_mids is None else args.child_mids,
        token_lifetime=args.token_lifetime,
        state_file=state_file,
        cert_dir=cert_dir,
    )
    seeded = 0
    if args.seed:
        seeded = standin.set_subscribers(json.loads(Path(args.seed).read_text()), only_new=True)
    standin.start()
    info: dict[str, Any] = {
        "url": standin.url,
        "ca_path": standin.ca_path,
        "client_id": standin.client_id,
        "account_id": standin.parent_mid,
        "mids": list(standin.mids),
    }
    if generated:
        info["client_secret"] = standin.client_secret
    print(json.dumps(info), flush=True)
    print(
        f"Marketing Cloud stand-in on {standin.url} (auth, SOAP and REST)\n"
        f"  CA certificate:  {standin.ca_path}\n"
        f"  client id:       {standin.client_id}\n"
        f"  business units:  {standin.parent_mid} (parent), {', '.join(standin.child_mids)}\n"
        f"  seeded:          {seeded} subscriber(s)\n"
        f"  state file:      {state_file or '(memory only)'}",
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
