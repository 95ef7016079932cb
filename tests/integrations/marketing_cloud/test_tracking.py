"""The pull of Marketing Cloud tracking events (docs/design.md, "Events from email
platforms"), over real HTTPS against the stand-in, down to what the app holds once the
stored events are applied."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from integrations.marketing_cloud import tasks, tracking
from integrations.marketing_cloud.client import forget_tokens
from preferences.events import intake
from preferences.models import (
    BusinessUnit,
    ChannelPreference,
    EventKind,
    EventState,
    PlatformEvent,
    SenderSuppression,
    SyncWatermark,
)
from preferences.services import current_state
from standins.marketing_cloud import (
    CHILD_MIDS,
    PARENT_MID,
    MarketingCloudStandIn,
    running_standin,
)
from tests import factories

ALUMNI, ATHLETICS = CHILD_MIDS

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_cached_tokens() -> Iterator[None]:
    forget_tokens()
    yield
    forget_tokens()


@pytest.fixture
def standin() -> Iterator[MarketingCloudStandIn]:
    with running_standin(page_size=2) as server:  # small pages: every pull pages
        yield server


@pytest.fixture
def mc(settings, standin) -> MarketingCloudStandIn:
    settings.MARKETING_CLOUD_ENABLED = True
    settings.MARKETING_CLOUD_AUTH_URL = standin.url
    settings.MARKETING_CLOUD_CLIENT_ID = standin.client_id
    settings.MARKETING_CLOUD_CLIENT_SECRET = standin.client_secret
    settings.MARKETING_CLOUD_ACCOUNT_ID = PARENT_MID
    settings.MARKETING_CLOUD_CA_BUNDLE = standin.ca_path
    settings.MARKETING_CLOUD_TIMEOUT = 5
    settings.MARKETING_CLOUD_CONNECT_TIMEOUT = 5
    settings.SOFT_BOUNCE_LIMIT = 3
    settings.SOFT_BOUNCE_DAYS = 7
    factories.make_business_units()
    return standin


@pytest.fixture
def people(categories) -> dict[str, Any]:
    return {name: factories.make_contact() for name in ("hard", "soft", "unsub", "other")}


def _ago(**delta: float) -> Any:
    return timezone.now() - timedelta(**delta)


def _watermarks() -> dict[str, Any]:
    return dict(
        SyncWatermark.objects.filter(name__startswith="mc-tracking:").values_list("name", "value")
    )


def test_bounces_and_unsubscribes_in_two_business_units_end_as_the_app_holds_them(mc, people):
    hard, soft, unsub, other = (people[n] for n in ("hard", "soft", "unsub", "other"))
    mc.add_tracking_event(
        "BounceEvent",
        ALUMNI,
        hard.salesforce_id,
        event_date=_ago(hours=3),
        send_id=41,
        smtp_code="550",
        smtp_reason="5.1.1 user unknown",
    )
    for hours, category in ((2, "Soft bounce"), (1, "Block bounce")):
        mc.add_tracking_event(
            "BounceEvent",
            ATHLETICS,
            soft.salesforce_id,
            event_date=_ago(hours=hours),
            bounce_category=category,
        )
    mc.add_tracking_event("UnsubEvent", ATHLETICS, unsub.salesforce_id, event_date=_ago(hours=1))
    mc.add_tracking_event("UnsubEvent", ALUMNI, "003NotAContact0AAA", event_date=_ago(minutes=5))
    mc.add_tracking_event("BounceEvent", ALUMNI, other.salesforce_id, event_date=_ago(days=3))

    outcome = tracking.pull_tracking_events()
    intake.apply_pending()

    assert (outcome.stored, outcome.known, outcome.failed) == (5, 0, [])  # not the 3-day-old
    pulled = PlatformEvent.objects.filter(platform="marketing_cloud", channel="tracking")
    events = {(e.kind, e.subscriber_key, e.scope): e for e in pulled}
    assert sorted((e.kind, e.scope) for e in pulled) == [
        (EventKind.HARD_BOUNCE, ""),
        (EventKind.SENDER_OPT_OUT, f"business_unit:{ALUMNI}"),
        (EventKind.SENDER_OPT_OUT, f"business_unit:{ATHLETICS}"),
        (EventKind.SOFT_BOUNCE, ""),
        (EventKind.SOFT_BOUNCE, ""),
    ]
    hard_event = events[(EventKind.HARD_BOUNCE, hard.salesforce_id, "")]
    assert hard_event.state == EventState.APPLIED
    assert hard_event.reason == "Hard bounce (550 5.1.1 user unknown)"
    assert hard_event.event_id.startswith(f"BounceEvent:{ALUMNI}:41:{hard.salesforce_id}:")
    # A hard bounce is Bounced, not opted out (rule 10).
    hard.refresh_from_db()
    assert hard.email_bounced
    assert not ChannelPreference.objects.filter(contact=hard, opted_out=True).exists()
    # Two soft bounces (a block bounce counts as soft) are below the limit: only recorded.
    soft.refresh_from_db()
    assert not soft.email_bounced
    assert sorted(PlatformEvent.objects.filter(contact=soft).values_list("state", flat=True)) == [
        EventState.RECORDED,
        EventState.RECORDED,
    ]
    # An unsubscribe in one business unit suppresses that sender only (rule 9).
    assert list(
        SenderSuppression.objects.filter(contact=unsub).values_list("scope", flat=True)
    ) == [f"business_unit:{ATHLETICS}"]
    state = current_state(unsub)
    assert not any(state.opted_out.values())
    unsub.refresh_from_db()
    assert not unsub.email_bounced
    # Nobody has the subscriber key: kept, unmatched.
    assert (
        events[(EventKind.SENDER_OPT_OUT, "003NotAContact0AAA", f"business_unit:{ALUMNI}")].state
        == EventState.UNMATCHED
    )
    assert AuditEntry.objects.filter(contact_id=other.pk).count() == 0
    # Each (object, business unit) has its own watermark, at its latest event.
    marks = _watermarks()
    assert len(marks) == 6
    assert marks[f"mc-tracking:BounceEvent:{ATHLETICS}"] == max(
        e.occurred_at for e in PlatformEvent.objects.filter(contact=soft)
    )


def test_a_second_pull_stores_nothing_new(mc, people):
    mc.add_tracking_event(
        "BounceEvent", ALUMNI, people["hard"].salesforce_id, event_date=_ago(hours=1)
    )
    for minutes in (30, 20, 10):  # three events: two pages
        mc.add_tracking_event(
            "UnsubEvent", ALUMNI, people["unsub"].salesforce_id, event_date=_ago(minutes=minutes)
        )
    first = tracking.pull_tracking_events()
    marks = _watermarks()

    second = tracking.pull_tracking_events()

    assert (first.stored, second.stored) == (4, 0)
    # The last second is read again: a duplicate, ignored.
    assert second.known == 2
    assert PlatformEvent.objects.count() == 4
    assert _watermarks() == marks


def test_events_after_the_watermark_arrive_on_the_next_pull(mc, people):
    key = people["soft"].salesforce_id
    mc.add_tracking_event(
        "BounceEvent", ATHLETICS, key, event_date=_ago(hours=2), bounce_category="Soft bounce"
    )
    tracking.pull_tracking_events()

    mc.add_tracking_event(
        "BounceEvent", ATHLETICS, key, event_date=_ago(minutes=1), bounce_category="Soft bounce"
    )
    mc.add_tracking_event(
        "BounceEvent", ATHLETICS, key, event_date=_ago(seconds=1), bounce_category="Soft bounce"
    )
    later = tracking.pull_tracking_events()
    intake.apply_pending()

    assert later.stored == 2
    soft = people["soft"]
    soft.refresh_from_db()
    assert soft.email_bounced  # the third soft bounce in seven days (rule 10)


def test_a_transient_fault_leaves_the_watermark_and_the_next_pull_catches_up(
    mc, people, monkeypatch
):
    for minutes in (40, 30, 20, 10, 5):  # three pages
        mc.add_tracking_event(
            "BounceEvent",
            ALUMNI,
            people["hard"].salesforce_id,
            event_date=_ago(minutes=minutes),
            bounce_category="Soft bounce",
        )
    mc.add_tracking_event(
        "UnsubEvent", ATHLETICS, people["unsub"].salesforce_id, event_date=_ago(minutes=3)
    )
    receive = intake.receive
    calls = []

    def receive_then_fail(*args: Any, **kwargs: Any) -> tuple[int, int]:
        calls.append(args)
        if len(calls) == 1:  # the first page of events is stored, then Marketing Cloud fails
            mc.fail("server_fault", times=1, action="Retrieve")
        return receive(*args, **kwargs)

    monkeypatch.setattr(intake, "receive", receive_then_fail)
    failed = tracking.pull_tracking_events()
    marks = _watermarks()
    bounce_mark = f"mc-tracking:BounceEvent:{ALUMNI}"

    assert failed.failed == [f"BounceEvent:{ALUMNI}"]
    assert failed.stored == 3  # the first page, and the unsubscribe elsewhere
    assert bounce_mark in marks
    assert marks[bounce_mark] < _ago(minutes=41)  # not moved: still the first pull's start

    monkeypatch.setattr(intake, "receive", receive)
    caught_up = tracking.pull_tracking_events()

    assert (caught_up.stored, caught_up.failed) == (3, [])
    assert PlatformEvent.objects.filter(kind=EventKind.SOFT_BOUNCE).count() == 5
    assert (
        _watermarks()[bounce_mark]
        == PlatformEvent.objects.filter(kind=EventKind.SOFT_BOUNCE)
        .latest("occurred_at")
        .occurred_at
    )


def test_only_active_business_units_are_read(mc, people):
    BusinessUnit.objects.filter(mid=ATHLETICS).update(is_active=False)
    mc.add_tracking_event(
        "UnsubEvent", ATHLETICS, people["unsub"].salesforce_id, event_date=_ago(minutes=3)
    )

    outcome = tracking.pull_tracking_events()

    assert outcome.stored == 0
    assert not any(mid == ATHLETICS for _, mid in mc.call_log)


def test_the_first_pull_reads_back_the_configured_days(mc, people, settings):
    settings.MARKETING_CLOUD_TRACKING_START_DAYS = 5
    mc.add_tracking_event(
        "UnsubEvent", ALUMNI, people["unsub"].salesforce_id, event_date=_ago(days=4)
    )

    assert tracking.pull_tracking_events().stored == 1


def test_nothing_is_read_when_marketing_cloud_is_off(mc, people, settings):
    settings.MARKETING_CLOUD_ENABLED = False
    mc.add_tracking_event(
        "UnsubEvent", ALUMNI, people["unsub"].salesforce_id, event_date=_ago(hours=1)
    )

    assert tasks.pull_tracking_events() == {}
    assert tracking.pull_tracking_events().stored == 0
    assert mc.call_log == []
    assert not SyncWatermark.objects.exists()


def test_the_task_runs_the_pull(mc, people):
    mc.add_tracking_event(
        "UnsubEvent", ALUMNI, people["unsub"].salesforce_id, event_date=_ago(hours=1)
    )

    assert tasks.pull_tracking_events() == {"stored": 1, "known": 0, "failed": 0}


def test_the_beat_runs_the_pull_every_tracking_interval():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["pull-marketing-cloud-tracking"]
    assert entry["task"] == tasks.PULL_TRACKING_TASK
    assert entry["schedule"] == float(settings.MARKETING_CLOUD_TRACKING_SECONDS)


def test_the_demos_tracking_events_arrive_through_the_pull(mc, categories):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "scripts" / "demo_systems.py"
    spec = importlib.util.spec_from_file_location("demo_systems", path)
    assert spec is not None and spec.loader is not None
    demo_systems = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_systems)
    contacts = [factories.make_contact() for _ in range(6)]

    added = demo_systems.add_tracking_events(mc)  # the stand-in has the client's helpers
    tracking.pull_tracking_events()
    intake.apply_pending()

    assert len(added) == 4
    hard, soft, unsubscribed = (c for c in contacts[3:6])
    for contact in (hard, soft, unsubscribed):
        contact.refresh_from_db()
    assert hard.email_bounced
    assert not soft.email_bounced  # two soft bounces: below the limit
    assert list(
        SenderSuppression.objects.filter(contact=unsubscribed).values_list("scope", flat=True)
    ) == [f"business_unit:{ALUMNI}"]
