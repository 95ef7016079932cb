"""The endpoints email platforms post events to (docs/design.md, "Events from email
platforms"): Marketing Cloud's Event Notification Service callback, and a signed webhook for
the other platforms.

Machine endpoints: no session and no CSRF token; the signature is the authentication. Each
checks the size, then the signature over the raw body, then parses the whole batch; a
refusal is logged with its reason and stores nothing. A valid batch is stored through
``intake.receive`` (a duplicate is recognised there) and answered with what was stored; a
worker applies it.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import validate_email
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from integrations.base import ConnectorError
from integrations.marketing_cloud.client import MarketingCloudClient
from preferences.events import intake, signatures
from preferences.events.intake import ParsedEvent
from preferences.models import EventKind

logger = logging.getLogger(__name__)

MARKETING_CLOUD = "marketing_cloud"
MAX_EVENTS = 1000
# The handshake's body is two short strings: an unsigned body longer than this is not one.
MAX_HANDSHAKE_BYTES = 2048
MAX_DEPTH = 32
ENS_UNSUBSCRIBE = "EngagementEvents.EmailUnsubscribe"
ENS_BOUNCED = "TransactionalSendEvents.EmailBounced"
# Words in a bounce's category or type that mean the address may still work later.
_SOFT_WORDS = ("soft", "block", "transient")
_BOUNCE_FIELDS = ("bounceCategory", "bounceCategoryType", "bounceType", "bounceSubtype")
# An unsubscribe from one business unit only (UnsubscribeBehaviorEnum's BUSINESS_UNIT_ONLY).
_UNSUBSCRIBE_SCOPE_FIELDS = ("unsubscribeBehavior", "unsubscribeScope")
_BUSINESS_UNIT_ONLY = "business_unit_only"
# A clock a little ahead of ours is not an attack.
_CLOCK_SKEW = timedelta(minutes=5)


class Refused(Exception):
    """The request is refused with this HTTP status; the message is logged, not sent."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _refusal(request: HttpRequest, endpoint: str, refused: Refused) -> HttpResponse:
    logger.warning(
        "Refused %s from %s (HTTP %s): %s",
        endpoint,
        request.META.get("REMOTE_ADDR", "?"),
        refused.status,
        refused,
    )
    return JsonResponse({"error": _ERRORS.get(refused.status, "refused")}, status=refused.status)


_ERRORS = {
    400: "malformed request",
    401: "not authenticated",
    404: "not found",
    413: "request too large",
}


def _raw_body(request: HttpRequest) -> bytes:
    limit = settings.EVENT_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Refused(400, "unreadable Content-Length") from None
    if declared > limit:
        raise Refused(413, f"body of {declared} bytes is over {limit}")
    body = request.body
    if len(body) > limit:
        raise Refused(413, f"body of {len(body)} bytes is over {limit}")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def _check_storable(value: Any, depth: int = 0) -> None:
    """What PostgreSQL cannot store (a NUL, a lone surrogate) or a nesting too deep."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a string holds a NUL character")
        value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError (a ValueError)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, depth + 1)
            _check_storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, depth + 1)


def _parse_json(body: bytes) -> Any:
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite)
        _check_storable(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Refused(400, f"not valid JSON ({str(exc)[:100]})") from None
    return data


def _text(
    event: dict[str, Any], name: str, *, required: bool = False, max_length: int = 254
) -> str:
    value = event.get(name)
    if value is None or value == "":
        if required:
            raise Refused(400, f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise Refused(400, f"{name} must be a string")
    value = value.strip()
    if len(value) > max_length or (required and not value):
        raise Refused(400, f"{name} must be 1 to {max_length} characters")
    return value


def _email(value: str, name: str) -> str:
    if not value:
        return ""
    try:
        validate_email(value)
    except ValidationError:
        raise Refused(400, f"{name} is not an email address") from None
    return value


def _events(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise Refused(400, f"{name} must be a list of events")
    if len(data) > MAX_EVENTS:
        raise Refused(413, f"{len(data)} events; at most {MAX_EVENTS} at a time")
    for number, event in enumerate(data):
        if not isinstance(event, dict):
            raise Refused(400, f"event {number} is not an object")
    return data


def _store(platform: str, channel: str, events: list[ParsedEvent]) -> HttpResponse:
    stored, known = intake.receive(platform, channel, events)
    logger.info(
        "Received %s events from %s (%s stored, %s duplicates)",
        len(events),
        platform,
        stored,
        known,
    )
    return JsonResponse({"stored": stored, "duplicates": known})


# --- Marketing Cloud's Event Notification Service -------------------------------------------


@csrf_exempt
@require_POST
def marketing_cloud_ens(request: HttpRequest) -> HttpResponse:
    """ENS's callback: a signed JSON array of events, or the unsigned one-time verification
    that completes the callback's registration."""
    key = settings.MARKETING_CLOUD_ENS_SIGNATURE_KEY
    if not key:
        raise Http404("The Marketing Cloud ENS callback is not configured.")
    try:
        body = _raw_body(request)
        signature = request.headers.get(signatures.ENS_HEADER)
        if signature is None:
            return _ens_verification(body)
        if not signatures.ens_signature_valid(key, body, signature):
            raise Refused(401, "the x-sfmc-ens-signature does not match the body")
        data = _parse_json(body)
        if isinstance(data, dict) and "verificationKey" in data:
            return _ens_verification(body)
        events = _ens_events(_events(data, "the body"))
    except Refused as refused:
        return _refusal(request, "a Marketing Cloud ENS callback", refused)
    return _store(MARKETING_CLOUD, "ens", events)


