"""Arbitrary requests to the event endpoints (docs/design.md, "Events from email platforms"):
whatever the body and headers, never a server error, and nothing is stored unless the
signature is valid."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from preferences.events.signatures import sign_ens, sign_webhook
from preferences.models import EventKind, PlatformEvent

pytestmark = pytest.mark.django_db

ENS_KEY = "ens-signature-key"
SECRET = "fuzz-secret"
ENS_URL = "/events/marketing-cloud/ens/"
WEBHOOK_URL = "/events/webhook/fuzz/"

FUZZ = settings(
    max_examples=200,
    deadline=None,
    # The settings fixture is function-scoped; every example rolls its rows back itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
# Values that are sometimes what the parsers want: ISO times, addresses, known kinds.
plausible = (
    json_values
    | st.sampled_from(
        [
            "alice@example.edu",
            "2026-01-01T10:00:00+00:00",
            "EngagementEvents.EmailUnsubscribe",
            "TransactionalSendEvents.EmailBounced",
            "Soft bounce",
            *EventKind.values,
        ]
    )
    | st.just(int(time.time() * 1000))
)
ens_events = st.fixed_dictionaries(
    {},
    optional={
        "eventCategoryType": plausible,
        "timestampUTC": plausible,
        "compositeId": plausible,
        "mid": plausible,
        "info": st.fixed_dictionaries(
            {},
            optional={
                "subscriberKey": plausible,
                "to": plausible,
                "bounceCategory": plausible,
                "unsubscribeBehavior": plausible,
            },
        )
        | json_values,
    },
)
webhook_events = st.fixed_dictionaries(
    {},
    optional={
        name: plausible
        for name in (
            "id",
            "type",
            "email",
            "subscriber_key",
            "send_account",
            "occurred_at",
            "reason",
        )
    },
)


def _valid_ens(number: int) -> dict[str, Any]:
    return {
        "eventCategoryType": "EngagementEvents.EmailUnsubscribe",
        "timestampUTC": int(time.time() * 1000),
        "compositeId": f"c{number}",
        "mid": 510000002,
        "info": {"subscriberKey": "003000000000001AAA", "to": "alice@example.edu"},
    }


def _valid_webhook(number: int) -> dict[str, Any]:
    return {
        "id": f"e{number}",
        "type": "spam_report",
        "email": "alice@example.edu",
        "occurred_at": "2026-01-01T10:00:00+00:00",
    }


def _nearly(valid: Any) -> Any:
    """Valid events, each with at most one field replaced by what the fuzzer draws."""
    changes = st.dictionaries(st.sampled_from(sorted(valid(0))), plausible, max_size=1)
    return st.lists(st.tuples(st.integers(0, 3), changes), min_size=1, max_size=4).map(
        lambda drawn: [{**valid(number), **change} for number, change in drawn]
    )


def _encoded(data: Any) -> bytes:
    return json.dumps(data).encode()


ens_bodies = (
    st.binary(max_size=600)
    | json_values.map(_encoded)
    | st.lists(ens_events, max_size=5).map(_encoded)
    | _nearly(_valid_ens).map(_encoded)
)
webhook_bodies = (
    st.binary(max_size=600)
    | json_values.map(_encoded)
    | st.lists(webhook_events, max_size=5).map(lambda events: _encoded({"events": events}))
    | _nearly(_valid_webhook).map(lambda events: _encoded({"events": events}))
)
header_values = st.none() | st.text(max_size=80) | st.sampled_from(["", "sha256=", "=="])


@pytest.fixture
def _endpoints(settings: Any) -> None:
    settings.MARKETING_CLOUD_ENS_SIGNATURE_KEY = ENS_KEY
    settings.MARKETING_CLOUD_ENS_CALLBACK_ID = "callback"
    settings.MARKETING_CLOUD_AUTH_URL = ""  # a handshake cannot reach anything
    settings.EVENT_WEBHOOK_SECRETS = {"fuzz": SECRET}


def _post(url: str, body: bytes, headers: dict[str, str]) -> Any:
    return Client().post(url, data=body, content_type="application/json", headers=headers)


@FUZZ
@given(body=ens_bodies, signature=header_values, signed=st.booleans())
def test_the_ens_callback_never_fails_and_stores_only_what_is_signed(
    _endpoints: None, body: bytes, signature: str | None, signed: bool
) -> None:
    headers = {}
    if signed:
        headers["x-sfmc-ens-signature"] = sign_ens(ENS_KEY, body)
    elif signature is not None:
        headers["x-sfmc-ens-signature"] = signature
    with transaction.atomic():
        response = _post(ENS_URL, body, headers)
        stored = PlatformEvent.objects.count()
        transaction.set_rollback(True)

    event(f"HTTP {response.status_code}, {'some' if stored else 'none'} stored")
    assert response.status_code < 500
    assert response.status_code in (200, 400, 401, 413)
    if not signed:
        assert stored == 0
    if response.status_code != 200:
        assert stored == 0


@FUZZ
@given(
    body=webhook_bodies,
    signature=header_values,
    timestamp=header_values,
    signed=st.booleans(),
    skew=st.integers(min_value=-1000, max_value=1000),
)
def test_the_webhook_never_fails_and_stores_only_what_is_signed(
    _endpoints: None,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    signed: bool,
    skew: int,
) -> None:
    headers = {}
    if signed:
        sent = str(int(time.time()) + skew)
        headers = {"X-PD-Timestamp": sent, "X-PD-Signature": sign_webhook(SECRET, sent, body)}
    else:
        if signature is not None:
            headers["X-PD-Signature"] = signature
        if timestamp is not None:
            headers["X-PD-Timestamp"] = timestamp
    with transaction.atomic():
        response = _post(WEBHOOK_URL, body, headers)
        stored = PlatformEvent.objects.count()
        transaction.set_rollback(True)

    event(f"HTTP {response.status_code}, {'some' if stored else 'none'} stored")
    assert response.status_code < 500
    assert response.status_code in (200, 400, 401, 413)
    if not signed or abs(skew) > 300:
        assert stored == 0
    if response.status_code != 200:
        assert stored == 0


@FUZZ
@given(platform=st.from_regex(r"[-a-zA-Z0-9_]{1,30}", fullmatch=True), body=st.binary(max_size=200))
def test_a_webhook_for_any_other_platform_is_not_found(
    _endpoints: None, platform: str, body: bytes
) -> None:
    if platform == "fuzz":
        return
    sent = str(int(time.time()))
    headers = {"X-PD-Timestamp": sent, "X-PD-Signature": sign_webhook(SECRET, sent, body)}
    with transaction.atomic():
        response = _post(f"/events/webhook/{platform}/", body, headers)
        stored = PlatformEvent.objects.count()
        transaction.set_rollback(True)

    assert response.status_code == 404
    assert stored == 0
