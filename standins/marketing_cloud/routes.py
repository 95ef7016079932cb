"""The protocol: the OAuth 2.0 client-credentials token endpoint (``POST /v2/token``, JSON),
the SOAP API (``POST /Service.asmx``): Retrieve and Update of Subscriber, and the REST route
that verifies an Event Notification Service callback (``POST /platform/v1/ens-verify``,
bearer token; faults reach it only with ``path_contains``).

The token request is as "Access Token for Server-to-Server Integrations" (Marketing Cloud
Engagement developer guide) documents it: JSON ``grant_type``, ``client_id``,
``client_secret``, optional ``scope`` and ``account_id``, the target business unit's MID,
whose type the page gives as **number**. A MID sent as a string (or any other non-number)
is refused with HTTP 400 ``invalid_request``, in the error shape that page shows
(``error``, ``error_description``, ``error_uri``); the description is the stand-in's own.
(The same page's example request writes ``"account_id": "12345"``, contradicting its own
table; the stand-in follows the table.)
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeGuard

from lxml import etree

from standins.common.faults import DELAY_KINDS, FaultBook, FaultRule
from standins.common.http import Reply
from standins.marketing_cloud.faults import (
    EXPIRE_TOKENS,
    HTTP_KINDS,
    SOAP_KINDS,
    MarketingCloudFault,
    fault_reply,
)
from standins.marketing_cloud.soap import (
    PARTNER_API,
    SOAP_PATH,
    SUBSCRIBER_PROPERTIES,
    TRACKING_PROPERTIES,
    XSI,
    SoapFault,
    date_filter,
    envelope,
    filter_keys,
    html_reply,
    local_name,
    parse_soap,
    partner,
    q,
    subscriber_result,
    text_of,
    tracking_result,
    xml_reply,
    xsi_type,
)
from standins.marketing_cloud.store import SETTABLE_STATUSES, SubscriberStore, server_date

TOKEN_PATH = "/v2/token"  # noqa: S105 (a path, not a password)
ENS_VERIFY_PATH = "/platform/v1/ens-verify"
TOKEN_LIFETIME = 1079  # seconds, what Marketing Cloud's v2 tokens say in expires_in
PAGE_SIZE = 2500  # results per Retrieve answer, as the SOAP API documents it


def _refuse_token(status: int, error: str, description: str) -> Reply:
    payload = {
        "error": error,
        "error_description": description,
        "error_uri": "https://developer.salesforce.com/docs",
    }
    return Reply(status, payload)


def _is_mid(value: object) -> TypeGuard[int | float]:
    """A JSON number that is a whole MID (true and false are not numbers here)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _mid_text(value: object) -> str:
    """A MID as the store keys it ("" for none given); as given if it is no number."""
    if value is None:
        return ""
    return str(int(value)) if _is_mid(value) else str(value)


class Account(Protocol):
    """What the routes work with: the MarketingCloudStandIn's parts and settings."""

    client_id: str
    client_secret: str
    token_lifetime: float
    page_size: int  # results per Retrieve answer (Marketing Cloud: 2,500)
    store: SubscriberStore
    faults: FaultBook[MarketingCloudFault]

    @property
    def url(self) -> str: ...

    def hold(self, delay: FaultRule | None) -> bool: ...

    def mark_changed(self) -> None: ...


