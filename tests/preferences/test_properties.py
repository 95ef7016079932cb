"""Property tests for apply_change: random sequences of requests applied to one contact.

Each step is checked against a small model of the rules (docs/design.md, rules 3, 4 and 6, the
category refusals and the stale-form check) and, after every step, against the invariants
that the banner, the audit log and the sync rely on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from audit.models import AuditAction, AuditEntry
from integrations import core
from preferences.management.commands.seed_demo import CATEGORIES
from preferences.models import (
    Channel,
    ChannelPreference,
    Consent,
    ConsentMethod,
    Contact,
    ContactSync,
    EmailCategory,
    Subscription,
    SyncStatus,
)
from preferences.services import (
    ChangeRefused,
    ConsentEvidence,
    ConsentRequired,
    PreferenceState,
    StaleChange,
    apply_change,
    current_state,
)
from tests import factories

TARGETS = [target.name for target in core.targets()]

pytestmark = pytest.mark.django_db

CHANNELS = tuple(Channel.values)
OFFERED = tuple(key for key, _, _ in CATEGORIES)
RETIRED = "retired"  # an EmailCategory row with is_active=False
UNKNOWN = "horoscopes"  # no EmailCategory row at all
KNOWN = frozenset({*OFFERED, RETIRED})
# Sources that act through a signed-in user; the others are systems (actor=None).
STAFF_SOURCES = ("staff", "bulk")


# --- The requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentSpec:
    method: str
    attested: bool
    # Relative to the moment the request is sent: negative is in the past.
    offset: timedelta

    def evidence(self) -> ConsentEvidence:
        return ConsentEvidence(
            method=self.method, obtained_at=timezone.now() + self.offset, attested=self.attested
        )


@dataclass(frozen=True)
class Request:
    note: str
    opt_out: dict[str, bool] | None = None
    categories: frozenset[str] | None = None
    bounced: bool | None = None
    consent: ConsentSpec | None = None
    # None: the caller sends no expected_version; 0: the current version; anything else is
    # added to the current version, i.e. a form loaded before (or "after") another change.
    version_offset: int | None = None
    source: str = "staff"
    # Sync targets that already hold the new state (a change read back from Salesforce).
    already_in: frozenset[str] = frozenset()


past = st.integers(1, 60 * 24 * 365).map(lambda m: -timedelta(minutes=m))
future = st.integers(5, 60 * 24 * 30).map(lambda m: timedelta(minutes=m))
# Every opt-out in an example happens seconds before its re-enrolment: consent given "now"
# comes after it, consent days old comes before it (and so cannot re-enrol).
just_now = st.just(timedelta(0))
before_any_opt_out = st.integers(2, 365).map(lambda d: -timedelta(days=d))
methods = st.sampled_from(ConsentMethod.values)
valid_consents = st.builds(ConsentSpec, method=methods, attested=st.just(True), offset=just_now)
outdated_consents = st.builds(
    ConsentSpec, method=methods, attested=st.just(True), offset=before_any_opt_out
)
bad_method_consents = st.builds(
    ConsentSpec,
    method=st.sampled_from(["", "carrier_pigeon"]),
    attested=st.just(True),
    offset=just_now,
)
unattested_consents = st.builds(
    ConsentSpec, method=methods, attested=st.just(False), offset=past | future
)
future_consents = st.builds(ConsentSpec, method=methods, attested=st.just(True), offset=future)
# one_of picks a branch uniformly: weighted towards valid evidence, so that re-enrolments
# actually happen in a short sequence.
consent_specs = st.one_of(
    valid_consents,
    valid_consents,
    valid_consents,
    unattested_consents,
    future_consents,
    outdated_consents,
    bad_method_consents,
)

valid_notes = st.sampled_from(["Asked on the phone.", "  Stop, please.  ", "Footer unsubscribe."])
# Python's str.strip() also strips Unicode spaces and the \x1c-\x1f separators.
BLANK_NOTES = ["", "   ", "\n\t", "\u00a0\u2003", "\x1f"]
notes = st.one_of(
    *[valid_notes] * 3,
    st.text(st.sampled_from("ab é\n\u2003\x1f"), max_size=6),
    st.sampled_from(BLANK_NOTES),
)

versions = st.sampled_from([None, None, None, 0, 0, 0, -2, -1, 1])
mostly_current_versions = st.sampled_from([None, None, 0, 0, 0, -1])
sources = st.sampled_from(["staff", "salesforce", "email_platform", "bulk"])
category_sets = st.one_of(
    st.none(),
    st.none(),
    st.frozensets(st.sampled_from(OFFERED)),
    st.frozensets(st.sampled_from([*OFFERED, RETIRED, UNKNOWN]), min_size=1),
)

any_request = st.builds(
    Request,
    note=notes,
    opt_out=st.one_of(
        st.none(),
        *[st.dictionaries(st.sampled_from(CHANNELS), st.booleans(), min_size=1)] * 3,
        # Now and then a channel the app does not have.
        st.dictionaries(st.sampled_from([*CHANNELS, "fax"]), st.booleans(), min_size=1),
    ),
    categories=category_sets,
    bounced=st.one_of(st.none(), st.none(), st.booleans()),
    consent=st.one_of(st.none(), consent_specs, consent_specs),
    version_offset=versions,
    source=sources,
    already_in=st.one_of(st.just(frozenset()), st.frozensets(st.sampled_from(TARGETS))),
)
# Fully random requests are mostly refused, and seldom line up an opt-out and, later, a
# consented opt-in; these make such sequences common without ruling anything out.
category_request = st.builds(
    Request,
    note=valid_notes,
    categories=st.frozensets(st.sampled_from(OFFERED)),
    bounced=st.one_of(st.none(), st.booleans()),
    version_offset=mostly_current_versions,
    source=sources,
)
opt_out_request = st.builds(
    Request,
    note=valid_notes,
    opt_out=st.dictionaries(st.sampled_from(CHANNELS), st.just(True), min_size=1),
    categories=category_sets,
    version_offset=mostly_current_versions,
    source=sources,
)
re_enrolment_request = st.builds(
    Request,
    note=valid_notes,
    opt_out=st.dictionaries(st.sampled_from(CHANNELS), st.just(False), min_size=1),
    categories=st.one_of(st.none(), st.none(), st.frozensets(st.sampled_from(OFFERED))),
    consent=st.one_of(st.none(), consent_specs, valid_consents),
    version_offset=mostly_current_versions,
    source=sources,
)


def _round_trip(channel: str, out: Request, back: Request) -> list[Request]:
    return [replace(out, opt_out={channel: True}), replace(back, opt_out={channel: False})]


request_sequences = st.lists(
    st.one_of(
        st.one_of(
            any_request, any_request, category_request, opt_out_request, re_enrolment_request
        ).map(lambda request: [request]),
        # An opt-out followed by an attempt to opt the contact back in on the same channel.
        st.builds(_round_trip, st.sampled_from(CHANNELS), opt_out_request, re_enrolment_request),
    ),
    min_size=2,
    max_size=8,
).map(lambda groups: [request for group in groups for request in group])


# --- The model: what apply_change should do ---------------------------------------------


@dataclass(frozen=True)
class ModelState:
    opted_out: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    bounced: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "opted_out": {channel: channel in self.opted_out for channel in CHANNELS},
            "categories": sorted(self.categories),
            "bounced": self.bounced,
        }


@dataclass(frozen=True)
class Outcome:
    refused: str | None = None
    after: ModelState | None = None
    action: str | None = None
    re_enrolled: frozenset[str] = frozenset()


# How each refusal reads, so a request refused for the wrong reason fails too.
REFUSALS = {
    "no note": r"Write a note",
    "unknown channel": r"Unknown channel: fax",
    "stale": r"Someone else changed this contact",
    "no consent": r"re-enrolment: .*confirm that they consented",
    "consent in the future": r"consent date is in the future",
    "consent method": r"Say how the contact asked",
    "consent before opt-out": r"the later opt-out stands",
    "unknown category": rf"Unknown email category: {UNKNOWN}",
    "retired category": rf"Category no longer offered: {RETIRED}",
    "categories while opted out": r"opted out of email: opt them back in",
    "nothing to change": r"Nothing to change",
}


def model_apply(state: ModelState, request: Request) -> Outcome:
    if not request.note.strip():
        return Outcome(refused="no note")  # docs/design.md, rule 6
    opt_out = request.opt_out or {}
    if set(opt_out) - set(CHANNELS):
        return Outcome(refused="unknown channel")
    if request.version_offset:
        return Outcome(refused="stale")

    opted_out = frozenset(c for c in CHANNELS if opt_out.get(c, c in state.opted_out))
    re_enrolled = state.opted_out - opted_out
    newly_opted_out = opted_out - state.opted_out
    if re_enrolled:  # docs/design.md, rule 4
        if request.consent is None or not request.consent.attested:
            return Outcome(refused="no consent")
        if request.consent.method not in ConsentMethod.values:
            return Outcome(refused="consent method")
        if request.consent.offset > timedelta(0):
            return Outcome(refused="consent in the future")
        if request.consent.offset <= -timedelta(days=1):
            return Outcome(refused="consent before opt-out")

    categories = state.categories if request.categories is None else request.categories
    if categories - KNOWN:
        return Outcome(refused="unknown category")
    if RETIRED in categories - state.categories:
        return Outcome(refused="retired category")
    if Channel.EMAIL in opted_out:
        if Channel.EMAIL in newly_opted_out:
            categories = frozenset()  # docs/design.md, rule 3
        elif categories:
            return Outcome(refused="categories while opted out")

    bounced = state.bounced if request.bounced is None else request.bounced
    after = ModelState(opted_out, categories, bounced)
    if after == state:
        return Outcome(refused="nothing to change")

    if re_enrolled:
        action = AuditAction.RE_ENROLMENT
    elif newly_opted_out:
        action = AuditAction.OPT_OUT
    elif categories != state.categories:
        action = AuditAction.CATEGORY_CHANGE
    else:
        action = AuditAction.BOUNCE
    return Outcome(after=after, action=action, re_enrolled=re_enrolled)


# --- Reading the database ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The rows about one contact that a preference change may write, read once per step."""

    contact: Mapping[str, Any]
    preferences: list[Mapping[str, Any]]
    subscriptions: list[Mapping[str, Any]]
    entries: list[AuditEntry]  # oldest first, with their consent rows
    consents: list[Mapping[str, Any]]
    syncs: list[Mapping[str, Any]]

    @property
    def audit_ids(self) -> list[int]:
        return [entry.pk for entry in self.entries]

    def rows(self) -> tuple[object, ...]:
        return (
            self.contact,
            self.preferences,
            self.subscriptions,
            self.audit_ids,
            self.consents,
            self.syncs,
        )


