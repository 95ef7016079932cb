"""Events from email platforms, stored by intake.receive() and applied by apply_pending()
through apply_change (docs/design.md, rules 9 and 10, "Events from email platforms")."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations.salesforce.sync import expected_values
from preferences.events.intake import ParsedEvent, apply_pending, receive
from preferences.models import (
    Contact,
    EventKind,
    EventState,
    PlatformEvent,
    SenderSuppression,
)
from preferences.services import ChangeRefused, ConsentRequired, apply_change, current_state
from tests import factories

pytestmark = pytest.mark.django_db

PLATFORM = "marketing_cloud"
UNIT = "business_unit:510000002"
OTHER_UNIT = "business_unit:510000003"
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def soft_bounce_rule(settings):
    settings.SOFT_BOUNCE_LIMIT = 3
    settings.SOFT_BOUNCE_DAYS = 7


def _event(contact: Contact, kind: str, *, ago: timedelta = timedelta(0), **fields) -> ParsedEvent:
    return ParsedEvent(
        event_id=fields.pop("event_id", f"evt-{next(_ids)}"),
        kind=kind,
        occurred_at=timezone.now() - ago,
        subscriber_key=contact.salesforce_id,
        **fields,
    )


def _deliver(*events: ParsedEvent) -> list[PlatformEvent]:
    """Receive the events as the endpoint would, then apply them as the worker would."""
    receive(PLATFORM, "ens", events)
    apply_pending()
    found = {e.event_id: e for e in PlatformEvent.objects.filter(platform=PLATFORM)}
    return [found[event.event_id] for event in events]


def _entries(contact: Contact, action: str | None = None) -> list[AuditEntry]:
    entries = AuditEntry.objects.filter(contact=contact).order_by("id")
    if action is not None:
        entries = entries.filter(action=action)
    return list(entries)


def _salesforce_fields(contact: Contact) -> dict[str, bool]:
    return expected_values([contact.pk])[contact.pk].fields


# ---- bounces ------------------------------------------------------------------------------


def test_a_hard_bounce_makes_the_address_bounced_not_opted_out(contact):
    (event,) = _deliver(_event(contact, EventKind.HARD_BOUNCE, reason="550 mailbox unknown"))
    contact.refresh_from_db()
    state = current_state(contact)
    assert state.bounced is True
    assert contact.email_bounced_at is not None
    assert state.opted_out["email"] is False
    assert event.state == EventState.APPLIED
    assert event.contact == contact
    (entry,) = _entries(contact)
    assert entry.action == AuditAction.BOUNCE
    assert entry.source == "email_platform"
    assert event.event_id in entry.note
    assert "550 mailbox unknown" in entry.note
    assert Contact.objects.suppressed().filter(pk=contact.pk).exists()


def test_soft_bounces_below_the_limit_are_recorded_only(contact):
    events = _deliver(
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=2)),
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=1)),
    )
    contact.refresh_from_db()
    assert contact.email_bounced is False
    assert contact.version == 0  # nothing about the preferences changed
    assert [e.state for e in events] == [EventState.RECORDED, EventState.RECORDED]
    entries = _entries(contact)
    assert [e.action for e in entries] == [AuditAction.SOFT_BOUNCE, AuditAction.SOFT_BOUNCE]
    assert "Soft bounce 1 of 3 in 7 days" in entries[0].note
    assert "Soft bounce 2 of 3 in 7 days" in entries[1].note
    for event, entry in zip(events, entries, strict=True):
        assert event.event_id in entry.note
    assert not Contact.objects.suppressed().filter(pk=contact.pk).exists()


def test_the_nth_soft_bounce_within_the_window_makes_the_address_bounced(contact):
    _deliver(
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=6)),
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=3)),
    )
    (third,) = _deliver(_event(contact, EventKind.SOFT_BOUNCE))
    contact.refresh_from_db()
    assert contact.email_bounced is True
    assert current_state(contact).opted_out["email"] is False
    assert third.state == EventState.APPLIED
    last = _entries(contact)[-1]
    assert last.action == AuditAction.BOUNCE
    assert "Soft bounce 3 in 7 days" in last.note
    assert third.event_id in last.note


def test_soft_bounces_outside_the_window_do_not_count(contact):
    _deliver(
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=20)),
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=10)),
    )
    (third,) = _deliver(_event(contact, EventKind.SOFT_BOUNCE))
    contact.refresh_from_db()
    assert contact.email_bounced is False
    assert third.state == EventState.RECORDED
    assert "Soft bounce 1 of 3 in 7 days" in _entries(contact)[-1].note


def test_the_limit_and_window_come_from_settings(contact, settings):
    settings.SOFT_BOUNCE_LIMIT = 2
    settings.SOFT_BOUNCE_DAYS = 30
    _deliver(_event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=20)))
    (second,) = _deliver(_event(contact, EventKind.SOFT_BOUNCE))
    contact.refresh_from_db()
    assert contact.email_bounced is True
    assert second.state == EventState.APPLIED


# ---- bounced is not opted out (rule 10) ---------------------------------------------------


def test_a_bounce_leaves_the_opt_out_and_an_opt_out_leaves_the_bounce(contact, specialist):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )
    _deliver(_event(contact, EventKind.HARD_BOUNCE))
    contact.refresh_from_db()
    state = current_state(contact)
    assert state.bounced is True and state.opted_out["email"] is True

    other = factories.make_contact()
    _deliver(_event(other, EventKind.HARD_BOUNCE))
    other.refresh_from_db()
    apply_change(
        contact=other, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )
    state = current_state(other)
    assert state.bounced is True and state.opted_out["email"] is True


def test_staff_clearing_bounced_with_a_note_leaves_the_opt_out(contact, specialist):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )
    _deliver(_event(contact, EventKind.HARD_BOUNCE))
    entry = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Address corrected: typo in the domain.",
        bounced=False,
    )
    contact.refresh_from_db()
    state = current_state(contact)
    assert state.bounced is False and contact.email_bounced_at is None
    assert state.opted_out["email"] is True
    assert entry.action == AuditAction.BOUNCE
    assert entry.describe_changes({}) == ["Bounce cleared"]
    # Still suppressed: the opt-out alone keeps the contact on the list.
    assert Contact.objects.suppressed().filter(pk=contact.pk).exists()


def test_clearing_bounced_needs_a_note(contact):
    _deliver(_event(contact, EventKind.HARD_BOUNCE))
    with pytest.raises(ChangeRefused, match="Write a note"):
        apply_change(contact=contact, actor=None, source="staff", note=" ", bounced=False)
    contact.refresh_from_db()
    assert contact.email_bounced is True


# ---- spam reports -------------------------------------------------------------------------


def test_a_spam_report_opts_out_flags_and_audits(contact, categories, specialist):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Wants news.", categories={"events"}
    )
    (event,) = _deliver(_event(contact, EventKind.SPAM_REPORT))
    contact.refresh_from_db()
    state = current_state(contact)
    assert state.opted_out["email"] is True
    assert state.categories == frozenset()  # rule 3: opting out turns every category off
    assert contact.spam_reported_at is not None
    assert state.bounced is False
    (entry,) = _entries(contact, AuditAction.SPAM_REPORT)
    assert event.event_id in entry.note
    assert entry.after["spam_reported"] is True
    assert "Reported our mail as spam" in entry.describe_changes({})
    assert _salesforce_fields(contact)["HasOptedOutOfEmail"] is True


def test_a_spam_report_on_an_opted_out_contact_still_flags_it(contact, specialist):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )
    (event,) = _deliver(_event(contact, EventKind.SPAM_REPORT))
    contact.refresh_from_db()
    assert event.state == EventState.APPLIED
    assert contact.spam_reported_at is not None


def test_the_spam_flag_survives_a_re_enrolment(contact, specialist):
    _deliver(_event(contact, EventKind.SPAM_REPORT))
    entry = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Called: wants our mail again.",
        opt_out={"email": False},
        consent=factories.consent(),
    )
    contact.refresh_from_db()
    assert entry.action == AuditAction.RE_ENROLMENT
    assert current_state(contact).opted_out["email"] is False
    assert contact.spam_reported_at is not None
    assert current_state(contact).spam_reported is True
    # Still on the global suppression list, for the spam report.
    assert Contact.objects.suppressed().filter(pk=contact.pk).exists()


# ---- sender opt-outs (rule 9) -------------------------------------------------------------


def test_a_sender_opt_out_suppresses_that_sender_only(contact):
    fields_before = _salesforce_fields(contact)
    (event,) = _deliver(_event(contact, EventKind.SENDER_OPT_OUT, scope=UNIT))
    contact.refresh_from_db()
    assert event.state == EventState.APPLIED
    (suppression,) = SenderSuppression.objects.filter(contact=contact)
    assert suppression.scope == UNIT
    assert suppression.source == "email_platform"
    assert event.event_id in suppression.note
    state = current_state(contact)
    assert state.suppressed_for == frozenset({UNIT})
    assert not state.any_opted_out
    assert state.bounced is False and state.spam_reported is False
    # Not on the global list, and nothing Salesforce holds changes.
    assert not Contact.objects.suppressed().filter(pk=contact.pk).exists()
    assert _salesforce_fields(contact) == fields_before
    (entry,) = _entries(contact)
    assert entry.action == AuditAction.SENDER_OPT_OUT
    assert event.event_id in entry.note


def test_a_second_sender_is_suppressed_separately(contact):
    _deliver(_event(contact, EventKind.SENDER_OPT_OUT, scope=UNIT))
    _deliver(_event(contact, EventKind.SENDER_OPT_OUT, scope=OTHER_UNIT))
    scopes = set(SenderSuppression.objects.filter(contact=contact).values_list("scope", flat=True))
    assert scopes == {UNIT, OTHER_UNIT}


def test_lifting_a_sender_opt_out_without_consent_is_refused(contact, specialist):
    _deliver(_event(contact, EventKind.SENDER_OPT_OUT, scope=UNIT))
    contact.refresh_from_db()
    version, entries = contact.version, AuditEntry.objects.count()
    with pytest.raises(ConsentRequired, match="needs their consent"):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Wants the faculty newsletter again.",
            sender_opt_out={UNIT: False},
        )
    contact.refresh_from_db()
    assert contact.version == version
    assert AuditEntry.objects.count() == entries
    assert SenderSuppression.objects.filter(contact=contact, scope=UNIT).exists()


def test_lifting_a_sender_opt_out_with_consent_is_a_re_enrolment(contact, specialist):
    _deliver(_event(contact, EventKind.SENDER_OPT_OUT, scope=UNIT))
    entry = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Wants the faculty newsletter again.",
        sender_opt_out={UNIT: False},
        consent=factories.consent(),
    )
    assert entry.action == AuditAction.RE_ENROLMENT
    assert entry.consent is not None
    assert not SenderSuppression.objects.filter(contact=contact).exists()


def test_a_sender_that_is_not_a_scope_is_refused(contact):
    with pytest.raises(ChangeRefused, match="Not a sender"):
        apply_change(
            contact=contact,
            actor=None,
            source="email_platform",
            note="x",
            sender_opt_out={"everyone": True},
        )


# ---- exactly once ----------------------------------------------------------------------------


def test_the_same_event_delivered_twice_changes_the_contact_once(contact):
    spam = _event(contact, EventKind.SPAM_REPORT, event_id="ens-42")
    assert receive(PLATFORM, "ens", [spam]) == (1, 0)
    assert apply_pending() == 1
    assert receive(PLATFORM, "ens", [spam]) == (0, 1)
    assert apply_pending() == 0
    contact.refresh_from_db()
    assert contact.version == 1
    assert PlatformEvent.objects.filter(event_id="ens-42").count() == 1
    assert len(_entries(contact)) == 1


def test_a_repeated_soft_bounce_counts_once(contact):
    bounce = _event(contact, EventKind.SOFT_BOUNCE, event_id="soft-1")
    for _ in range(3):
        receive(PLATFORM, "ens", [bounce])
        apply_pending()
    contact.refresh_from_db()
    assert contact.email_bounced is False
    assert len(_entries(contact, AuditAction.SOFT_BOUNCE)) == 1


def test_an_event_for_nobody_is_kept_as_unmatched(db):
    receive(
        PLATFORM,
        "ens",
        [
            ParsedEvent(
                event_id="nobody",
                kind=EventKind.HARD_BOUNCE,
                occurred_at=timezone.now(),
                email="nobody@example.edu",
            )
        ],
    )
    apply_pending()
    event = PlatformEvent.objects.get(event_id="nobody")
    assert event.state == EventState.UNMATCHED
    assert not AuditEntry.objects.exists()


def test_a_repeated_hard_bounce_is_nothing_to_change(contact):
    first, second = _deliver(
        _event(contact, EventKind.HARD_BOUNCE), _event(contact, EventKind.HARD_BOUNCE)
    )
    assert first.state == EventState.APPLIED
    assert second.state == EventState.NO_CHANGE
    assert len(_entries(contact)) == 1


def test_soft_bounces_before_staff_cleared_bounced_do_not_count_again(contact, specialist):
    """The address was corrected: the soft bounces of the old one are spent."""
    _deliver(
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=3)),
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=2)),
        _event(contact, EventKind.SOFT_BOUNCE, ago=timedelta(days=1)),
    )
    contact.refresh_from_db()
    assert contact.email_bounced is True
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Address corrected.", bounced=False
    )
    (next_one,) = _deliver(_event(contact, EventKind.SOFT_BOUNCE))
    contact.refresh_from_db()
    assert contact.email_bounced is False
    assert next_one.state == EventState.RECORDED
    assert "Soft bounce 1 of 3 in 7 days" in next_one.outcome


def test_lifting_a_sender_opt_out_needs_consent_given_in_the_past(contact, specialist):
    _deliver(_event(contact, EventKind.SENDER_OPT_OUT, scope=UNIT))
    for consent in (
        factories.consent(obtained_at=timezone.now() + timedelta(days=1)),
        factories.consent(method="carrier_pigeon"),
        factories.consent(obtained_at=timezone.now() - timedelta(days=3)),  # before the opt-out
    ):
        with pytest.raises(ConsentRequired):
            apply_change(
                contact=contact,
                actor=specialist,
                source="staff",
                note="Wants the faculty newsletter again.",
                sender_opt_out={UNIT: False},
                consent=consent,
            )
    assert SenderSuppression.objects.filter(contact=contact, scope=UNIT).exists()
