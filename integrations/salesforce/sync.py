"""Carrying preferences between Preference Desk and Salesforce: the Salesforce target's push,
and the inbound pull.

Outbound is state-based (integrations/core.py): a push sends each contact's current absolute
values and upserts its not-yet-sent notes as Tasks (on the change's id), so a repeat is
harmless and order cannot invert.

Inbound reads the contacts changed in Salesforce since a watermark and applies what differs
through apply_change(), with the conflict rule of docs/design.md ("Inbound changes"): the
most protective value (opted out) wins, unless the local change is a consent-backed
re-enrolment that is newer.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, Source
from integrations import core
from integrations.base import ConnectorError, PermanentError
from integrations.salesforce.client import (
    MAX_RECORDS,
    ContactPush,
    PushResult,
    SalesforceClient,
    note_task,
)
from lib.channels import SALESFORCE_FIELDS, Channel
from preferences.models import (
    ChannelPreference,
    Contact,
    ContactSync,
    EmailCategory,
    Subscription,
    SyncStatus,
    SyncWatermark,
)
from preferences.services import ChangeRefused, apply_change, current_state

logger = logging.getLogger(__name__)

TARGET = "salesforce"
SALESFORCE_ACTOR = "Salesforce sync"
WATERMARK = "salesforce_contacts"


def _salesforce_fields(
    opted_out: dict[str, bool], categories: set[str], category_fields: dict[str, str]
) -> dict[str, bool]:
    fields = {SALESFORCE_FIELDS[c]: opted_out.get(c, False) for c in Channel.values}
    for key, field_name in category_fields.items():
        fields[field_name] = key in categories
    return fields


def _active_category_fields() -> dict[str, str]:
    return dict(EmailCategory.objects.filter(is_active=True).values_list("key", "salesforce_field"))


@dataclass(frozen=True)
class Expected:
    """What Salesforce should hold for a contact: its fields at the app's version."""

    salesforce_id: str
    version: int
    fields: dict[str, bool]


def expected_values(contact_ids: Iterable[int]) -> dict[int, Expected]:
    """The Salesforce fields of each contact's current state, and the version they are.

    Versions are read before the state: a change committing in between makes the state
    newer than the version recorded, which only causes one more (harmless) push later.
    The other order could mark a contact synced with a state Salesforce never received.
    """
    ids = list(contact_ids)
    contacts = list(
        Contact.objects.filter(pk__in=ids).values_list("pk", "salesforce_id", "version")
    )
    opted_out: dict[int, dict[str, bool]] = {pk: {} for pk in ids}
    for pk, channel, value in ChannelPreference.objects.filter(contact_id__in=ids).values_list(
        "contact_id", "channel", "opted_out"
    ):
        opted_out[pk][channel] = value
    categories: dict[int, set[str]] = {pk: set() for pk in ids}
    for pk, key in Subscription.objects.filter(contact_id__in=ids).values_list(
        "contact_id", "category__key"
    ):
        categories[pk].add(key)
    category_fields = _active_category_fields()
    return {
        pk: Expected(
            salesforce_id,
            version,
            _salesforce_fields(opted_out[pk], categories[pk], category_fields),
        )
        for pk, salesforce_id, version in contacts
    }


def _build_pushes(rows: list[ContactSync]) -> tuple[list[ContactPush], dict[int, int]]:
    """The pushes for the claimed rows (each with the notes not yet sent as Tasks), and the
    contact version each one carries."""
    expected = expected_values(row.contact_id for row in rows)
    names = dict(EmailCategory.objects.values_list("key", "name"))
    wanted = Q(pk__in=[])
    for row in rows:
        wanted |= Q(
            contact_id=row.contact_id,
            contact_version__gt=row.synced_version,
            contact_version__lte=expected[row.contact_id].version,
        )
    notes: dict[int, list[dict[str, Any]]] = {row.contact_id: [] for row in rows}
    for entry in AuditEntry.objects.filter(wanted).select_related("consent").order_by("id"):
        notes[entry.contact_id].append(  # type: ignore[index]
            note_task(
                change_id=f"PD-{entry.pk}",
                who_id=expected[entry.contact_id].salesforce_id,  # type: ignore[index]
                subject=f"Preference change: {entry.get_action_display()}",
                description=_task_description(entry, names),
                activity_date=entry.created_at.date(),
            )
        )
    pushes = [
        ContactPush(
            salesforce_id=expected[row.contact_id].salesforce_id,
            fields=expected[row.contact_id].fields,
            tasks=notes[row.contact_id],
            version=expected[row.contact_id].version,
        )
        for row in rows
    ]
    return pushes, {pk: found.version for pk, found in expected.items()}