def snapshot(contact_id: int) -> Snapshot:
    return Snapshot(
        contact=Contact.objects.values().get(pk=contact_id),
        preferences=list(
            ChannelPreference.objects.filter(contact_id=contact_id).order_by("channel").values()
        ),
        subscriptions=list(
            Subscription.objects.filter(contact_id=contact_id)
            .order_by("category__key")
            .values("id", "category_id", "category__key", "subscribed_at")
        ),
        entries=list(
            AuditEntry.objects.filter(contact_id=contact_id)
            .select_related("consent")
            .order_by("id")
        ),
        consents=list(Consent.objects.filter(contact_id=contact_id).order_by("id").values()),
        syncs=list(ContactSync.objects.filter(contact_id=contact_id).order_by("target").values()),
    )


def check_invariants(
    contact: Contact, snap: Snapshot, model: ModelState, initial: dict[str, object]
) -> None:
    state = current_state(contact)
    assert state.as_json() == model.as_json()

    # 1. Opted out of email means no category, in the rows as well as in current_state.
    email_opted_out = any(
        p["channel"] == Channel.EMAIL and p["opted_out"] for p in snap.preferences
    )
    assert email_opted_out == state.opted_out[Channel.EMAIL]
    if email_opted_out:
        assert snap.subscriptions == []
        assert state.categories == frozenset()

    # 2. One entry per version, numbered as the contact's version went up.
    entries = snap.entries
    assert [e.contact_version for e in entries] == list(range(1, snap.contact["version"] + 1))

    # 3a. Continuity: each entry starts where the previous one ended, and the last one
    # ends at the current state.
    previous = initial
    for entry in entries:
        assert entry.before == previous, f"audit entry #{entry.pk} does not continue the log"
        previous = entry.after
    assert previous == state.as_json()

    # 3b. Rebuild from the `after` snapshots alone: the state, and which entry last set each
    # part of it (what the banner shows: since when, by whom, the note).
    rebuilt: dict[str, Any] = initial
    last_channel_change: dict[str, AuditEntry] = {}
    last_added: dict[str, AuditEntry] = {}
    bounced_by: AuditEntry | None = None
    re_enrolments = 0
    for entry in entries:
        for channel in CHANNELS:
            if entry.after["opted_out"][channel] != rebuilt["opted_out"][channel]:
                last_channel_change[channel] = entry
        for key in set(entry.after["categories"]) - set(rebuilt["categories"]):
            last_added[key] = entry
        if entry.after["bounced"] and not rebuilt["bounced"]:
            bounced_by = entry

        # 4. A cleared opt-out only ever happens with attested consent, linked from the entry.
        re_enrolled = sorted(
            c for c in CHANNELS if rebuilt["opted_out"][c] and not entry.after["opted_out"][c]
        )
        if re_enrolled:
            re_enrolments += 1
            assert entry.action == AuditAction.RE_ENROLMENT
            assert entry.consent is not None, f"re-enrolment #{entry.pk} has no consent"
            assert entry.consent.attested
            assert entry.consent.contact_id == contact.pk
            assert sorted(entry.consent.channels) == re_enrolled
            assert entry.consent.obtained_at <= entry.created_at
        else:
            assert entry.consent_id is None, f"#{entry.pk} is no re-enrolment but has consent"
        rebuilt = entry.after

    assert (
        PreferenceState(
            opted_out=rebuilt["opted_out"],
            categories=frozenset(rebuilt["categories"]),
            bounced=rebuilt["bounced"],
        )
        == state
    )
    assert len(snap.consents) == re_enrolments
    preferences = {p["channel"]: p for p in snap.preferences}
    assert set(preferences) == set(last_channel_change)
    for channel, entry in last_channel_change.items():
        preference = preferences[channel]
        assert preference["opted_out"] == entry.after["opted_out"][channel]
        assert preference["changed_at"] == entry.created_at
        assert preference["note"] == entry.note
        assert preference["source"] == entry.source
        assert preference["changed_by_id"] == entry.actor_id
    assert {s["category__key"]: s["subscribed_at"] for s in snap.subscriptions} == {
        key: last_added[key].created_at for key in state.categories
    }
    if state.bounced:
        assert bounced_by is not None
        assert snap.contact["email_bounced_at"] == bounced_by.created_at
    else:
        assert snap.contact["email_bounced_at"] is None


