"""The one place a contact's communication preferences change.

Views, inbound sync, webhooks, bulk jobs and the admin all call apply_change(); it checks
the rules (docs/design.md, "The rules") and writes the new state, the audit entry and the
outbound sync marks in one transaction. Features that must act on a change in that same
transaction (the re-subscribe queue closing requests on an opt-out) register an
after-change hook instead of being imported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from django.contrib.auth.models import User
from django.db import connection, models, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, ConsentMethod, Source
from audit.services import record
from integrations import core
from lib.channels import Channel
from lib.locks import AdvisoryLock
from preferences.models import (
    BulkRun,
    ChannelPreference,
    Consent,
    Contact,
    EmailCategory,
    Escalation,
    SenderSuppression,
    Subscription,
    SyncStatus,
)

# A sender's scope: "business_unit:<MID>" or "send_account:<the platform's account id>".
_SCOPE = re.compile(r"(business_unit|send_account):[\w.@+-]{1,100}")

# apply_change holds this advisory lock shared; the Ascend export takes it exclusively for
# an instant to read the newest audit id, so every change up to that id has committed.
CHANGE_WINDOW_LOCK = AdvisoryLock.CHANGE_WINDOW


class AfterChange(Protocol):
    """Runs inside apply_change's transaction, after the entry is written, with the contact
    (locked) and the entry; raising rolls the change back."""

    def __call__(self, *, contact: Contact, entry: AuditEntry) -> None: ...


_after_change_hooks: list[AfterChange] = []


def register_after_change(hook: AfterChange) -> None:
    """Registered once, by the app that needs it, when it is ready (preferences/apps.py)."""
    if hook not in _after_change_hooks:
        _after_change_hooks.append(hook)


class ChangeRefused(Exception):
    """The change breaks a rule; nothing was written. The message is for staff."""


class ConsentRequired(ChangeRefused):
    """A re-enrolment without complete consent evidence."""


class StaleChange(ChangeRefused):
    """The contact changed after the form was loaded."""

    def __init__(self, message: str, *, latest: AuditEntry | None) -> None:
        super().__init__(message)
        self.latest = latest


@dataclass(frozen=True)
class PreferenceState:
    opted_out: Mapping[str, bool]
    categories: frozenset[str] = field(default_factory=frozenset)
    bounced: bool = False
    spam_reported: bool = False
    # The senders (business units, send accounts) the contact opted out of, one by one.
    suppressed_for: frozenset[str] = field(default_factory=frozenset)

    @property
    def any_opted_out(self) -> bool:
        return any(self.opted_out.values())

    def as_json(self) -> dict[str, object]:
        state: dict[str, object] = {
            "opted_out": {channel: self.opted_out[channel] for channel in Channel.values},
            "categories": sorted(self.categories),
            "bounced": self.bounced,
        }
        # Written only when set, so the entries of contacts who have neither read as before.
        if self.spam_reported:
            state["spam_reported"] = True
        if self.suppressed_for:
            state["suppressed_for"] = sorted(self.suppressed_for)
        return state


@dataclass(frozen=True)
class ConsentEvidence:
    """How and when the contact asked to be opted back in, attested by the staff member."""

    method: str
    obtained_at: datetime
    attested: bool


def current_state(contact: Contact) -> PreferenceState:
    opted_out = dict.fromkeys(Channel.values, False)
    for channel, value in ChannelPreference.objects.filter(contact=contact).values_list(
        "channel", "opted_out"
    ):
        opted_out[channel] = value
    categories = frozenset(
        Subscription.objects.filter(contact=contact).values_list("category__key", flat=True)
    )
    suppressed_for = frozenset(
        SenderSuppression.objects.filter(contact=contact).values_list("scope", flat=True)
    )
    return PreferenceState(
        opted_out,
        categories,
        contact.email_bounced,
        contact.spam_reported_at is not None,
        suppressed_for,
    )


def _channel_names(channels: Iterable[str]) -> str:
    return " and ".join(Channel(channel).label.lower() for channel in channels)


def _check_consent(
    contact: Contact, re_enrolled: list[str], consent: ConsentEvidence | None, now: datetime
) -> None:
    if not re_enrolled:
        return
    what = _channel_names(re_enrolled)
    if consent is None or not consent.attested:
        raise ConsentRequired(
            f"Opting the contact back in to {what} is a re-enrolment: record how and when "
            "the contact asked, and confirm that they consented."
        )
    if consent.method not in ConsentMethod.values:
        raise ConsentRequired("Say how the contact asked to be opted back in.")
    if consent.obtained_at > now:
        raise ConsentRequired("The consent date is in the future.")
    # Consent given before the opt-out does not outlive it: the later opt-out stands. The
    # form records minutes, so the opt-out's own minute still counts as after.
    for channel, since in ChannelPreference.objects.filter(
        contact=contact, channel__in=re_enrolled
    ).values_list("channel", "changed_at"):
        if consent.obtained_at < since.replace(second=0, microsecond=0):
            raise ConsentRequired(
                f"The contact opted out of {Channel(channel).label.lower()} on "
                f"{timezone.localtime(since):%d %b %Y, %H:%M}, after the consent you recorded: "
                "the later opt-out stands. Record the consent they gave since."
            )


def _check_sender_consent(
    contact: Contact, scopes: Iterable[str], consent: ConsentEvidence | None, now: datetime
) -> None:
    """Lifting a sender opt-out is a re-enrolment: the same evidence as a channel's."""
    if consent is None or not consent.attested or not consent.method:
        raise ConsentRequired(
            "Opting a contact back in to a sender they opted out of needs their consent: "
            "how they asked, when, and your attestation."
        )
    if consent.method not in ConsentMethod.values:
        raise ConsentRequired("Say how the contact asked to be opted back in.")
    if consent.obtained_at > now:
        raise ConsentRequired("The consent date is in the future.")
    for scope, since in SenderSuppression.objects.filter(
        contact=contact, scope__in=list(scopes)
    ).values_list("scope", "since"):
        if consent.obtained_at < since.replace(second=0, microsecond=0):
            raise ConsentRequired(
                f"The contact opted out of {scope} on {timezone.localtime(since):%d %b %Y, %H:%M}"
                ", after the consent you recorded: the later opt-out stands. Record the "
                "consent they gave since."
            )


