"""The Marketing Cloud connector: read a subscriber's status per business unit, resubscribe.

When a contact is opted back in (docs/design.md, rule 8), the app looks up their subscriber
(key = the 18-character Salesforce Contact ID) in every business unit they may receive mail
from, and the system team sets those that are not Active back to Active. This module does the two
calls that takes, through the SOAP API (the REST API has no per-business-unit subscriber
status): ``Retrieve`` of ``Subscriber`` with ``ClientIDs``, and ``Update`` of ``Subscriber``.

It also reads the tracking events of commercial sends that the app must apply (docs/design.md,
"Events from email platforms"): ``Retrieve`` of ``UnsubEvent`` and ``BounceEvent`` in one
business unit, filtered on ``EventDate``, page by page (``tracking_pages``).

It obtains an OAuth token (client credentials, for the parent account's MID) from
``MARKETING_CLOUD_AUTH_URL``, shares it across the process until shortly before it expires,
gets a fresh one once when the API answers "Login Failed" (a token revoked early), and
classifies every failure as transient or permanent (integrations/base.py). It does not
retry otherwise: the sync core owns the retry policy.

The same code runs against the stand-in (``standins.marketing_cloud``): only the auth URL,
the credentials and the CA bundle differ. A client is meant for one thread (one task run).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from lxml import etree

from integrations import base
from integrations.base import ConnectorError, PermanentError, TimeoutSession, TransientError
from lib.salesforce_ids import salesforce_id_18

logger = logging.getLogger(__name__)

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_API = "http://exacttarget.com/wsdl/partnerAPI"
FUEL_OAUTH = "http://exacttarget.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"


class Status(StrEnum):
    """A subscriber's status in one business unit, as the app records it (the values of
    preferences.models.SubscriberStatusValue)."""

    ACTIVE = "active"
    BOUNCED = "bounced"
    HELD = "held"
    UNSUBSCRIBED = "unsubscribed"
    NOT_FOUND = "not_found"


_MID = re.compile(r"\d{1,20}")
_SUBSCRIBER_KEY = re.compile(r"[A-Za-z0-9]{18}")
# Deleted subscribers linger with that status for a while; for the lookup they are gone.
_STATUSES = {
    "Active": Status.ACTIVE,
    "Bounced": Status.BOUNCED,
    "Held": Status.HELD,
    "Unsubscribed": Status.UNSUBSCRIBED,
    "Deleted": Status.NOT_FOUND,
}
_PROPERTIES = ("SubscriberKey", "EmailAddress", "Status", "Client.ID")
# The client fault Marketing Cloud answers when it is too busy to serve a synchronous call
# (the SOAP API's "SOAP Faults" page): worth retrying later, unlike other client faults.
_BUSY = "Synchronous request cannot be completed at this time"
# Renew a token this long before Marketing Cloud says it expires (tokens last ~18 minutes).
_EXPIRY_MARGIN = 60.0

# Tracking events for commercial sends (docs/design.md, "Events from email platforms"): the
# documented properties of UnsubEvent and BounceEvent that are read, as in the SOAP API's
# "Retrieve Bounce Event Details" sample. EventDate is the one filtered on.
TRACKING_OBJECTS = ("UnsubEvent", "BounceEvent")
_EVENT_PROPERTIES = (
    "Client.ID",
    "SendID",
    "BatchID",
    "TriggeredSendDefinitionObjectID",
    "SubscriberKey",
    "EventDate",
    "EventType",
)
TRACKING_PROPERTIES = {
    "UnsubEvent": _EVENT_PROPERTIES,
    "BounceEvent": (*_EVENT_PROPERTIES, "BounceCategory", "BounceType", "SMTPCode", "SMTPReason"),
}
# Marketing Cloud writes and reads dates without a zone, in its server time: US Central
# Standard Time all year round (UTC-6, no daylight saving).
SERVER_TIME = timezone(timedelta(hours=-6), "CST")


@dataclass(frozen=True)
class TrackingPage:
    """One Retrieve answer's tracking events; `more`: another page follows."""

    events: list[dict[str, Any]]
    more: bool


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketingCloudSettings:
    """Where and how to reach Marketing Cloud. Secrets stay out of repr()."""

    auth_url: str = ""  # https://YOUR_SUBDOMAIN.auth.marketingcloudapis.com
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    account_id: str = ""  # the parent business unit's MID
    ca_bundle: str = ""  # empty: the system's CAs
    timeout: float = 30.0  # seconds to wait for an answer (read timeout)
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        url = urlsplit(self.auth_url)
        if url.scheme != "https" or not url.hostname:
            raise ImproperlyConfigured("MARKETING_CLOUD_AUTH_URL must be an https:// URL")
        if not self.client_id or not self.client_secret:
            raise ImproperlyConfigured(
                "MARKETING_CLOUD_CLIENT_ID and MARKETING_CLOUD_CLIENT_SECRET are required"
            )
        if not _MID.fullmatch(self.account_id):
            raise ImproperlyConfigured("MARKETING_CLOUD_ACCOUNT_ID is the parent's MID (digits)")
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ImproperlyConfigured("MARKETING_CLOUD_TIMEOUT and _CONNECT_TIMEOUT must be > 0")
        if self.ca_bundle and not Path(self.ca_bundle).exists():
            raise ImproperlyConfigured(f"MARKETING_CLOUD_CA_BUNDLE {self.ca_bundle} does not exist")

    @classmethod
    def from_django(cls) -> MarketingCloudSettings:
        def get(name: str, default: Any) -> Any:
            return getattr(settings, name, default)

        try:
            return cls(
                auth_url=str(get("MARKETING_CLOUD_AUTH_URL", "")).rstrip("/"),
                client_id=str(get("MARKETING_CLOUD_CLIENT_ID", "")),
                client_secret=str(get("MARKETING_CLOUD_CLIENT_SECRET", "")),
                account_id=str(get("MARKETING_CLOUD_ACCOUNT_ID", "")).strip(),
                ca_bundle=str(get("MARKETING_CLOUD_CA_BUNDLE", "") or ""),
                timeout=float(get("MARKETING_CLOUD_TIMEOUT", cls.timeout)),
                connect_timeout=float(get("MARKETING_CLOUD_CONNECT_TIMEOUT", cls.connect_timeout)),
            )
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"Marketing Cloud settings: {exc}") from None


