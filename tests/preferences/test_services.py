from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations import core
from preferences.models import ChannelPreference, Consent, ContactSync, Subscription
from preferences.services import ChangeRefused, StaleChange, apply_change, current_state
from tests import factories

pytestmark = pytest.mark.django_db


def _subscribe(contact, user, keys):
    return apply_change(
        contact=contact, actor=user, source="staff", note="Asked for these.", categories=keys
    )


def _opt_out(contact, user, channel="email"):
    return apply_change(
        contact=contact, actor=user, source="staff", note="Stop.", opt_out={channel: True}
    )


def test_opting_out_of_email_turns_every_category_off(contact, specialist):
    _subscribe(contact, specialist, {"newsletter", "events", "giving"})

    entry = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Stop all email.",
        opt_out={"email": True},
    )

    state = current_state(contact)
    assert state.opted_out["email"] is True
    assert state.categories == frozenset()
    assert not Subscription.objects.filter(contact=contact).exists()
    assert entry.action == AuditAction.OPT_OUT
    assert entry.before["categories"] == ["events", "giving", "newsletter"]
    assert entry.after["categories"] == []


def test_reenrolment_without_consent_is_refused(contact, specialist):
    _opt_out(contact, specialist)
    version = contact.version

    with pytest.raises(ChangeRefused, match="re-enrolment"):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Wants back in.",
            opt_out={"email": False},
        )

    contact.refresh_from_db()
    assert contact.version == version
    assert current_state(contact).opted_out["email"] is True
    assert AuditEntry.objects.filter(contact=contact).count() == 1


def test_reenrolment_with_unattested_consent_is_refused(contact, specialist):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="No calls.", opt_out={"phone": True}
    )

    with pytest.raises(ChangeRefused, match="consented"):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Calls again.",
            opt_out={"phone": False},
            consent=factories.consent(attested=False),
        )
    assert current_state(contact).opted_out["phone"] is True


def test_consent_dated_in_the_future_is_refused(contact, specialist):
    _opt_out(contact, specialist)

    with pytest.raises(ChangeRefused, match="future"):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Back in.",
            opt_out={"email": False},
            consent=factories.consent(obtained_at=timezone.now() + timedelta(days=1)),
        )


def test_reenrolment_with_consent_records_the_evidence(contact, specialist):
    _subscribe(contact, specialist, {"newsletter"})
    _opt_out(contact, specialist)

    entry = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Asked to be back on email.",
        opt_out={"email": False},
        consent=factories.consent(method="in_person"),
    )

    assert entry.action == AuditAction.RE_ENROLMENT
    assert entry.consent is not None
    assert entry.consent.method == "in_person"
    assert entry.consent.channels == ["email"]
    assert entry.consent.recorded_by == specialist
    state = current_state(contact)
    assert state.opted_out["email"] is False
    # Categories are re-checked by the specialist, never restored silently.
    assert state.categories == frozenset()


def test_a_change_without_a_note_is_refused(contact, specialist):
    with pytest.raises(ChangeRefused, match="note"):
        apply_change(
            contact=contact, actor=specialist, source="staff", note="   ", opt_out={"email": True}
        )
    assert not ChannelPreference.objects.exists()
    assert not AuditEntry.objects.exists()


def test_a_stale_version_is_refused(contact, specialist, manager):
    loaded_version = contact.version
    apply_change(
        contact=contact, actor=manager, source="staff", note="First.", opt_out={"phone": True}
    )

    with pytest.raises(StaleChange, match="Someone else changed") as refused:
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Second.",
            opt_out={"email": True},
            expected_version=loaded_version,
        )
    assert refused.value.latest is not None
    assert refused.value.latest.actor == manager
    assert current_state(contact).opted_out["email"] is False


def test_categories_cannot_be_ticked_while_opted_out_of_email(contact, specialist):
    _opt_out(contact, specialist)

    with pytest.raises(ChangeRefused, match="opted out of email"):
        _subscribe(contact, specialist, {"events"})


def test_a_change_that_changes_nothing_is_refused(contact, specialist):
    with pytest.raises(ChangeRefused, match="Nothing to change"):
        apply_change(
            contact=contact, actor=specialist, source="staff", note="Hm.", opt_out={"email": False}
        )
    assert not AuditEntry.objects.exists()


def test_unknown_channel_and_category_are_refused(contact, specialist):
    with pytest.raises(ChangeRefused, match="Unknown channel"):
        apply_change(
            contact=contact, actor=specialist, source="staff", note="x", opt_out={"fax": True}
        )
    with pytest.raises(ChangeRefused, match="Unknown email category"):
        _subscribe(contact, specialist, {"horoscopes"})


def test_a_change_writes_one_audit_entry_and_a_sync_record_per_target(contact, specialist):
    entry = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="No calls please.",
        opt_out={"phone": True},
    )

    contact.refresh_from_db()
    assert contact.version == 1
    assert list(AuditEntry.objects.filter(contact=contact)) == [entry]
    assert entry.actor_label == specialist.email
    assert entry.channels == ["phone"]
    assert entry.contact_version == 1
    syncs = ContactSync.objects.filter(contact=contact)
    assert sorted(s.target for s in syncs) == sorted(t.name for t in core.targets())
    assert {s.status for s in syncs} == {"pending"}
    banner = ChannelPreference.objects.get(contact=contact, channel="phone")
    assert (banner.opted_out, banner.changed_by, banner.note) == (
        True,
        specialist,
        "No calls please.",
    )


def test_a_failure_half_way_leaves_no_partial_state(contact, specialist, monkeypatch):
    _subscribe(contact, specialist, {"newsletter", "events"})
    before = current_state(contact)
    entries = AuditEntry.objects.count()

    def explode(*args, **kwargs):
        raise RuntimeError("database went away")

    # The audit entry is written after the state: failing there must undo the state too.
    monkeypatch.setattr(AuditEntry.objects, "create", explode)
    with pytest.raises(RuntimeError):
        apply_change(
            contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
        )

    contact.refresh_from_db()
    assert current_state(contact) == before
    assert contact.version == 1
    assert AuditEntry.objects.count() == entries
    assert not ChannelPreference.objects.filter(contact=contact).exists()
    assert not Consent.objects.exists()


def test_a_change_from_another_system_is_recorded_with_its_source(contact):
    entry = apply_change(
        contact=contact,
        actor=None,
        source="email_platform",
        note="Footer unsubscribe.",
        opt_out={"email": True},
    )
    assert entry.actor is None
    assert entry.actor_label == "Email platform"
    pref = ChannelPreference.objects.get(contact=contact, channel="email")
    assert pref.changed_by_label == "Email platform"


def test_consent_given_before_the_opt_out_does_not_reenrol(contact, specialist):
    _opt_out(contact, specialist)
    with pytest.raises(ChangeRefused, match="the later opt-out stands"):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Back in.",
            opt_out={"email": False},
            consent=factories.consent(obtained_at=timezone.now() - timedelta(days=30)),
        )
    assert current_state(contact).opted_out["email"] is True


def test_consent_without_a_known_method_is_refused(contact, specialist):
    _opt_out(contact, specialist)
    with pytest.raises(ChangeRefused, match="how the contact asked"):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Back in.",
            opt_out={"email": False},
            consent=factories.consent(method="carrier_pigeon"),
        )


def test_a_note_with_a_nul_character_is_refused_not_crashed(contact, specialist):
    with pytest.raises(ChangeRefused, match="cannot be stored"):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Stop\x00",
            opt_out={"email": True},
        )