class MarketingCloudRoutes:
    """Answers the token endpoint and the SOAP API, and keeps the tokens it issued (a
    reset keeps them, so a worker holding one carries on)."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.store = account.store
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (MID, monotonic expiry)

    def expire_tokens(self) -> None:
        with self.store.lock:
            self._tokens.clear()

    def serve(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        """Answer one request outside the control API; None: drop it (stopping)."""
        if path == TOKEN_PATH:
            return self._token_endpoint(method, path, body)
        if path.rstrip("/").lower() == SOAP_PATH.lower():
            return self._soap_endpoint(method, SOAP_PATH, headers, body)
        if path.rstrip("/") == ENS_VERIFY_PATH:
            return self._ens_verify(method, ENS_VERIFY_PATH, headers, body)
        return html_reply(404, "404 - File or directory not found.")

    def _take(
        self, kinds: frozenset[str], path: str, action: str = "", mids: Sequence[str] = ()
    ) -> MarketingCloudFault | None:
        return self.account.faults.take(kinds, path, lambda rule: rule.concerns(action, mids))

    # -- the token endpoint ------------------------------------------------------------------

    def _token_endpoint(self, method: str, path: str, body: bytes) -> Reply | None:
        account, store = self.account, self.store
        try:
            form = json.loads(body) if body else {}
        except ValueError:
            form = None
        given = form.get("account_id") if isinstance(form, dict) else None
        account_id = _mid_text(given)
        with store.lock:
            store.log.append(("token", account_id))
            delay = self._take(DELAY_KINDS, path)
        if account.hold(delay):
            return None
        with store.lock:
            fault = self._take(HTTP_KINDS, path)
            if fault is not None:
                return fault_reply(fault.kind, account.url)
            store.token_calls += 1

        if method != "POST":
            return _refuse_token(405, "invalid_request", "The token endpoint takes POST only.")
        if not isinstance(form, dict):
            return _refuse_token(400, "invalid_request", "The request body is not a JSON object.")
        if form.get("grant_type") != "client_credentials":
            return _refuse_token(
                400, "unsupported_grant_type", "Use grant_type client_credentials."
            )
        client_id, client_secret = (
            str(form.get("client_id", "")),
            str(form.get("client_secret", "")),
        )
        if not (
            hmac.compare_digest(client_id.encode(), account.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), account.client_secret.encode())
        ):
            return _refuse_token(
                401,
                "invalid_client",
                "Client authentication failed. Make sure that the client ID and client "
                "secret are valid.",
            )
        if given is not None and not _is_mid(given):
            return _refuse_token(
                400,
                "invalid_request",
                "account_id must be a number: the MID of the target business unit.",
            )
        mid = account_id or store.parent_mid
        if mid not in store.mids:
            return _refuse_token(
                403, "unauthorized_client", f"The package is not installed in account {mid}."
            )
        token = secrets.token_urlsafe(48)
        with store.lock:
            now = time.monotonic()
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (mid, now + account.token_lifetime)
        return Reply(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(account.token_lifetime),
                "scope": "email_read list_and_subscribers_read list_and_subscribers_write",
                "soap_instance_url": account.url + "/",
                "rest_instance_url": account.url + "/",
            },
        )

    # -- Event Notification Service: verifying a callback -------------------------------------

    def _ens_verify(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        """``POST /platform/v1/ens-verify`` with ``{"callbackId", "verificationKey"}`` and a
        bearer token: the callback's owner echoes the single-use key ENS posted to it. The
        stand-in records each verification (``ens_verifications``)."""
        account, store = self.account, self.store
        with store.lock:
            store.log.append(("ens-verify", ""))
            delay = self._take(DELAY_KINDS, path)
        if account.hold(delay):
            return None
        with store.lock:
            fault = self._take(HTTP_KINDS, path)
            if fault is not None:
                return fault_reply(fault.kind, account.url)
        if method != "POST":
            return Reply(405, {"message": "ens-verify takes POST only.", "errorcode": 405})
        authorization = next(
            (value for name, value in headers.items() if name.lower() == "authorization"), ""
        )
        scheme, _, token = authorization.partition(" ")
        with store.lock:
            entry = self._tokens.get(token) if scheme.lower() == "bearer" else None
            if entry is None or entry[1] <= time.monotonic():
                return Reply(401, {"message": "Not Authorized", "errorcode": 0})
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        fields = (
            (data.get("callbackId"), data.get("verificationKey"))
            if isinstance(data, dict)
            else (None, None)
        )
        if not all(isinstance(value, str) and value for value in fields):
            return Reply(
                400,
                {"message": "callbackId and verificationKey are required.", "errorcode": 10002},
            )
        callback_id, key = str(fields[0]), str(fields[1])
        with store.lock:
            store.ens_verifications.append(
                {"callbackId": callback_id, "verificationKey": key, "mid": entry[0]}
            )
        account.mark_changed()
        return Reply(200, {"callbackId": callback_id, "verified": True})

    # -- the SOAP API ------------------------------------------------------------------------

    def _soap_endpoint(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        account, store = self.account, self.store
        if method != "POST":
            return html_reply(405, "405 - HTTP verb used to access this page is not allowed.")
        try:
            request = parse_soap(headers, body)
        except SoapFault as unreadable:
            with store.lock:
                store.log.append(("?", ""))
            return unreadable.reply(account.url)
        with store.lock:
            token_mid = self._tokens.get(request.token, ("", 0.0))[0]
            mids = request.mids or ((token_mid,) if token_mid else ())
            store.log.extend((request.action, mid) for mid in mids or ("",))
            delay = self._take(DELAY_KINDS, path, request.action, mids)
        if account.hold(delay):
            return None
        with store.lock:
            if self._take(EXPIRE_TOKENS, path, request.action, mids):
                self._tokens.clear()
            entry = self._tokens.get(request.token)
            if entry is None or entry[1] <= time.monotonic():
                return SoapFault("Security", "Login Failed").reply(account.url)
            injected = self._take(HTTP_KINDS | SOAP_KINDS, path, request.action, mids)
            if injected is not None:
                return fault_reply(injected.kind, account.url)
            store.api_calls += 1
            try:
                if request.action == "Retrieve":
                    answer = self._retrieve(request.operation, entry[0])
                else:
                    answer = self._update(request.operation, entry[0])
                    account.mark_changed()
            except SoapFault as refusal:
                return refusal.reply(account.url)
        return xml_reply(200, envelope(answer, request))

    def _accessible(self, token_mid: str) -> tuple[str, ...]:
        # A token for the parent reaches every business unit; one for a child, that child.
        return self.store.mids if token_mid == self.store.parent_mid else (token_mid,)

    def _retrieve(self, operation: etree._Element, token_mid: str) -> etree._Element:
        answer = etree.Element(q(PARTNER_API, "RetrieveResponseMsg"), nsmap={None: PARTNER_API})

        def error(message: str) -> etree._Element:
            partner(answer, "OverallStatus", f"Error: {message}")
            partner(answer, "RequestID", str(uuid.uuid4()))
            return answer

        request = operation.find(q(PARTNER_API, "RetrieveRequest"))
        if request is None:
            raise SoapFault("Client", "RetrieveRequest is required")
        continued = text_of(request.find(q(PARTNER_API, "ContinueRequest")))
        if continued:
            kept = self.store.continuations.pop(continued, None)
            if kept is None:
                return error(f"ContinueRequest {continued} is unknown or has been answered")
            object_type, rest, properties = kept
            return self._tracking_page(answer, object_type, rest, properties)
        object_type = text_of(request.find(q(PARTNER_API, "ObjectType")))
        if object_type not in ("Subscriber", *TRACKING_PROPERTIES):
            return error(
                "The stand-in retrieves Subscriber, UnsubEvent and BounceEvent only, "
                f"not {object_type!r}"
            )
        allowed = TRACKING_PROPERTIES.get(object_type, SUBSCRIBER_PROPERTIES)
        properties = [text_of(p) for p in request.findall(q(PARTNER_API, "Properties"))]
        unknown = [name for name in properties if name not in allowed]
        if not properties or unknown:
            return error(
                f"The Request Property(s) {', '.join(unknown) or '(none)'} do not match with "
                f"the fields of {object_type} retrieve"
            )
        accessible = self._accessible(token_mid)
        client_ids = [
            text_of(client.find(q(PARTNER_API, "ClientID")))
            for client in request.findall(q(PARTNER_API, "ClientIDs"))
        ]
        if client_ids:
            refused = [mid for mid in client_ids if mid not in accessible]
            if refused:
                return error(f"Invalid ClientID: {', '.join(refused)} is not accessible")
            mids = list(dict.fromkeys(client_ids))
        elif text_of(request.find(q(PARTNER_API, "QueryAllAccounts"))).lower() == "true":
            mids = list(accessible)
        else:
            mids = [token_mid]
        if object_type in TRACKING_PROPERTIES:
            condition = date_filter(request.find(q(PARTNER_API, "Filter")))
            if isinstance(condition, str):
                return error(condition)
            try:
                events = self._tracking_found(object_type, mids, condition)
            except ValueError as exc:
                return error(f"Invalid date in the filter: {exc}")
            return self._tracking_page(answer, object_type, events, properties)
        keys = filter_keys(request.find(q(PARTNER_API, "Filter")))
        if isinstance(keys, str):
            return error(keys)

        partner(answer, "OverallStatus", "OK")
        partner(answer, "RequestID", str(uuid.uuid4()))
        records = self.store.records
        for mid in mids:
            if keys is None:
                found = sorted(key for (m, key) in records if m == mid)
            else:
                found = [key for key in keys if (mid, key) in records]
            for key in found:
                subscriber_result(answer, records[(mid, key)], properties)
        return answer

    def _tracking_found(
        self, object_type: str, mids: Sequence[str], condition: tuple[str, list[str]] | None
    ) -> list[dict[str, Any]]:
        """The events of that kind in those business units matching the EventDate filter,
        oldest first."""
        bounds = [server_date(value) for value in condition[1]] if condition else []
        operator = condition[0] if condition else ""

        def matches(event: dict[str, Any]) -> bool:
            if not condition:
                return True
            when = server_date(event["date"])
            match operator:
                case "greaterThan":
                    return when > bounds[0]
                case "greaterThanOrEqual":
                    return when >= bounds[0]
                case "lessThan":
                    return when < bounds[0]
                case "lessThanOrEqual":
                    return when <= bounds[0]
            return bounds[0] <= when <= bounds[1]  # between

        found = [
            event
            for event in self.store.tracking
            if event["object"] == object_type and event["mid"] in mids and matches(event)
        ]
        return sorted(found, key=lambda event: server_date(event["date"]))

    def _tracking_page(
        self,
        answer: etree._Element,
        object_type: str,
        found: list[dict[str, Any]],
        properties: list[str],
    ) -> etree._Element:
        """One answer's worth of `found`; the rest kept for a ContinueRequest."""
        size = max(1, int(self.account.page_size))
        page, rest = found[:size], found[size:]
        request_id = str(uuid.uuid4())
        partner(answer, "OverallStatus", "MoreDataAvailable" if rest else "OK")
        partner(answer, "RequestID", request_id)
        for event in page:
            tracking_result(answer, event, properties)
        if rest:
            self.store.keep_continuation(request_id, object_type, rest, properties)
        return answer

    def _update(self, operation: etree._Element, token_mid: str) -> etree._Element:
        if local_name(operation.tag) != "UpdateRequest":
            raise SoapFault("Client", "UpdateRequest is required")
        answer = etree.Element(q(PARTNER_API, "UpdateResponse"), nsmap={None: PARTNER_API})
        accessible = self._accessible(token_mid)
        outcomes = []
        for ordinal, item in enumerate(operation.findall(q(PARTNER_API, "Objects"))):
            result = partner(answer, "Results")
            mid = text_of(item.find(f"{q(PARTNER_API, 'Client')}/{q(PARTNER_API, 'ID')}"))
            mid = mid or token_mid
            key = text_of(item.find(q(PARTNER_API, "SubscriberKey")))
            wanted = text_of(item.find(q(PARTNER_API, "Status")))
            record = self.store.records.get((mid, key))
            if xsi_type(item) != "Subscriber":
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
                self.store.write(mid, key, wanted, None)
            outcomes.append(not problem)
            partner(result, "StatusCode", "Error" if problem else "OK")
            partner(result, "StatusMessage", problem or "Updated Subscriber.")
            partner(result, "OrdinalID", str(ordinal))
            if problem:
                partner(result, "ErrorCode", "12000")
            obj = partner(result, "Object")
            obj.set(q(XSI, "type"), "Subscriber")
            client = partner(obj, "Client")
            partner(client, "ID", mid)
            partner(obj, "SubscriberKey", key)
            if not problem:
                partner(obj, "Status", wanted)
        partner(answer, "RequestID", str(uuid.uuid4()))
        if not outcomes:
            overall = "Error: no Objects to update"
        elif all(outcomes):
            overall = "OK"
        else:
            overall = "Has Errors" if any(outcomes) else "Error"
        partner(answer, "OverallStatus", overall)
        return answer