# --- errors ----------------------------------------------------------------------------------

# Our codes for Marketing Cloud's answers, by what retrying them can do (network and TLS
# failures are classified the same way for every connector, in integrations/base.py).
TRANSIENT_CODES = frozenset(
    {
        "SERVER_FAULT",  # soap:Server: unplanned outage, maintenance
        "LOGIN_FAILED",  # only reaches a caller when a fresh token did not help
    }
)
PERMANENT_CODES = frozenset(
    {
        "CLIENT_FAULT",  # soap:Client: not authorised, a request it cannot read
        "RETRIEVE_ERROR",  # OverallStatus "Error: ...": an unknown MID, a bad property
        "UPDATE_ERROR",  # the subscriber is not in that business unit, a refused status
        "INVALID_SUBSCRIBER_KEY",
        "INVALID_MID",
        "invalid_client",
        "invalid_request",
        "unauthorized_client",
        "unsupported_grant_type",
    }
)


def classify(status_code: int | None, error_code: str | None) -> type[ConnectorError]:
    """Transient or permanent, by our error code first, then by HTTP status (None: no answer
    at all). SOAP faults come with HTTP 500 whatever their kind, so they carry a code."""
    return base.classify(
        status_code, error_code, transient=TRANSIENT_CODES, permanent=PERMANENT_CODES
    )


def _network_error(exc: OSError) -> ConnectorError:
    return base.network_error(exc, system="Marketing Cloud", ca_setting="MARKETING_CLOUD_CA_BUNDLE")


class _LoginFailed(Exception):
    pass


# --- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    access_token: str = field(repr=False)
    soap_url: str  # .../Service.asmx
    renew_at: float  # time.monotonic()
    rest_url: str = ""  # the tenant's REST base, rest_instance_url without the slash


_tokens: base.TokenCache[_Token] = base.TokenCache()


def forget_tokens() -> None:
    """Drop cached access tokens (tests; or after rotating credentials)."""
    _tokens.forget()


# --- the client ------------------------------------------------------------------------------