def _task_description(entry: AuditEntry, names: dict[str, str]) -> str:
    lines = [entry.note, "", *entry.describe_changes(names)]
    if entry.consent is not None:
        consent = entry.consent
        lines.append(
            f"Consent: {consent.get_method_display()} on "
            f"{consent.obtained_at.astimezone().isoformat(timespec='minutes')}, attested."
        )
    lines.append(
        f"Recorded in Preference Desk by {entry.actor_label} ({entry.get_source_display()}) "
        f"at {entry.created_at.isoformat(timespec='seconds')}, change PD-{entry.pk}."
    )
    return "\n".join(lines)


def push_batch(limit: int = MAX_RECORDS) -> core.BatchOutcome:
    """Claim up to `limit` contacts behind in Salesforce, push them, record each result."""
    now = timezone.now()
    token, rows = core.claim(TARGET, limit, now)
    outcome = core.BatchOutcome(claimed=len(rows))
    if not rows:
        return outcome
    pushes, versions = _build_pushes(rows)
    # One retry time for the whole batch: per-row jitter would split it into many calls.
    delay = timedelta(seconds=core.retry_delay(max(row.attempts for row in rows) + 1))
    results: list[PushResult] | None = None
    sent_at = timezone.now()
    try:
        with SalesforceClient() as client:
            results = client.push(pushes)
    except ConnectorError as error:
        message = f"{error.code}: {error}"
        done = timezone.now()
        retry_at = done + delay
        if error.outcome_unknown:
            # It may still land, after the retry: read the values back once it cannot.
            core.mark_uncertain([row.pk for row in rows], since=sent_at)
        for row in rows:
            if isinstance(error, PermanentError):
                _record_refusal(row, token, message, done)
                outcome.failed += 1
            else:
                core.record_transient(row, token, message, done, retry_at)
                outcome.retry += 1
                outcome.next_attempt_at = retry_at
        logger.warning("Salesforce push of %d contacts failed: %s", len(rows), message)
        return outcome

    done = timezone.now()
    retry_at = done + delay
    succeeded = []
    for row, result in zip(rows, results, strict=True):
        if result.held:  # superseded: Salesforce already holds a newer version of ours
            succeeded.append((row, versions[row.contact_id]))
        elif result.status == "transient":
            core.record_transient(row, token, f"{result.code}: {result.message}", done, retry_at)
            outcome.retry += 1
            outcome.next_attempt_at = retry_at
        else:
            _record_refusal(row, token, f"{result.code}: {result.message}", done)
            outcome.failed += 1
    core.record_successes(succeeded, token, done)
    outcome.synced = len(succeeded)
    return outcome


@dataclass
class VerifyOutcome:
    read: int = 0
    held: int = 0
    pushed_again: int = 0
    gone: int = 0