# --- The test ---------------------------------------------------------------------------


def run_sequence(requests: list[Request], user: User) -> None:
    contact = factories.make_contact()
    model = ModelState()
    initial = current_state(contact).as_json()
    assert initial == model.as_json()
    before = snapshot(contact.pk)

    for step, request in enumerate(requests):
        version = before.contact["version"]
        expected = model_apply(model, request)
        evidence = request.consent.evidence() if request.consent else None
        where = f"step {step}: {request}"
        try:
            entry = apply_change(
                contact=contact,
                actor=user if request.source in STAFF_SOURCES else None,
                source=request.source,
                note=request.note,
                opt_out=request.opt_out,
                categories=request.categories,
                bounced=request.bounced,
                consent=evidence,
                expected_version=(
                    None if request.version_offset is None else version + request.version_offset
                ),
                already_in=request.already_in,
            )
        except ChangeRefused as refused:
            event(f"refused: {expected.refused}")
            after = snapshot(contact.pk)
            assert expected.refused is not None, f"{where}: refused ({refused}), model accepts"
            assert re.search(REFUSALS[expected.refused], str(refused)), (
                f"{where}: refused with {str(refused)!r}, model says {expected.refused}"
            )
            assert isinstance(refused, StaleChange) == (expected.refused == "stale")
            assert isinstance(refused, ConsentRequired) == (
                expected.refused
                in (
                    "no consent",
                    "consent method",
                    "consent in the future",
                    "consent before opt-out",
                )
            )
            # 2. A refusal writes nothing at all.
            assert after.rows() == before.rows(), f"{where}: a refused change wrote something"
        else:
            event(f"accepted: {entry.action}")
            after = snapshot(contact.pk)
            assert expected.refused is None, f"{where}: accepted, model refuses: {expected.refused}"
            assert expected.after is not None

            # 2. Exactly one new audit entry, and the version went up by exactly one.
            assert after.audit_ids == [*before.audit_ids, entry.pk]
            assert after.contact["version"] == version + 1
            assert entry.contact_version == version + 1
            assert contact.version == version + 1  # the caller's object is refreshed

            assert entry.before == model.as_json()
            assert entry.after == expected.after.as_json()
            assert entry.action == expected.action
            assert entry.note == request.note.strip()
            assert entry.source == request.source
            assert entry.actor_label == (
                user.get_username()
                if request.source in STAFF_SOURCES
                else entry.get_source_display()
            )

            # 4. The consent row exists exactly when a channel was re-enrolled.
            assert after.consents[: len(before.consents)] == before.consents
            new_consents = after.consents[len(before.consents) :]
            if expected.re_enrolled:
                assert evidence is not None
                assert [c["id"] for c in new_consents] == [entry.consent_id]
                (row,) = new_consents
                assert sorted(row["channels"]) == sorted(expected.re_enrolled)
                assert row["attested"] is True
                assert row["obtained_at"] == evidence.obtained_at
                assert row["method"] == evidence.method
            else:
                assert new_consents == []
                assert entry.consent_id is None

            # Every target has to receive the new version, except those that sent it to us.
            assert sorted(s["target"] for s in after.syncs) == sorted(TARGETS)
            synced_before = {s["target"]: s["synced_version"] for s in before.syncs}
            for sync in after.syncs:
                if sync["target"] in request.already_in:
                    assert (sync["status"], sync["synced_version"]) == (
                        SyncStatus.SYNCED,
                        version + 1,
                    )
                else:
                    assert sync["status"] == SyncStatus.PENDING
                    assert sync["synced_version"] == synced_before.get(sync["target"], 0)
            model = expected.after

        check_invariants(contact, after, model, initial)
        before = after