class MarketingCloudClient:
    """One connection to Marketing Cloud (for one thread). Use as a context manager or
    close()."""

    def __init__(self, config: MarketingCloudSettings | None = None) -> None:
        self.config = config or MarketingCloudSettings.from_django()
        self._http = TimeoutSession(
            (self.config.connect_timeout, self.config.timeout), self.config.ca_bundle or True
        )

    def __enter__(self) -> MarketingCloudClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API ---------------------------------------------------------------------------

    def subscriber_status(self, subscriber_key: str, mid: str) -> str:
        """The subscriber's status in one business unit: a SubscriberStatusValue value
        (active, bounced, held, unsubscribed, or not_found, which Deleted counts as)."""
        _check_key(subscriber_key)
        _check_mid(mid)
        answer = self._call("Retrieve", _retrieve_request(subscriber_key, mid))
        overall = _child_text(answer, "OverallStatus")
        if overall.startswith("Error"):
            raise PermanentError("RETRIEVE_ERROR", f"business unit {mid}: {overall}")
        if overall not in ("OK", "MoreDataAvailable"):
            raise TransientError("INVALID_RESPONSE", f"unexpected OverallStatus {overall!r}")
        for result in answer.iterfind(_q(PARTNER_API, "Results")):
            client_id = _child_text(result.find(_q(PARTNER_API, "Client")), "ID")
            # An 18-character ID is case-insensitive by design, whatever case it comes back in.
            same_key = _child_text(result, "SubscriberKey").lower() == subscriber_key.lower()
            if not same_key or client_id not in ("", mid):
                continue
            status = _child_text(result, "Status")
            if status not in _STATUSES:
                raise PermanentError(
                    "INVALID_RESPONSE", f"unknown subscriber status {status!r} in {mid}"
                )
            return str(_STATUSES[status])
        return str(Status.NOT_FOUND)

    def subscriber_statuses(self, subscriber_key: str, mids: Sequence[str]) -> dict[str, str]:
        """The status in each business unit (mid -> status), one Retrieve per unit. Raises
        on the first that fails: the caller retries the lot."""
        _check_key(subscriber_key)
        unique = list(dict.fromkeys(mids))
        for mid in unique:
            _check_mid(mid)
        return {mid: self.subscriber_status(subscriber_key, mid) for mid in unique}

    def resubscribe(self, subscriber_key: str, mid: str) -> None:
        """Set the subscriber back to Active in one business unit. Harmless to repeat;
        PermanentError UPDATE_ERROR if Marketing Cloud refuses (say, no such subscriber)."""
        _check_key(subscriber_key)
        _check_mid(mid)
        answer = self._call("Update", _update_request(subscriber_key, mid))
        results = list(answer.iterfind(_q(PARTNER_API, "Results")))
        if not results:
            overall = _child_text(answer, "OverallStatus") or "no result"
            raise PermanentError("UPDATE_ERROR", f"business unit {mid}: {overall}")
        for result in results:
            if _child_text(result, "StatusCode") != "OK":
                message = _child_text(result, "StatusMessage") or "the update was refused"
                code = _child_text(result, "ErrorCode")
                detail = f" (error {code})" if code else ""
                raise PermanentError("UPDATE_ERROR", f"business unit {mid}: {message}{detail}")
        logger.info("Resubscribed a subscriber in Marketing Cloud business unit %s", mid)

    def tracking_pages(self, object_type: str, mid: str, since: datetime) -> Iterator[TrackingPage]:
        """Tracking events of one kind (UnsubEvent or BounceEvent) in one business unit whose
        EventDate is after `since` (an aware datetime), a page at a time as Marketing Cloud
        answers them (up to 2,500 each; ``MoreDataAvailable`` is followed with
        ``ContinueRequest``). Each event is a dict of the properties read, as text, except
        ``EventDate``, an aware datetime; properties an event lacks are left out."""
        if object_type not in TRACKING_PROPERTIES:
            raise ValueError(f"object_type is one of {', '.join(TRACKING_OBJECTS)}")
        _check_mid(mid)
        if since.tzinfo is None:
            raise ValueError("since must be an aware datetime")
        request = _tracking_request(object_type, mid, since)
        while True:
            answer = self._call("Retrieve", request)
            overall = _child_text(answer, "OverallStatus")
            if overall.startswith("Error"):
                raise PermanentError("RETRIEVE_ERROR", f"{object_type} in {mid}: {overall}")
            if overall not in ("OK", "MoreDataAvailable"):
                raise TransientError("INVALID_RESPONSE", f"unexpected OverallStatus {overall!r}")
            more = overall == "MoreDataAvailable"
            request_id = _child_text(answer, "RequestID")
            if more and not request_id:
                raise TransientError("INVALID_RESPONSE", "MoreDataAvailable without a RequestID")
            events = [
                _tracking_event(result, object_type)
                for result in answer.iterfind(_q(PARTNER_API, "Results"))
            ]
            yield TrackingPage(events, more)
            if not more:
                return
            request = _continue_request(request_id)

    def tracking_events(
        self, object_type: str, mid: str, since: datetime
    ) -> Iterator[dict[str, Any]]:
        """The events of tracking_pages(), one at a time."""
        for page in self.tracking_pages(object_type, mid, since):
            yield from page.events

    def connect(self) -> None:
        """Have a token: the process's cached one, or a new one."""
        self._token()

    def verify_ens_callback(self, callback_id: str, verification_key: str) -> None:
        """Complete an Event Notification Service callback's registration: send back the
        single-use key ENS posted to the callback (REST ``POST /platform/v1/ens-verify``).
        A token refused with 401 is replaced once, as for SOAP's "Login Failed"."""
        if not callback_id or not verification_key:
            raise PermanentError("INVALID_REQUEST", "a callback ID and a verification key")
        payload = {"callbackId": callback_id, "verificationKey": verification_key}
        token = self._token()
        response = self._rest_post("/platform/v1/ens-verify", payload, token)
        if response.status_code == 401:
            logger.info("Marketing Cloud refused the token; getting a new one")
            token = self._token(rejected=token.access_token)
            response = self._rest_post("/platform/v1/ens-verify", payload, token)
        if not 200 <= response.status_code < 300:
            code = f"HTTP_{response.status_code}"
            message = f"ens-verify: HTTP {response.status_code} {response.reason or ''}"
            raise classify(response.status_code, code)(code, message.strip(), response.status_code)
        logger.info("Verified Marketing Cloud ENS callback %s", callback_id)

    # -- tokens ----------------------------------------------------------------------------

    def _token(self, *, rejected: str | None = None) -> _Token:
        config = self.config
        return _tokens.get(
            (config.auth_url, config.client_id, config.account_id),
            fresh=self._new_token,
            stale=lambda cached: (
                cached.access_token == rejected or cached.renew_at <= time.monotonic()
            ),
        )

    def _new_token(self) -> _Token:
        config = self.config
        url = config.auth_url.rstrip("/") + "/v2/token"
        payload: dict[str, str | int] = {
            "grant_type": "client_credentials",
            "client_id": config.client_id,
            "client_secret": config.client_secret,
            # A number, as the v2/token request documents it (validated as digits above).
            "account_id": int(config.account_id),
        }
        try:
            response = self._http.post(
                url,
                json=payload,
                headers={"Accept": "application/json"},
            )
        except OSError as exc:  # requests' own errors included
            raise _network_error(exc) from exc
        body = base.token_answer(response, classify, refused="token refused")
        access_token, soap_url = body.get("access_token"), body.get("soap_instance_url")
        if not isinstance(access_token, str) or not access_token or not isinstance(soap_url, str):
            raise TransientError("INVALID_RESPONSE", "the token response lacks a token")
        if urlsplit(soap_url).scheme != "https":
            raise PermanentError("INVALID_RESPONSE", f"soap_instance_url is not https: {soap_url}")
        try:
            lifetime = float(body.get("expires_in") or 0)
        except (TypeError, ValueError):
            lifetime = 0.0
        # Renew a minute early, or halfway through a lifetime that short.
        renew_in = max(lifetime - _EXPIRY_MARGIN, lifetime / 2)
        rest_url = body.get("rest_instance_url")
        rest_url = rest_url if isinstance(rest_url, str) else ""
        if rest_url and urlsplit(rest_url).scheme != "https":
            raise PermanentError("INVALID_RESPONSE", f"rest_instance_url is not https: {rest_url}")
        logger.info("Got a Marketing Cloud token for account %s", config.account_id)
        return _Token(
            access_token,
            soap_url.rstrip("/") + "/Service.asmx",
            time.monotonic() + renew_in,
            rest_url.rstrip("/"),
        )

    # -- REST ------------------------------------------------------------------------------

    def _rest_post(self, path: str, payload: dict[str, Any], token: _Token) -> requests.Response:
        if not token.rest_url:
            raise PermanentError("INVALID_RESPONSE", "the token response has no rest_instance_url")
        try:
            return self._http.post(
                token.rest_url + path,
                json=payload,
                headers={
                    "Accept": "application/json",
                    "Authorization": f"Bearer {token.access_token}",
                },
            )
        except OSError as exc:  # requests' own errors included
            raise _network_error(exc) from exc

    # -- SOAP ------------------------------------------------------------------------------

    def _call(self, action: str, operation: etree._Element) -> etree._Element:
        """Send one SOAP request and return the Body's answer element; on "Login Failed" get
        a new token once and repeat it (a refused login means nothing was done)."""
        token = self._token()
        try:
            return self._post(action, operation, token)
        except _LoginFailed:
            logger.info("Marketing Cloud refused the token; getting a new one")
        token = self._token(rejected=token.access_token)
        try:
            return self._post(action, operation, token)
        except _LoginFailed as exc:
            raise TransientError("LOGIN_FAILED", str(exc), 500) from None

    def _post(self, action: str, operation: etree._Element, token: _Token) -> etree._Element:
        body = _envelope(action, operation, token)
        try:
            response = self._http.post(
                token.soap_url,
                data=body,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": action},
            )
        except OSError as exc:  # requests' own errors included
            raise _network_error(exc) from exc
        try:
            root = etree.fromstring(response.content, _parser())
        except etree.XMLSyntaxError:
            root = None
        soap_body = root.find(_q(SOAP_ENV, "Body")) if root is not None else None
        answer = soap_body[0] if soap_body is not None and len(soap_body) else None
        if answer is None:
            status = response.status_code
            code = "INVALID_RESPONSE" if status == 200 else f"HTTP_{status}"
            message = f"{action}: HTTP {status} {response.reason or ''}, not a SOAP answer"
            raise classify(status, code)(code, message.strip(), status)
        if answer.tag == _q(SOAP_ENV, "Fault"):
            _raise_fault(answer, response.status_code)
        if response.status_code != 200:
            code = f"HTTP_{response.status_code}"
            raise classify(response.status_code, code)(code, action, response.status_code)
        return answer