def verify_uncertain(limit: int = MAX_RECORDS) -> VerifyOutcome:
    """Read back the contacts whose push got no answer, once that request can no longer be
    running in Salesforce (SALESFORCE_MAX_REQUEST_SECONDS); push again those whose values
    differ from the app's. Without the org's ordering rule this is what undoes a late,
    older write; with it, this proves the rule held."""
    rows = core.uncertain_due(TARGET, settings.SALESFORCE_MAX_REQUEST_SECONDS, limit)
    outcome = VerifyOutcome()
    if not rows:
        return outcome
    contact_ids = [row.contact_id for row in rows]
    ids = dict(Contact.objects.filter(pk__in=contact_ids).values_list("pk", "salesforce_id"))
    with SalesforceClient() as client:
        names = [*_active_category_fields().values(), *SALESFORCE_FIELDS.values()]
        remote = {r["Id"]: r for r in client.get_contacts(ids.values(), names)}
    # The app's values read after Salesforce's: a change committing in between is pushed
    # anyway, so at worst this pushes once more than needed.
    expected = expected_values(contact_ids)
    differs: set[int] = set()
    for row in rows:
        found = remote.get(ids[row.contact_id])
        outcome.read += 1
        if found is None:
            outcome.gone += 1  # deleted or merged there: for reconciliation to show
            continue
        wanted = expected[row.contact_id].fields
        if any(bool(found.get(name)) != value for name, value in wanted.items()):
            differs.add(row.pk)
    outcome.pushed_again = core.settle_uncertain(rows, differs=differs)
    outcome.held = outcome.read - outcome.gone - len(differs)
    if differs:
        logger.warning(
            "Salesforce held other values than sent for %d contacts after an unanswered push; "
            "pushing them again",
            len(differs),
        )
    return outcome


# --- reconciliation --------------------------------------------------------------------------


def read_for_reconciliation(rows: core.RemoteRows) -> core.RemoteRead:
    """Every contact's opt-outs and categories as Salesforce holds them, through a Bulk API
    2.0 query, one result page at a time (integrations/reconcile.py compares them)."""
    category_fields = _active_category_fields()
    version_field = str(settings.SALESFORCE_VERSION_FIELD or "")
    fields = ["Id", *SALESFORCE_FIELDS.values(), *category_fields.values()]
    if version_field:
        fields.append(version_field)
    started = timezone.now()
    read = 0
    with SalesforceClient() as client:
        for page in client.bulk_query("Contact", fields):
            for record in csv.DictReader(io.StringIO(page)):
                version = record.get(version_field) if version_field else None
                rows.add(
                    record["Id"],
                    opted_out=[c for c, name in SALESFORCE_FIELDS.items() if _true(record[name])],
                    categories=[k for k, name in category_fields.items() if _true(record[name])],
                    version=int(float(version)) if version else None,
                )
                read += 1
            rows.flush()
    return core.RemoteRead(started, f"Bulk API 2.0 query: {read:,} contacts")


def _true(value: str) -> bool:
    return value.strip().lower() == "true"


# --- inbound ---------------------------------------------------------------------------------


def _remote_state(
    record: dict[str, Any], category_fields: dict[str, str]
) -> tuple[dict[str, bool], set[str]]:
    opted_out = {c: bool(record.get(SALESFORCE_FIELDS[c])) for c in Channel.values}
    categories = {key for key, field_name in category_fields.items() if record.get(field_name)}
    return opted_out, categories


def _newer_consented_reenrolment(contact: Contact, channel: str, remote_stamp: datetime) -> bool:
    """A local re-enrolment, with consent, made after Salesforce's change and not yet sent."""
    sync = ContactSync.objects.filter(contact=contact, target=TARGET).first()
    synced_version = sync.synced_version if sync else 0
    return AuditEntry.objects.filter(
        contact=contact,
        action=AuditAction.RE_ENROLMENT,
        channels__contains=[channel],
        consent__isnull=False,
        contact_version__gt=synced_version,
        created_at__gt=remote_stamp,
    ).exists()