def apply_change(
    *,
    contact: Contact | int,
    actor: User | None,
    source: str,
    note: str,
    opt_out: Mapping[str, bool] | None = None,
    categories: Iterable[str] | None = None,
    bounced: bool | None = None,
    spam_report: bool = False,
    sender_opt_out: Mapping[str, bool] | None = None,
    consent: ConsentEvidence | None = None,
    expected_version: int | None = None,
    already_in: Iterable[str] = (),
    bulk_run: BulkRun | None = None,
) -> AuditEntry:
    """Apply one preference change and return its audit entry, or raise ChangeRefused.

    opt_out maps a channel to its wanted opt-out; categories is the full set of category
    keys the contact should receive; what is left as None stays as it is. bounced sets or
    clears the bounce flag, which is independent of the opt-out (docs/design.md, rule 10);
    spam_report flags a spam complaint (never cleared); sender_opt_out maps a sender's scope
    ("business_unit:510000002") to its wanted opt-out of that sender only, and clearing one
    is a re-enrolment that needs consent. already_in names sync targets that hold the new
    state already (a change read from Salesforce), so it is not sent back to them. bulk_run
    links the entry to the bulk change that made it.
    """
    note = note.strip()
    if not note:
        raise ChangeRefused("Write a note: every change needs one.")
    if "\x00" in note:  # PostgreSQL text cannot hold NUL; webhooks may send anything
        raise ChangeRefused("The note contains a character that cannot be stored (NUL).")
    opt_out = dict(opt_out or {})
    unknown = set(opt_out) - set(Channel.values)
    if unknown:
        raise ChangeRefused(f"Unknown channel: {', '.join(sorted(unknown))}.")
    wanted_categories = frozenset(categories) if categories is not None else None
    now = timezone.now()

    with transaction.atomic():
        contact_id = contact if isinstance(contact, int) else contact.pk
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [int(CHANGE_WINDOW_LOCK)])
        # The row lock orders concurrent changes to one contact; the version check below
        # then catches forms loaded before the other change.
        locked = Contact.objects.select_for_update().get(pk=contact_id)
        if locked.merged_into_id is not None:
            # Salesforce merged it away: the person's preferences live on the survivor now
            # (docs/design.md, "Contacts come from Salesforce"). A form was about the old one.
            survivor = locked.surviving_contact()
            if expected_version is not None:
                raise ChangeRefused(
                    f"This contact was merged into {survivor} in Salesforce. Nothing was "
                    "saved: make the change on that contact."
                )
            note = f"{note}\n(Received for {locked}, {locked.salesforce_id}, merged into "
            note += "this contact in Salesforce.)"
            locked = Contact.objects.select_for_update().get(pk=survivor.pk)
        if expected_version is not None and locked.version != expected_version:
            latest = locked.audit_entries.first()
            raise StaleChange(
                "Someone else changed this contact while you were editing"
                + (
                    f" ({latest.actor_label}, {timezone.localtime(latest.created_at):%H:%M})"
                    if latest
                    else ""
                )
                + ". Nothing was saved: check the current preferences and submit again.",
                latest=latest,
            )

        before = current_state(locked)
        after_opted_out = {**before.opted_out, **opt_out}
        re_enrolled = [c for c in Channel.values if before.opted_out[c] and not after_opted_out[c]]
        opted_out_now = [
            c for c in Channel.values if after_opted_out[c] and not before.opted_out[c]
        ]
        _check_consent(locked, re_enrolled, consent, now)
        sender_opt_out = dict(sender_opt_out or {})
        if bad := [scope for scope in sender_opt_out if not _SCOPE.fullmatch(scope)]:
            raise ChangeRefused(f"Not a sender: {', '.join(sorted(bad))}.")
        after_suppressed = frozenset(
            {scope for scope, out in sender_opt_out.items() if out}
            | {scope for scope in before.suppressed_for if sender_opt_out.get(scope, True)}
        )
        if lifting := before.suppressed_for - after_suppressed:
            _check_sender_consent(locked, lifting, consent, now)

        after_categories = before.categories if wanted_categories is None else wanted_categories
        known = dict(EmailCategory.objects.values_list("key", "is_active"))
        if strangers := after_categories - set(known):
            raise ChangeRefused(f"Unknown email category: {', '.join(sorted(strangers))}.")
        if inactive := {k for k in after_categories - before.categories if not known[k]}:
            raise ChangeRefused(f"Category no longer offered: {', '.join(sorted(inactive))}.")
        if after_opted_out[Channel.EMAIL]:
            if Channel.EMAIL in opted_out_now:
                after_categories = (
                    frozenset()
                )  # docs/design.md, rule 3: opting out turns every category off
            elif after_categories:
                raise ChangeRefused(
                    "The contact is opted out of email: opt them back in before choosing "
                    "email categories."
                )

        after = PreferenceState(
            after_opted_out,
            after_categories,
            before.bounced if bounced is None else bounced,
            before.spam_reported or spam_report,
            after_suppressed,
        )
        if after == before:
            raise ChangeRefused("Nothing to change: the preferences are already as submitted.")

        if re_enrolled or before.suppressed_for - after.suppressed_for:
            action = AuditAction.RE_ENROLMENT
        elif after.spam_reported != before.spam_reported:
            action = AuditAction.SPAM_REPORT
        elif opted_out_now:
            action = AuditAction.OPT_OUT
        elif after.suppressed_for != before.suppressed_for:
            action = AuditAction.SENDER_OPT_OUT
        elif after.categories != before.categories:
            action = AuditAction.CATEGORY_CHANGE
        else:
            action = AuditAction.BOUNCE

        changed_channels = [c for c in Channel.values if after.opted_out[c] != before.opted_out[c]]
        for channel in changed_channels:
            ChannelPreference.objects.update_or_create(
                contact=locked,
                channel=channel,
                defaults={
                    "opted_out": after.opted_out[channel],
                    "changed_at": now,
                    "changed_by": actor,
                    "source": source,
                    "note": note,
                },
            )
        if removed := before.categories - after.categories:
            Subscription.objects.filter(contact=locked, category__key__in=removed).delete()
        if added := after.categories - before.categories:
            ids = EmailCategory.objects.filter(key__in=added).values_list("pk", flat=True)
            Subscription.objects.bulk_create(
                Subscription(contact=locked, category_id=pk, subscribed_at=now) for pk in ids
            )

        if lifted := before.suppressed_for - after.suppressed_for:
            SenderSuppression.objects.filter(contact=locked, scope__in=lifted).delete()
        if suppressed := after.suppressed_for - before.suppressed_for:
            SenderSuppression.objects.bulk_create(
                SenderSuppression(contact=locked, scope=scope, since=now, source=source, note=note)
                for scope in sorted(suppressed)
            )

        locked.version += 1
        update_fields = ["version"]
        if after.bounced != before.bounced:
            locked.email_bounced = after.bounced
            locked.email_bounced_at = now if after.bounced else None
            update_fields += ["email_bounced", "email_bounced_at"]
        if after.spam_reported != before.spam_reported:
            locked.spam_reported_at = now
            update_fields.append("spam_reported_at")
        locked.save(update_fields=update_fields)

        consent_row = None
        if re_enrolled or lifted:
            assert consent is not None
            consent_row = Consent.objects.create(
                contact=locked,
                channels=re_enrolled or [Channel.EMAIL],
                method=consent.method,
                obtained_at=consent.obtained_at,
                attested=consent.attested,
                recorded_by=actor,
            )

        if (
            after.categories != before.categories
            or after.bounced != before.bounced
            or after.spam_reported != before.spam_reported
            or after.suppressed_for != before.suppressed_for
        ):
            changed_channels = sorted({*changed_channels, Channel.EMAIL})
        entry = record(
            action,
            created_at=now,
            actor=actor,
            source=source,
            contact=locked,
            contact_version=locked.version,
            channels=changed_channels,
            before=before.as_json(),
            after=after.as_json(),
            note=note,
            consent=consent_row,
            bulk_run=bulk_run,
        )
        # A bulk run asks for its pushes once per chunk instead: a message per contact would
        # flood the queue (and spend Salesforce calls) ahead of the run's own work.
        core.mark_behind(locked, already_in=already_in, now=now, notify=bulk_run is None)
        for hook in _after_change_hooks:
            hook(contact=locked, entry=entry)
    if isinstance(contact, Contact):
        contact.refresh_from_db()
    return entry


