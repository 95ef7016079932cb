"""The Marketing Cloud lookup after a re-enrolment, with real processes (issue 5, point 3).

Real Celery workers and beat on a private Redis, the Marketing Cloud stand-in over HTTPS,
the test database. Marketing Cloud fails in turn with 5xx, timeouts and expired tokens, a
worker is killed mid-lookup and broker messages are lost; every re-enrolment must still be
looked up, and each business unit that needs it must get exactly one request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db.models import F

from audit.models import AuditAction, AuditEntry
from integrations.marketing_cloud import sync as marketing_cloud_sync
from preferences.models import (
    Contact,
    ContactSync,
    ResubscribeRequest,
    ResubscribeState,
    SubscriberStatus,
    SyncStatus,
)
from preferences.services import apply_change
from standins.marketing_cloud import MarketingCloudStandIn
from tests import factories
from tests.reliability.conftest import CeleryProcesses, wait_for

PARENT, ALUMNI, ATHLETICS = "510000001", "510000002", "510000003"
MC = marketing_cloud_sync.TARGET
# Per contact, by i % 4: the statuses in Marketing Cloud, and the requests they need.
SHAPES: list[dict[str, str]] = [
    {PARENT: "Active", ALUMNI: "Held"},  # active in the parent, held in a child
    {PARENT: "Bounced"},
    {PARENT: "Active", ALUMNI: "Active", ATHLETICS: "Active"},
    {ATHLETICS: "Unsubscribed"},
]
NEEDS = {"Held", "Bounced", "Unsubscribed"}


def _worker_env(server: MarketingCloudStandIn) -> dict[str, str]:
    return {
        "MARKETING_CLOUD_ENABLED": "true",
        "MARKETING_CLOUD_AUTH_URL": server.url,
        "MARKETING_CLOUD_CLIENT_ID": server.client_id,
        "MARKETING_CLOUD_CLIENT_SECRET": server.client_secret,
        "MARKETING_CLOUD_ACCOUNT_ID": server.parent_mid,
        "MARKETING_CLOUD_CA_BUNDLE": server.ca_path,
        "MARKETING_CLOUD_TIMEOUT": "1",  # the timeout fault holds a call for 2 s
        "MARKETING_CLOUD_CONNECT_TIMEOUT": "2",
        # These contacts are not in the Salesforce stand-in; this test is about Marketing Cloud.
        "SALESFORCE_ENABLED": "false",
    }


def _contacts(server: MarketingCloudStandIn, count: int) -> tuple[list[Contact], set[Any]]:
    """Contacts with their Marketing Cloud statuses set, and the requests they need."""
    contacts = [factories.make_contact() for _ in range(count)]
    expected = set()
    for i, contact in enumerate(contacts):
        for mid, status in SHAPES[i % len(SHAPES)].items():
            server.set_subscriber(contact.salesforce_id, status, mid=mid)
            if status in NEEDS:
                expected.add((contact.pk, mid, status.lower()))
    return contacts, expected


def _re_enrol_all(contacts: list[Contact], actor: Any) -> None:
    for contact in contacts:
        apply_change(
            contact=contact, actor=actor, source="staff", note="Stop.", opt_out={"email": True}
        )
        apply_change(
            contact=contact,
            actor=actor,
            source="staff",
            note="Called back: email again, please.",
            opt_out={"email": False},
            consent=factories.consent(),
        )


def _behind(contacts: list[Contact]) -> list[str]:
    rows = ContactSync.objects.filter(target=MC, contact__in=contacts).exclude(
        status=SyncStatus.SYNCED, synced_version=F("contact__version")
    )
    return [f"{r.contact_id}: {r.status} ({r.last_error or 'no error'})" for r in rows]


def _wait_until_checked(contacts: list[Contact], timeout: float, also: Callable[[], None]) -> None:
    def done() -> bool:
        also()
        return not _behind(contacts)

    wait_for(
        done, timeout, lambda: f"every lookup done; behind: {_behind(contacts)[:5]}", interval=0.1
    )


def _assert_exactly_the_requests(contacts: list[Contact], expected: set[Any]) -> None:
    requests = ResubscribeRequest.objects.filter(contact__in=contacts)
    opened = [(r.contact_id, r.business_unit.mid, r.status_seen) for r in requests]
    assert len(opened) == len(set(opened)), "a request was opened twice"
    assert set(opened) == expected
    assert all(r.state == ResubscribeState.OPEN for r in requests)
    entries = AuditEntry.objects.filter(
        action=AuditAction.RESUBSCRIBE_REQUEST, contact__in=contacts
    )
    assert entries.count() == len(expected)
    # Every business unit was read and recorded for every contact.
    assert SubscriberStatus.objects.filter(contact__in=contacts).count() == 3 * len(contacts)
    assert not AuditEntry.objects.filter(action=AuditAction.SYNC_FAILED).exists()


def test_timeouts_5xx_and_expired_tokens_delay_lookups_and_each_request_opens_once(
    celery: CeleryProcesses,
    marketing_cloud: MarketingCloudStandIn,
    specialist: Any,
) -> None:
    factories.make_business_units()
    contacts, expected = _contacts(marketing_cloud, 24)
    env = _worker_env(marketing_cloud)
    marketing_cloud.fail("http_503")
    celery.worker(concurrency=2, wait=False, **env)
    celery.beat(wait=False, **env)
    celery.wait_ready()

    _re_enrol_all(contacts, specialist)

    # One kind of failure after the other; each lasts until the database shows that lookups
    # were deferred because of it (and so retried later).
    errors: set[str] = set()

    def note_errors() -> None:
        for error in ContactSync.objects.filter(target=MC, contact__in=contacts).values_list(
            "last_error", flat=True
        ):
            if error:
                errors.add(error.split(":")[0])

    def wait_for_error(code: str) -> None:
        def seen() -> bool:
            note_errors()
            return code in errors

        wait_for(seen, 40, lambda: f"a lookup deferred by {code}; saw {errors}")

    wait_for_error("HTTP_503")
    marketing_cloud.clear_faults()
    marketing_cloud.fail("timeout", seconds=2)
    wait_for_error("TIMEOUT")
    marketing_cloud.clear_faults()
    marketing_cloud.fail("expire_tokens")
    wait_for_error("LOGIN_FAILED")
    assert ResubscribeRequest.objects.filter(contact__in=contacts).count() < len(expected)
    marketing_cloud.clear_faults()  # Marketing Cloud heals

    _wait_until_checked(contacts, 90, note_errors)

    assert {"HTTP_503", "TIMEOUT", "LOGIN_FAILED"} <= errors
    _assert_exactly_the_requests(contacts, expected)
    assert all(
        row.attempts == 0 and row.last_error == ""
        for row in ContactSync.objects.filter(target=MC, contact__in=contacts)
    )


def test_lost_messages_and_a_killed_worker_lose_no_re_enrolment_and_open_no_duplicate(
    celery: CeleryProcesses,
    marketing_cloud: MarketingCloudStandIn,
    specialist: Any,
) -> None:
    factories.make_business_units()
    contacts, expected = _contacts(marketing_cloud, 16)
    env = _worker_env(marketing_cloud)

    # The broker is down while the specialists re-enrol: every "look up" message is lost.
    celery.redis.stop()
    started = time.monotonic()
    _re_enrol_all(contacts, specialist)
    assert time.monotonic() - started < 60
    assert len(_behind(contacts)) == len(contacts)
    celery.redis.start()

    # Slow lookups, so the worker is killed while it holds claimed rows.
    marketing_cloud.fail("latency", seconds=0.4, action="Retrieve")
    worker = celery.worker(concurrency=2, wait=False, **env)
    celery.beat(wait=False, **env)  # the sweeper finds what the lost messages left behind
    celery.wait_ready()
    wait_for(
        lambda: ResubscribeRequest.objects.filter(contact__in=contacts).exists(),
        60,
        "the first request",
    )
    worker.kill()
    assert _behind(contacts), "the worker finished before it could be killed"
    marketing_cloud.clear_faults()
    celery.worker(
        concurrency=2, wait=True, **env
    )  # takes the dead worker's rows once their lease ends

    _wait_until_checked(contacts, 90, lambda: None)

    _assert_exactly_the_requests(contacts, expected)