def _ens_verification(body: bytes) -> HttpResponse:
    """ENS posts ``{"callbackId", "verificationKey"}`` once, unsigned, when the callback is
    created; the app sends it back to Marketing Cloud's ens-verify route. Only the configured
    callback is verified. Without one configured, the details are logged so that someone can
    verify it by hand."""
    if len(body) > MAX_HANDSHAKE_BYTES:
        raise Refused(401, "no x-sfmc-ens-signature, and not a callback verification")
    data = _parse_json(body)
    if not isinstance(data, dict) or set(data) != {"callbackId", "verificationKey"}:
        raise Refused(401, "no x-sfmc-ens-signature, and not a callback verification")
    callback_id = _text(data, "callbackId", required=True, max_length=200)
    verification_key = _text(data, "verificationKey", required=True, max_length=1000)
    expected = settings.MARKETING_CLOUD_ENS_CALLBACK_ID
    if not expected:
        logger.warning(
            "MARKETING_CLOUD_ENS_CALLBACK_ID is not set: verify ENS callback %s by hand "
            "(POST /platform/v1/ens-verify) with verificationKey %s",
            callback_id,
            verification_key,
        )
        return JsonResponse({"verified": False})
    if callback_id != expected:
        raise Refused(401, f"a verification for callback {callback_id[:60]!r}, not ours")
    try:
        with MarketingCloudClient() as client:
            client.verify_ens_callback(callback_id, verification_key)
    except (ConnectorError, ImproperlyConfigured) as exc:
        logger.warning(
            "Could not verify ENS callback %s (%s): verify it by hand with verificationKey %s",
            callback_id,
            exc,
            verification_key,
        )
        return JsonResponse({"verified": False})
    logger.info("Verified the Marketing Cloud ENS callback %s", callback_id)
    return JsonResponse({"verified": True})


def _ens_events(raw_events: list[dict[str, Any]]) -> list[ParsedEvent]:
    now = timezone.now()
    oldest = now - timedelta(seconds=settings.EVENT_MAX_AGE_SECONDS)
    parsed = []
    for number, event in enumerate(raw_events):
        category = _text(event, "eventCategoryType", required=True, max_length=200)
        event_id = _text(event, "compositeId", required=True, max_length=200)
        occurred_at = _ens_time(event.get("timestampUTC"), number)
        mid = event.get("mid")
        if isinstance(mid, bool) or not (
            (isinstance(mid, int) and mid > 0) or (isinstance(mid, str) and mid.isdigit())
        ):
            raise Refused(400, f"event {number}: mid must be a business unit's MID")
        info = event.get("info")
        if not isinstance(info, dict):
            raise Refused(400, f"event {number}: info must be an object")
        kind = _ens_kind(category, info)
        if kind is None:
            logger.info("Ignored an ENS %s event (%s): not one the app acts on", category, event_id)
            continue
        if occurred_at < oldest or occurred_at > now + _CLOCK_SKEW:
            logger.warning(
                "Skipped ENS event %s from %s: outside the %s seconds it may be received in",
                event_id,
                occurred_at.isoformat(),
                settings.EVENT_MAX_AGE_SECONDS,
            )
            continue
        subscriber_key = _text(info, "subscriberKey") or _text(info, "contactKey")
        email = _email(_text(info, "to") or _text(info, "emailAddress"), "info.to")
        if not subscriber_key and not email:
            raise Refused(400, f"event {number}: info names no subscriber key or address")
        reason = ""
        if kind in (EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE):
            details = (info.get(name) for name in ("bounceCode", "bounceMessage", "smtpReason"))
            reason = " ".join(
                str(detail).strip()[:500]
                for detail in details
                if isinstance(detail, str | int) and not isinstance(detail, bool) and detail != ""
            )
        parsed.append(
            ParsedEvent(
                event_id=event_id,
                kind=kind,
                occurred_at=occurred_at,
                subscriber_key=subscriber_key,
                email=email,
                scope=f"business_unit:{mid}" if kind == EventKind.SENDER_OPT_OUT else "",
                reason=reason,
                payload=event,
            )
        )
    return parsed