# --- helpers ---------------------------------------------------------------------------------


def _check_key(value: str) -> None:
    # The key is the contact's canonical 18-character Salesforce ID; a 15-character or
    # mis-cased one would be "not found" in every business unit, which reads as "all clear".
    if not (
        isinstance(value, str)
        and _SUBSCRIBER_KEY.fullmatch(value)
        and salesforce_id_18(value[:15]) == value
    ):
        raise PermanentError(
            "INVALID_SUBSCRIBER_KEY",
            f"not an 18-character Salesforce Contact ID: {str(value)[:40]!r}",
        )


def _check_mid(value: str) -> None:
    if not (isinstance(value, str) and _MID.fullmatch(value)):
        raise PermanentError("INVALID_MID", f"a business unit's MID is a number: {value!r}")


def _parser() -> etree.XMLParser:
    # One per call (lxml parsers are not meant to be shared between threads); no DTDs, no
    # entity expansion, no network.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, _q(PARTNER_API, name))
    if text is not None:
        element.text = text  # lxml escapes it
    return element


def _child_text(element: etree._Element | None, name: str) -> str:
    if element is None:
        return ""
    child = element.find(_q(PARTNER_API, name))
    return (child.text or "").strip() if child is not None else ""


def _retrieve_request(subscriber_key: str, mid: str) -> etree._Element:
    message = etree.Element(
        _q(PARTNER_API, "RetrieveRequestMsg"), nsmap={None: PARTNER_API, "xsi": XSI}
    )
    request = _add(message, "RetrieveRequest")
    client_ids = _add(request, "ClientIDs")
    _add(client_ids, "ClientID", mid)
    _add(request, "ObjectType", "Subscriber")
    for name in _PROPERTIES:
        _add(request, "Properties", name)
    condition = _add(request, "Filter")
    condition.set(_q(XSI, "type"), "SimpleFilterPart")
    _add(condition, "Property", "SubscriberKey")
    _add(condition, "SimpleOperator", "equals")
    _add(condition, "Value", subscriber_key)
    return message