def _seq(*requests: Request) -> list[Request]:
    return list(requests)


_CONSENT = ConsentSpec("phone_call", attested=True, offset=timedelta(0))


@pytest.fixture
def retired_category(categories: list[EmailCategory]) -> EmailCategory:
    return EmailCategory.objects.create(
        key=RETIRED, name="Retired list", salesforce_field="Retired__c", is_active=False
    )


@settings(
    max_examples=100,
    deadline=None,
    # The fixtures only hold the categories and the user; every example makes its own
    # contact inside a savepoint that is rolled back.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    # Keep hypothesis from writing a .hypothesis/ directory into the tree; a failure prints
    # the falsifying example, which can be pasted into an @example below.
    database=None,
)
@given(requests=request_sequences)
@example(
    requests=_seq(
        Request("Wants these.", categories=frozenset({"newsletter", "events"})),
        Request("And the old list.", categories=frozenset({"newsletter", RETIRED})),
        Request("And horoscopes.", categories=frozenset({"events", UNKNOWN})),
        Request("No faxes.", opt_out={"fax": True}),
        Request("Stop all email.", opt_out={"email": True}, version_offset=0),
        Request("Wants back in.", opt_out={"email": False}),
        Request("Just the newsletter.", categories=frozenset({"newsletter"})),
        Request("Wants back in.", opt_out={"email": False}, consent=_CONSENT),
        Request("Old form.", opt_out={"phone": True}, version_offset=-1),
    )
)
@example(
    requests=_seq(
        Request("No calls, bounced.", opt_out={"phone": True}, bounced=True, source="salesforce"),
        Request(
            "Calls again.",
            opt_out={"phone": False},
            consent=ConsentSpec("email", attested=True, offset=timedelta(days=1)),
        ),
        Request(
            "Calls again.",
            opt_out={"phone": False},
            consent=ConsentSpec("in_person", attested=False, offset=-timedelta(minutes=5)),
        ),
        Request("   ", opt_out={"phone": False}, consent=_CONSENT),
        Request("Calls again.", opt_out={"phone": False}, bounced=False, consent=_CONSENT),
        Request("Same again.", opt_out={"phone": False}, bounced=False),
    )
)
def test_random_request_sequences_keep_the_rules_and_the_audit_trail(
    requests: list[Request], specialist: User, retired_category: EmailCategory
) -> None:
    with transaction.atomic():
        run_sequence(requests, specialist)
        transaction.set_rollback(True)