def apply_inbound(
    record: dict[str, Any], category_fields: dict[str, str], own_user_id: str = ""
) -> str:
    """Apply one Salesforce contact's values; returns what was done (for the log)."""
    if own_user_id and record.get("LastModifiedById") == own_user_id:
        # Our own write read back: possibly an older version than ours now, which the
        # pending push will correct. Applying it would undo a newer local change.
        return "own write"
    contact = Contact.objects.filter(salesforce_id=record["Id"]).first()
    if contact is None:
        return "unknown contact"
    remote_out, remote_categories = _remote_state(record, category_fields)
    local = current_state(contact)
    local_active = {k for k in local.categories if k in category_fields}
    if dict(local.opted_out) == remote_out and local_active == remote_categories:
        return "same"  # includes our own writes read back: nothing echoes

    stamp: datetime = record["SystemModstamp"]
    opt_out: dict[str, bool] = {}
    for channel in Channel.values:
        remote_opted_out = remote_out[channel] and not local.opted_out[channel]
        if remote_opted_out and not _newer_consented_reenrolment(contact, channel, stamp):
            opt_out[channel] = True
        # Salesforce clearing an opt-out is not consent: the opted-out value stays and is
        # pushed back below.
    sync = ContactSync.objects.filter(contact=contact, target=TARGET).first()
    local_pending = sync is not None and sync.synced_version < contact.version
    email_out = opt_out.get(Channel.EMAIL, local.opted_out[Channel.EMAIL])
    categories: set[str] | None = None
    if not email_out and not local_pending and local_active != remote_categories:
        # Retired categories are not in Salesforce's picture: keep them as they are.
        categories = remote_categories | (local.categories - set(category_fields))

    applied = "kept local values"
    if opt_out or categories is not None:
        new_out = {**local.opted_out, **opt_out}
        new_categories = (
            set()
            if email_out
            else (categories if categories is not None else set(local.categories))
        )
        matches_remote = new_out == remote_out and (
            {k for k in new_categories if k in category_fields} == remote_categories
        )
        who = record.get("LastModifiedById", "an unknown user")
        try:
            apply_change(
                contact=contact,
                actor=None,
                source=Source.SALESFORCE,
                note=f"Changed in Salesforce by user {who} at {stamp.isoformat()}.",
                opt_out=opt_out or None,
                categories=categories,
                already_in=[TARGET] if matches_remote else [],
            )
            applied = "applied"
        except ChangeRefused as refused:
            logger.info("Inbound change for %s not applied: %s", contact.salesforce_id, refused)
            applied = "refused"
        contact.refresh_from_db()
        if matches_remote:
            return applied
    # Salesforce disagrees with what we keep: send our values back (no new change).
    ContactSync.objects.filter(contact=contact, target=TARGET).update(
        status=SyncStatus.PENDING, next_attempt_at=None
    )
    if not ContactSync.objects.filter(contact=contact, target=TARGET).exists():
        ContactSync.objects.create(contact=contact, target=TARGET, synced_version=contact.version)
    core.request_pushes([TARGET])
    return applied + ", pushed back"


def pull_from_salesforce() -> int:
    """Read contacts changed in Salesforce since the watermark; returns how many were read."""
    now = timezone.now()
    watermark, _ = SyncWatermark.objects.get_or_create(
        name=WATERMARK, defaults={"value": now - timedelta(days=1)}
    )
    # Salesforce stamps a transaction when it starts, so a write can commit with an earlier
    # stamp than one already read: stop a little in the past and read again from there.
    until = now - timedelta(seconds=settings.SYNC_PULL_LAG_SECONDS)
    category_fields = _active_category_fields()
    fields = [*SALESFORCE_FIELDS.values(), *category_fields.values()]
    seen = 0
    latest = watermark.value
    with SalesforceClient() as client:
        for record in client.changed_contacts(watermark.value, until, fields):
            apply_inbound(record, category_fields, client.user_id)
            latest = max(latest, record["SystemModstamp"])
            seen += 1
    SyncWatermark.objects.filter(pk=watermark.pk).update(value=max(latest, until))
    return seen


def _record_refusal(row: ContactSync, token: Any, error: str, now: datetime) -> None:
    core.record_permanent(
        row, token, error, now, system=SALESFORCE_ACTOR, refused="Salesforce refused the update"
    )


# Registered when the sync core discovers this module (integrations/core.py).
core.register(
    core.Target(
        name=TARGET,
        label="Salesforce",
        enabled_setting="SALESFORCE_ENABLED",
        push=push_batch,
        batch_size=MAX_RECORDS,
        reconcile=read_for_reconciliation,
        match_on="salesforce_id",
    )
)