@dataclass(frozen=True)
class StartingState:
    """What the system that owns a contact holds for it when the app first learns of it."""

    contact_id: int
    opted_out: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()


def record_starting_states(
    states: Iterable[StartingState], *, source: str, note: str, already_in: Iterable[str] = ()
) -> int:
    """Record the first preferences of contacts just created from Salesforce (the initial
    load, or the pull meeting a new record): state, audit entry and sync marks, as
    apply_change() writes them, for many contacts at once and in the caller's transaction.

    Only for new contacts (version 0, no preferences): this is their starting point, not a
    change, so the rules about changes (consent to re-enrol, a note per change) have nothing
    to check, and a contact opted out of email keeps no category (docs/design.md, rule 3).
    One entry per contact with anything to record; contacts with nothing stay at version 0.
    Returns how many were recorded.
    """
    wanted = [state for state in states if state.opted_out or state.categories]
    if not wanted:
        return 0
    if unknown := {c for state in wanted for c in state.opted_out} - set(Channel.values):
        raise ChangeRefused(f"Unknown channel: {', '.join(sorted(unknown))}.")
    ids = [state.contact_id for state in wanted]
    if len(set(ids)) != len(ids):
        raise ChangeRefused("A contact has one starting state.")
    category_ids = dict(EmailCategory.objects.filter(is_active=True).values_list("key", "pk"))
    now = timezone.now()
    nothing = PreferenceState(dict.fromkeys(Channel.values, False))
    # Set-based, through a temporary table: the initial load records a million of these,
    # where the ORM's bulk_create spends longer building its INSERTs than the database takes
    # to run them (docs/design.md, "Initial load").
    with transaction.atomic(), connection.cursor() as cursor:
        _ignore_no_trigger(cursor)
        cursor.execute(
            f"""
            CREATE TEMP TABLE IF NOT EXISTS {_STARTING} (
                pos integer PRIMARY KEY,
                contact_id bigint NOT NULL,
                opted_out text[] NOT NULL,
                category_ids bigint[] NOT NULL,
                channels text[] NOT NULL,
                after jsonb NOT NULL
            ) ON COMMIT DELETE ROWS
            """
        )
        cursor.execute(f"TRUNCATE {_STARTING}")
        copy_sql = (
            f"COPY {_STARTING} (pos, contact_id, opted_out, category_ids, channels, after) "
            "FROM STDIN"
        )
        # Written as COPY text: a contact's row is its position, id and the columns of its
        # shape (the same opt-outs and categories give the same arrays and snapshot).
        shapes: dict[tuple[frozenset[str], frozenset[str]], str] = {}
        lines: list[str] = []
        for pos, state in enumerate(wanted):
            key = (frozenset(state.opted_out), frozenset(state.categories))
            shape = shapes.get(key)
            if shape is None:
                categories = (
                    frozenset()
                    if Channel.EMAIL in state.opted_out
                    else frozenset(k for k in state.categories if k in category_ids)
                )
                after = PreferenceState(
                    {c: c in state.opted_out for c in Channel.values}, categories
                )
                channels = set(state.opted_out) | ({Channel.EMAIL} if categories else set())
                shape = shapes[key] = "\t".join(
                    [
                        _copy_array(sorted(state.opted_out)),
                        _copy_array(str(category_ids[k]) for k in sorted(categories)),
                        _copy_array(sorted(channels)),
                        json.dumps(after.as_json()).translate(_COPY_ESCAPES),
                    ]
                )
            lines.append(f"{pos}\t{int(state.contact_id)}\t{shape}\n")
        with cursor.cursor.copy(copy_sql) as copy:
            copy.write("".join(lines))
        cursor.execute(
            f"""
            UPDATE preferences_contact c SET version = 1
            FROM {_STARTING} s WHERE c.id = s.contact_id AND c.version = 0
            """
        )
        if cursor.rowcount != len(ids):
            raise ChangeRefused("A starting state is only for a contact the app has just created.")
        cursor.execute(
            f"""
            INSERT INTO preferences_channelpreference
                (contact_id, channel, opted_out, changed_at, source, note)
            SELECT s.contact_id, channel, true, %s, %s, %s
            FROM {_STARTING} s CROSS JOIN LATERAL unnest(s.opted_out) AS channel
            ORDER BY s.pos, channel
            """,
            [now, source, note],
        )
        cursor.execute(
            f"""
            INSERT INTO preferences_subscription (contact_id, category_id, subscribed_at)
            SELECT s.contact_id, category_id, %s
            FROM {_STARTING} s
            CROSS JOIN LATERAL unnest(s.category_ids) WITH ORDINALITY AS c (category_id, n)
            ORDER BY s.pos, c.n
            """,
            [now],
        )
        # As audit.services.record_many writes them: no actor, the source's label.
        cursor.execute(
            f"""
            INSERT INTO audit_auditentry
                (created_at, actor_label, source, action, contact_id, contact_version,
                 channels, before, after, note)
            SELECT %s, %s, %s, %s, s.contact_id, 1, s.channels, %s::jsonb, s.after, %s
            FROM {_STARTING} s ORDER BY s.pos
            """,
            [
                now,
                Source(source).label,
                source,
                AuditAction.STARTING_STATE,
                json.dumps(nothing.as_json()),
                note,
            ],
        )
        _mark_starting_states_behind(cursor, set(already_in), now)
    return len(wanted)


