"""The endpoints email platforms post events to: Marketing Cloud's ENS callback and the signed
webhook (docs/design.md, "Events from email platforms"). A refused request stores nothing and
changes no one; a valid one is stored once and applied once."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEntry
from preferences.events import intake
from preferences.events.signatures import sign_ens, sign_webhook
from preferences.models import Contact, EventKind, PlatformEvent, SenderSuppression
from preferences.services import current_state

pytestmark = pytest.mark.django_db

ENS_KEY = "ens-signature-key"
CALLBACK_ID = "9d1b3f2e-callback"
SECRET = "concep-secret"
ENS_URL = "/events/marketing-cloud/ens/"
WEBHOOK_URL = "/events/webhook/concep/"
UNSUBSCRIBE = "EngagementEvents.EmailUnsubscribe"
BOUNCED = "TransactionalSendEvents.EmailBounced"


@pytest.fixture(autouse=True)
def _endpoints(settings: Any) -> None:
    settings.MARKETING_CLOUD_ENS_SIGNATURE_KEY = ENS_KEY
    settings.MARKETING_CLOUD_ENS_CALLBACK_ID = CALLBACK_ID
    settings.EVENT_WEBHOOK_SECRETS = {"concep": SECRET}
    settings.EVENT_REPLAY_SECONDS = 300
    settings.EVENT_MAX_AGE_SECONDS = 3 * 24 * 3600


def ens_event(contact: Contact, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventCategoryType": UNSUBSCRIBE,
        "timestampUTC": int(time.time() * 1000),
        "compositeId": "5A1B.2.3.4",
        "mid": 510000002,
        "eid": 510000001,
        "info": {"subscriberKey": contact.salesforce_id, "to": contact.email},
    }
    event.update(overrides)
    return event


def post_ens(client: Any, body: bytes, *, key: str = ENS_KEY, signature: str | None = None):
    headers = {"x-sfmc-ens-signature": signature if signature is not None else sign_ens(key, body)}
    return client.post(ENS_URL, data=body, content_type="application/json", headers=headers)


def webhook_event(contact: Contact, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "evt-1",
        "type": "spam_report",
        "email": contact.email,
        "subscriber_key": contact.salesforce_id,
        "occurred_at": timezone.now().isoformat(),
        "reason": "Marked as spam in Outlook.",
    }
    event.update(overrides)
    return event


def post_webhook(
    client: Any,
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
    url: str = WEBHOOK_URL,
):
    sent = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "X-PD-Timestamp": sent,
        "X-PD-Signature": signature if signature is not None else sign_webhook(secret, sent, body),
    }
    return client.post(url, data=body, content_type="application/json", headers=headers)


def encode(data: Any) -> bytes:
    return json.dumps(data).encode()


def assert_nothing_changed(contact: Contact) -> None:
    assert PlatformEvent.objects.count() == 0
    assert not current_state(contact).opted_out.get("email")
    assert not AuditEntry.objects.filter(contact=contact, source="email_platform").exists()


# --- the ENS callback -------------------------------------------------------------------------


def test_a_signed_ens_unsubscribe_is_stored_and_applied(client, contact, caplog):
    body = encode([ens_event(contact)])

    response = post_ens(client, body)

    assert response.status_code == 200
    assert response.json() == {"stored": 1, "duplicates": 0}
    event = PlatformEvent.objects.get()
    assert (event.platform, event.channel, event.event_id, event.kind) == (
        "marketing_cloud",
        "ens",
        "5A1B.2.3.4",
        EventKind.UNSUBSCRIBE,
    )
    assert (event.subscriber_key, event.email) == (contact.salesforce_id, contact.email)
    assert intake.apply_pending() == 1
    assert current_state(contact).opted_out["email"]
    assert AuditEntry.objects.filter(contact=contact, source="email_platform").count() == 1


def test_the_same_ens_event_twice_is_stored_once_and_applied_once(client, contact):
    body = encode([ens_event(contact)])

    first, second = post_ens(client, body), post_ens(client, body)
    intake.apply_pending()
    intake.apply_pending()

    assert first.json() == {"stored": 1, "duplicates": 0}
    assert second.status_code == 200 and second.json() == {"stored": 0, "duplicates": 1}
    assert PlatformEvent.objects.count() == 1
    assert current_state(contact).opted_out["email"]
    assert AuditEntry.objects.filter(contact=contact, source="email_platform").count() == 1


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        ({"bounceCategory": "Hard bounce", "bounceCode": "5.1.1"}, EventKind.HARD_BOUNCE),
        ({"bounceCategory": "Soft bounce", "bounceCode": "4.2.2"}, EventKind.SOFT_BOUNCE),
        ({"bounceCategory": "Block bounce"}, EventKind.SOFT_BOUNCE),
        ({"bounceType": "Transient"}, EventKind.SOFT_BOUNCE),
        ({"bounceMessage": "User unknown"}, EventKind.HARD_BOUNCE),
    ],
)
def test_an_ens_bounce_is_hard_or_soft_by_its_category(client, contact, info, kind):
    info = {"subscriberKey": contact.salesforce_id, "to": contact.email, **info}
    body = encode([ens_event(contact, eventCategoryType=BOUNCED, info=info)])

    assert post_ens(client, body).status_code == 200

    assert PlatformEvent.objects.get().kind == kind


def test_an_unsubscribe_from_one_business_unit_is_a_sender_opt_out(client, contact):
    info = {"subscriberKey": contact.salesforce_id, "unsubscribeBehavior": "BUSINESS_UNIT_ONLY"}
    body = encode([ens_event(contact, info=info)])

    assert post_ens(client, body).status_code == 200
    intake.apply_pending()

    event = PlatformEvent.objects.get()
    assert (event.kind, event.scope) == (EventKind.SENDER_OPT_OUT, "business_unit:510000002")
    assert SenderSuppression.objects.filter(contact=contact, scope=event.scope).exists()
    assert not current_state(contact).opted_out.get("email")


def test_ens_events_the_app_does_not_act_on_are_acknowledged_and_ignored(client, contact):
    body = encode([ens_event(contact, eventCategoryType="EngagementEvents.EmailOpen")])

    response = post_ens(client, body)

    assert response.status_code == 200 and response.json() == {"stored": 0, "duplicates": 0}
    assert_nothing_changed(contact)


def test_an_ens_callback_with_the_wrong_signature_is_refused(client, contact, caplog):
    body = encode([ens_event(contact)])
    other = encode([ens_event(contact, compositeId="other")])

    with caplog.at_level(logging.WARNING, logger="preferences.events.views"):
        response = post_ens(client, body, signature=sign_ens(ENS_KEY, other))

    assert response.status_code == 401
    assert "x-sfmc-ens-signature does not match" in caplog.text
    assert_nothing_changed(contact)


@pytest.mark.parametrize("signature", ["", "not base64!", "c2hvcnQ="])
def test_an_ens_callback_with_a_malformed_signature_is_refused(client, contact, signature):
    response = post_ens(client, encode([ens_event(contact)]), signature=signature)

    assert response.status_code == 401
    assert_nothing_changed(contact)


def test_an_ens_callback_signed_with_another_key_is_refused(client, contact):
    response = post_ens(client, encode([ens_event(contact)]), key="someone-elses-key")

    assert response.status_code == 401
    assert_nothing_changed(contact)


def test_an_unsigned_ens_callback_that_is_no_verification_is_refused(client, contact):
    body = encode([ens_event(contact)])

    response = client.post(ENS_URL, data=body, content_type="application/json")

    assert response.status_code == 401
    assert_nothing_changed(contact)


def test_a_truncated_ens_body_is_refused_even_when_signed(client, contact):
    body = encode([ens_event(contact)])[:-7]

    response = post_ens(client, body)

    assert response.status_code == 400
    assert_nothing_changed(contact)


@pytest.mark.parametrize(
    "change",
    [
        {"timestampUTC": "yesterday"},
        {"timestampUTC": 10**30},
        {"compositeId": ""},
        {"compositeId": 12},
        {"mid": "BU"},
        {"info": "alice@example.edu"},
        {"info": {"to": "not an address"}},
        {"info": {}},
        {"eventCategoryType": None},
    ],
)
def test_a_malformed_ens_event_refuses_the_whole_batch(client, contact, change):
    good = ens_event(contact, compositeId="good")
    body = encode([good, ens_event(contact, **change)])

    response = post_ens(client, body)

    assert response.status_code == 400
    assert_nothing_changed(contact)


def test_an_ens_event_older_than_the_window_is_skipped_and_logged(client, contact, caplog):
    four_days_ago = int((time.time() - 4 * 24 * 3600) * 1000)
    body = encode([ens_event(contact, timestampUTC=four_days_ago)])

    with caplog.at_level(logging.WARNING, logger="preferences.events.views"):
        response = post_ens(client, body)

    assert response.status_code == 200 and response.json() == {"stored": 0, "duplicates": 0}
    assert "Skipped ENS event 5A1B.2.3.4" in caplog.text
    assert_nothing_changed(contact)


def test_the_ens_callback_is_off_without_a_signature_key(client, contact, settings):
    settings.MARKETING_CLOUD_ENS_SIGNATURE_KEY = ""

    response = post_ens(client, encode([ens_event(contact)]), key="anything")

    assert response.status_code == 404
    assert_nothing_changed(contact)


def test_the_endpoints_take_post_only(client):
    assert client.get(ENS_URL).status_code == 405
    assert client.get(WEBHOOK_URL).status_code == 405
    assert client.put(WEBHOOK_URL).status_code == 405


def test_a_body_over_the_limit_is_refused(client, contact, settings):
    settings.EVENT_MAX_BODY_BYTES = 1000
    body = encode([ens_event(contact, info={"to": contact.email, "pad": "x" * 2000})])

    assert post_ens(client, body).status_code == 413
    assert post_webhook(client, body).status_code == 413
    assert_nothing_changed(contact)


def test_the_url_names_resolve():
    assert reverse("events:marketing_cloud_ens") == ENS_URL
    assert reverse("events:webhook", kwargs={"platform": "concep"}) == WEBHOOK_URL


# --- the verification handshake ---------------------------------------------------------------


@pytest.fixture
def verify_through_standin(marketing_cloud: Any) -> Any:
    return marketing_cloud


def test_the_verification_handshake_is_sent_back_to_marketing_cloud(client, verify_through_standin):
    body = encode({"callbackId": CALLBACK_ID, "verificationKey": "one-time-key"})

    response = client.post(ENS_URL, data=body, content_type="application/json")

    assert response.status_code == 200 and response.json() == {"verified": True}
    assert verify_through_standin.ens_verifications == [
        {
            "callbackId": CALLBACK_ID,
            "verificationKey": "one-time-key",
            "mid": verify_through_standin.parent_mid,
        }
    ]
    assert PlatformEvent.objects.count() == 0


def test_a_verification_for_another_callback_is_refused(client, verify_through_standin):
    body = encode({"callbackId": "someone-elses", "verificationKey": "one-time-key"})

    response = client.post(ENS_URL, data=body, content_type="application/json")

    assert response.status_code == 401
    assert verify_through_standin.ens_verifications == []


def test_a_verification_marketing_cloud_refuses_is_logged_for_doing_by_hand(
    client, verify_through_standin, caplog
):
    verify_through_standin.fail("http_503", times=1, path_contains="/platform/v1/ens-verify")
    body = encode({"callbackId": CALLBACK_ID, "verificationKey": "one-time-key"})

    with caplog.at_level(logging.WARNING, logger="preferences.events.views"):
        response = client.post(ENS_URL, data=body, content_type="application/json")

    assert response.status_code == 200 and response.json() == {"verified": False}
    assert "verify it by hand with verificationKey one-time-key" in caplog.text
    assert verify_through_standin.ens_verifications == []


# --- the signed webhook -----------------------------------------------------------------------


def test_a_signed_webhook_spam_report_is_stored_and_applied(client, contact):
    body = encode({"events": [webhook_event(contact)]})

    response = post_webhook(client, body)

    assert response.status_code == 200 and response.json() == {"stored": 1, "duplicates": 0}
    event = PlatformEvent.objects.get()
    assert (event.platform, event.channel, event.event_id, event.kind) == (
        "concep",
        "webhook",
        "evt-1",
        EventKind.SPAM_REPORT,
    )
    assert event.reason == "Marked as spam in Outlook."
    intake.apply_pending()
    contact.refresh_from_db()
    assert current_state(contact).opted_out["email"]
    assert contact.spam_reported_at is not None


def test_the_same_webhook_event_twice_is_stored_once_and_applied_once(client, contact):
    body = encode({"events": [webhook_event(contact, type="client_opt_out")]})

    first, second = post_webhook(client, body), post_webhook(client, body)
    intake.apply_pending()
    intake.apply_pending()

    assert first.json() == {"stored": 1, "duplicates": 0}
    assert second.json() == {"stored": 0, "duplicates": 1}
    assert PlatformEvent.objects.count() == 1
    assert AuditEntry.objects.filter(contact=contact, source="email_platform").count() == 1


def test_a_send_account_opt_out_is_scoped_to_the_send_account(client, contact):
    event = webhook_event(contact, type="sender_opt_out", send_account="alumni-office")
    assert post_webhook(client, encode({"events": [event]})).status_code == 200

    assert PlatformEvent.objects.get().scope == "send_account:alumni-office"


def test_a_webhook_with_the_wrong_signature_is_refused(client, contact, caplog):
    body = encode({"events": [webhook_event(contact)]})
    sent = str(int(time.time()))

    with caplog.at_level(logging.WARNING, logger="preferences.events.views"):
        response = post_webhook(
            client, body, timestamp=int(sent), signature=sign_webhook(SECRET, sent, body + b" ")
        )

    assert response.status_code == 401
    assert "X-PD-Signature does not match" in caplog.text
    assert_nothing_changed(contact)


def test_a_webhook_signed_with_another_secret_is_refused(client, contact):
    response = post_webhook(client, encode({"events": [webhook_event(contact)]}), secret="guess")

    assert response.status_code == 401
    assert_nothing_changed(contact)


def test_a_webhook_without_a_signature_is_refused(client, contact):
    body = encode({"events": [webhook_event(contact)]})

    response = client.post(WEBHOOK_URL, data=body, content_type="application/json")

    assert response.status_code == 401
    assert_nothing_changed(contact)


def test_a_replayed_webhook_with_an_old_timestamp_is_refused(client, contact, caplog):
    body = encode({"events": [webhook_event(contact)]})
    ten_minutes_ago = int(time.time()) - 600

    with caplog.at_level(logging.WARNING, logger="preferences.events.views"):
        response = post_webhook(client, body, timestamp=ten_minutes_ago)

    assert response.status_code == 401
    assert "more than 300 seconds away" in caplog.text
    assert_nothing_changed(contact)


def test_a_webhook_for_an_unknown_platform_is_not_found(client, contact):
    body = encode({"events": [webhook_event(contact)]})

    response = post_webhook(client, body, url="/events/webhook/lead-liaison/")

    assert response.status_code == 404
    assert_nothing_changed(contact)


def test_a_truncated_webhook_body_is_refused_even_when_signed(client, contact):
    body = encode({"events": [webhook_event(contact)]})[:-3]

    assert post_webhook(client, body).status_code == 400
    assert_nothing_changed(contact)


@pytest.mark.parametrize(
    "change",
    [
        {"type": "complaint"},
        {"type": None},
        {"email": "not an address"},
        {"email": ""},
        {"id": ""},
        {"id": 7},
        {"occurred_at": "yesterday"},
        {"occurred_at": "2026-01-01T10:00:00"},  # no time zone
        {"occurred_at": (timezone.now() + timedelta(days=1)).isoformat()},
        {"type": "sender_opt_out"},  # without a send account
        {"reason": ["a", "list"]},
        {"subscriber_key": "nul\x00byte"},
    ],
)
def test_a_malformed_webhook_event_refuses_the_whole_batch(client, contact, change):
    body = encode({"events": [webhook_event(contact, id="good"), webhook_event(contact, **change)]})

    response = post_webhook(client, body)

    assert response.status_code == 400
    assert_nothing_changed(contact)


@pytest.mark.parametrize("data", [[], {"event": []}, {"events": {}}, "events", None])
def test_a_webhook_body_of_the_wrong_shape_is_refused(client, contact, data):
    assert post_webhook(client, encode(data)).status_code == 400
    assert_nothing_changed(contact)


def test_more_than_a_thousand_events_at_once_are_refused(client, contact):
    events = [webhook_event(contact, id=f"e{n}") for n in range(1001)]

    assert post_webhook(client, encode({"events": events})).status_code == 413
    assert_nothing_changed(contact)