def _ens_time(value: Any, number: int) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(400, f"event {number}: timestampUTC must be milliseconds since 1970")
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise Refused(400, f"event {number}: timestampUTC is out of range") from None


def _ens_kind(category: str, info: dict[str, Any]) -> str | None:
    if category == ENS_UNSUBSCRIBE:
        scope = next((str(info[name]) for name in _UNSUBSCRIBE_SCOPE_FIELDS if name in info), "")
        if scope.lower() == _BUSINESS_UNIT_ONLY:
            return EventKind.SENDER_OPT_OUT
        return EventKind.UNSUBSCRIBE
    if category == ENS_BOUNCED:
        described = " ".join(
            str(info[name]).lower() for name in _BOUNCE_FIELDS if isinstance(info.get(name), str)
        )
        soft = any(word in described for word in _SOFT_WORDS)
        return EventKind.SOFT_BOUNCE if soft else EventKind.HARD_BOUNCE
    return None


# --- the signed webhook ---------------------------------------------------------------------


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, platform: str) -> HttpResponse:
    """``{"events": [...]}`` from a platform named in EVENT_WEBHOOK_SECRETS, signed with its
    secret over the timestamp and the body."""
    secret = settings.EVENT_WEBHOOK_SECRETS.get(platform)
    if not secret:
        raise Http404("No such webhook.")
    try:
        body = _raw_body(request)
        timestamp = request.headers.get(signatures.WEBHOOK_TIMESTAMP_HEADER)
        signature = request.headers.get(signatures.WEBHOOK_SIGNATURE_HEADER)
        if not signatures.webhook_signature_valid(secret, timestamp, body, signature):
            raise Refused(401, "the X-PD-Signature does not match the timestamp and body")
        sent = int(str(timestamp))
        window = settings.EVENT_REPLAY_SECONDS
        if abs(timezone.now().timestamp() - sent) > window:
            raise Refused(401, f"X-PD-Timestamp {sent} is more than {window} seconds away")
        data = _parse_json(body)
        if not isinstance(data, dict) or "events" not in data:
            raise Refused(400, 'the body must be {"events": [...]}')
        events = [
            _webhook_event(event, number)
            for number, event in enumerate(_events(data["events"], "events"))
        ]
    except Refused as refused:
        return _refusal(request, f"a {platform} webhook", refused)
    return _store(platform, "webhook", events)


_WEBHOOK_KINDS: dict[str, str] = {kind.value: kind.value for kind in EventKind}


def _webhook_event(event: dict[str, Any], number: int) -> ParsedEvent:
    def field(name: str, **options: Any) -> str:
        try:
            return _text(event, name, **options)
        except Refused as refused:
            raise Refused(refused.status, f"event {number}: {refused}") from None

    event_id = field("id", required=True, max_length=200)
    kind = _WEBHOOK_KINDS.get(field("type", required=True, max_length=40))
    if kind is None:
        raise Refused(400, f"event {number}: type must be one of {', '.join(_WEBHOOK_KINDS)}")
    email = _email(field("email", required=True), f"event {number}: email")
    scope = ""
    if kind == EventKind.SENDER_OPT_OUT:
        scope = "send_account:" + field("send_account", required=True, max_length=100)
    occurred_at = _iso_time(field("occurred_at", required=True, max_length=64), number)
    if occurred_at > timezone.now() + _CLOCK_SKEW:
        raise Refused(400, f"event {number}: occurred_at is in the future")
    return ParsedEvent(
        event_id=event_id,
        kind=kind,
        occurred_at=occurred_at,
        subscriber_key=field("subscriber_key"),
        email=email,
        scope=scope,
        reason=field("reason", max_length=2000),
        payload=event,
    )


def _iso_time(value: str, number: int) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise Refused(400, f"event {number}: occurred_at needs a time zone")
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise Refused(400, f"event {number}: occurred_at is not an ISO 8601 time") from None