_STARTING = "preferences_starting_states"
# COPY's text format: a backslash, tab, newline or carriage return in a value is escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_array(items: Iterable[str]) -> str:
    """An array literal of channel names or ids, which need no quoting."""
    return "{" + ",".join(items) + "}"


def _ignore_no_trigger(cursor: CursorWrapper) -> None:
    """Tell pgtrigger's triggers (the audit log's) that none is ignored in this transaction,
    unless something already is.

    Each of them first asks pgtrigger whether to ignore itself, reading the setting inside an
    exception block; unset, the read fails, and the failed subtransaction makes PostgreSQL
    scan every deferred trigger event the transaction has queued (each entry's seal). A
    transaction writing many entries would take quadratic time."""
    cursor.execute(
        "SELECT set_config('pgtrigger.ignore', '{}', true) "
        "WHERE coalesce(current_setting('pgtrigger.ignore', true), '') IN ('', '{}')"
    )


def _mark_starting_states_behind(cursor: CursorWrapper, told_us: set[str], now: datetime) -> None:
    """core.mark_many_behind() for the contacts in the temporary table, as one INSERT per
    target: each target that names the contact (and, if it drops inactive ones, only an
    active contact) gets a row at version 1, held by the targets that told us."""
    for found in core.targets():
        field = Contact._meta.get_field(found.match_on)
        if not isinstance(field, models.Field) or not field.column:
            raise TypeError(f"{found.name} is matched on {found.match_on}, not a column")
        column = connection.ops.quote_name(field.column)
        active = "AND c.inactive_since IS NULL" if found.active_only else ""
        holds = found.name in told_us
        cursor.execute(
            f"""
            INSERT INTO preferences_contactsync
                (contact_id, target, synced_version, notes_version, status, last_error,
                 attempts, updated_at, synced_at)
            SELECT c.id, %s, %s, %s, %s, '', 0, %s, %s
            FROM {_STARTING} s JOIN preferences_contact c ON c.id = s.contact_id
            WHERE c.{column} IS NOT NULL AND c.{column} <> '' {active}
            ORDER BY s.pos
            ON CONFLICT (contact_id, target) DO NOTHING
            """,
            [
                found.name,
                1 if holds else 0,
                1 if holds else 0,
                SyncStatus.SYNCED if holds else SyncStatus.PENDING,
                now,
                now if holds else None,
            ],
        )
    core.request_pushes(found.name for found in core.targets() if found.name not in told_us)


def escalate(*, contact: Contact, actor: User, note: str) -> Escalation:
    """Hand a request to a manager instead of deciding (docs/design.md, rule 12)."""
    note = note.strip()
    if not note:
        raise ChangeRefused("Write a note for the manager: what did the contact ask for?")
    with transaction.atomic():
        escalation = Escalation.objects.create(contact=contact, raised_by=actor, note=note)
        record(AuditAction.ESCALATION, actor=actor, contact=contact, note=note)
    return escalation


def resolve_escalation(*, escalation_id: int, actor: User, note: str) -> Escalation:
    note = note.strip()
    if not note:
        raise ChangeRefused("Write a note saying how the request was resolved.")
    with transaction.atomic():
        escalation = Escalation.objects.select_for_update().get(pk=escalation_id)
        if not escalation.is_open:
            raise ChangeRefused("This escalation has already been resolved.")
        escalation.resolved_by = actor
        escalation.resolved_at = timezone.now()
        escalation.resolution_note = note
        escalation.save(update_fields=["resolved_by", "resolved_at", "resolution_note"])
        record(
            AuditAction.ESCALATION_RESOLVED,
            actor=actor,
            contact_id=escalation.contact_id,
            note=note,
        )
    return escalation