def server_time(value: datetime) -> str:
    """An aware datetime as Marketing Cloud reads a date: its server time, no zone."""
    local = value.astimezone(SERVER_TIME)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def parse_server_time(text: str) -> datetime:
    """A date as Marketing Cloud writes it (server time, usually without a zone), aware."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PermanentError("INVALID_RESPONSE", f"not a date: {text[:40]!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=SERVER_TIME)
    return value.astimezone(UTC)


def _tracking_request(object_type: str, mid: str, since: datetime) -> etree._Element:
    message = etree.Element(
        _q(PARTNER_API, "RetrieveRequestMsg"), nsmap={None: PARTNER_API, "xsi": XSI}
    )
    request = _add(message, "RetrieveRequest")
    client_ids = _add(request, "ClientIDs")
    _add(client_ids, "ClientID", mid)
    _add(request, "ObjectType", object_type)
    for name in TRACKING_PROPERTIES[object_type]:
        _add(request, "Properties", name)
    condition = _add(request, "Filter")
    condition.set(_q(XSI, "type"), "SimpleFilterPart")
    _add(condition, "Property", "EventDate")
    _add(condition, "SimpleOperator", "greaterThan")
    _add(condition, "DateValue", server_time(since))
    return message


def _continue_request(request_id: str) -> etree._Element:
    # As "Retrieve More than 2500 Records Using the ContinueRequest Property" shows it: a new
    # RetrieveRequest carrying only the previous answer's RequestID.
    message = etree.Element(_q(PARTNER_API, "RetrieveRequestMsg"), nsmap={None: PARTNER_API})
    request = _add(message, "RetrieveRequest")
    _add(request, "ContinueRequest", request_id)
    return message


def _tracking_event(result: etree._Element, object_type: str) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for name in (*TRACKING_PROPERTIES[object_type], "EmailAddress"):
        if name == "Client.ID":
            value = _child_text(result.find(_q(PARTNER_API, "Client")), "ID")
        else:
            value = _child_text(result, name)
        if value:
            event[name] = value
    if "EventDate" not in event:
        raise PermanentError("INVALID_RESPONSE", f"{object_type} without an EventDate")
    event["EventDate"] = parse_server_time(event["EventDate"])
    return event


def _update_request(subscriber_key: str, mid: str) -> etree._Element:
    request = etree.Element(_q(PARTNER_API, "UpdateRequest"), nsmap={None: PARTNER_API, "xsi": XSI})
    _add(request, "Options")
    subscriber = _add(request, "Objects")
    subscriber.set(_q(XSI, "type"), "Subscriber")
    client = _add(subscriber, "Client")
    _add(client, "ID", mid)
    _add(subscriber, "SubscriberKey", subscriber_key)
    _add(subscriber, "Status", "Active")
    return request


def _envelope(action: str, operation: etree._Element, token: _Token) -> bytes:
    envelope = etree.Element(_q(SOAP_ENV, "Envelope"), nsmap={"soap": SOAP_ENV, "a": WSA})
    header = etree.SubElement(envelope, _q(SOAP_ENV, "Header"))
    etree.SubElement(header, _q(WSA, "Action")).text = action
    etree.SubElement(header, _q(WSA, "MessageID")).text = f"urn:uuid:{uuid.uuid4()}"
    etree.SubElement(header, _q(WSA, "To")).text = token.soap_url
    oauth = etree.SubElement(header, _q(FUEL_OAUTH, "fueloauth"), nsmap={None: FUEL_OAUTH})
    oauth.text = token.access_token
    body = etree.SubElement(envelope, _q(SOAP_ENV, "Body"))
    body.append(operation)
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


def _raise_fault(fault: etree._Element, status: int) -> NoReturn:
    faultcode = (fault.findtext("faultcode") or "").strip()
    message = (fault.findtext("faultstring") or "").strip() or "SOAP fault"
    kind = faultcode.rpartition(":")[2]
    if kind == "Security":
        raise _LoginFailed(message)
    if kind == "Client" and message.startswith(_BUSY):
        raise TransientError("BUSY", message, status)  # Marketing Cloud sheds load this way
    code = {"Server": "SERVER_FAULT", "Client": "CLIENT_FAULT"}.get(kind, f"HTTP_{status}")
    raise classify(status, code)(code, message, status)
