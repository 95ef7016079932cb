"""Carrying preferences to Salesforce: the Salesforce target's push, and the read-back of
pushes whose answer never came. What is read from Salesforce is in inbound.py.

Outbound is state-based (integrations/core.py): a push sends each contact's current absolute
values, to its own object (Contact, Lead or Person Account: objects.py), and its
not-yet-sent notes as Tasks matched on the change's id, so a repeat is harmless and order
cannot invert. Values and notes are recorded apart: a refused Task leaves the values held
(synced_version) and only the notes behind (notes_version), to be sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from audit.models import AuditEntry
from integrations import core
from integrations.base import ConnectorError, PermanentError
from integrations.salesforce import inbound, objects
from integrations.salesforce.client import (
    MAX_RECORDS,
    ContactPush,
    PushResult,
    SalesforceClient,
    SalesforceSettings,
    TaskMatch,
    note_task,
)
from integrations.salesforce.objects import SalesforceObject
from lib.channels import Channel
from preferences.models import (
    ChannelPreference,
    Contact,
    ContactKind,
    ContactSync,
    EmailCategory,
    Subscription,
)

logger = logging.getLogger(__name__)

TARGET = "salesforce"
SALESFORCE_ACTOR = "Salesforce sync"


def _salesforce_fields(
    found: SalesforceObject,
    opted_out: dict[str, bool],
    categories: set[str],
    category_fields: dict[str, str],
) -> dict[str, bool]:
    """The object's opt-out fields and, if it has them, its category checkboxes."""
    fields = {found.opt_out_fields[c]: opted_out.get(c, False) for c in Channel.values}
    for key, field_name in found.category_fields(category_fields).items():
        fields[field_name] = key in categories
    return fields


def _active_category_fields() -> dict[str, str]:
    return inbound.active_category_fields()


@dataclass(frozen=True)
class Expected:
    """What Salesforce should hold for a contact: its record's fields (of the object its
    kind is) at the app's version, and whom its Tasks name."""

    salesforce_id: str
    version: int
    fields: dict[str, bool]
    kind: str = ContactKind.CONTACT
    who_id: str = ""  # Task.WhoId: a Person Account's PersonContactId, else salesforce_id

    @property
    def object(self) -> SalesforceObject:
        return objects.BY_KIND[self.kind]


def expected_values(contact_ids: Iterable[int]) -> dict[int, Expected]:
    """The Salesforce fields of each contact's current state, and the version they are.

    Versions are read before the state: a change committing in between makes the state
    newer than the version recorded, which only causes one more (harmless) push later.
    The other order could mark a contact synced with a state Salesforce never received.
    """
    ids = list(contact_ids)
    contacts = list(
        Contact.objects.filter(pk__in=ids).values_list(
            "pk", "salesforce_id", "version", "kind", "person_contact_id"
        )
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
    found: dict[int, Expected] = {}
    for pk, salesforce_id, version, kind, person_contact_id in contacts:
        fields = _salesforce_fields(
            objects.BY_KIND[kind], opted_out[pk], categories[pk], category_fields
        )
        who = person_contact_id if kind == ContactKind.PERSON_ACCOUNT else salesforce_id
        found[pk] = Expected(salesforce_id, version, fields, kind, who)
    return found


def _build_pushes(
    rows: list[ContactSync], *, task_match: TaskMatch = "upsert", now: datetime | None = None
) -> tuple[list[ContactPush], dict[int, int], dict[int, datetime]]:
    """The pushes for the claimed rows, each with the notes not yet in Salesforce as Tasks;
    the contact version each one carries; and the contacts whose notes are held back, with
    when they may go.

    Notes are those after notes_version, not synced_version: a note Salesforce refused
    where it took the values is still to send. In query mode (SALESFORCE_TASK_MATCH) a
    contact whose earlier push may still land keeps its notes back until it cannot: that
    request may yet create a Task the query before this one's creation would not see
    (docs/design.md, "Sent is not held"). Its values go regardless.
    """
    now = now or timezone.now()
    expected = expected_values(row.contact_id for row in rows)
    names = dict(EmailCategory.objects.values_list("key", "name"))
    wanted = Q(pk__in=[])
    for row in rows:
        wanted |= Q(
            contact_id=row.contact_id,
            contact_version__gt=row.notes_version,
            contact_version__lte=expected[row.contact_id].version,
        )
    notes: dict[int, list[dict[str, Any]]] = {row.contact_id: [] for row in rows}
    for entry in AuditEntry.objects.filter(wanted).select_related("consent").order_by("id"):
        notes[entry.contact_id].append(  # type: ignore[index]
            note_task(
                change_id=f"PD-{entry.pk}",
                who_id=expected[entry.contact_id].who_id,  # type: ignore[index]
                subject=f"Preference change: {entry.get_action_display()}",
                description=_task_description(entry, names),
                activity_date=entry.created_at.date(),
            )
        )
    window = timedelta(seconds=settings.SALESFORCE_MAX_REQUEST_SECONDS)
    held: dict[int, datetime] = {}
    pushes = []
    for row in rows:
        found = expected[row.contact_id]
        tasks = notes[row.contact_id]
        uncertain = row.uncertain_since
        if task_match == "query" and tasks and uncertain and uncertain + window > now:
            held[row.contact_id] = uncertain + window
            tasks = []
        pushes.append(
            ContactPush(
                salesforce_id=found.salesforce_id,
                fields=found.fields,
                tasks=tasks,
                version=found.version,
                object_name=found.object.name,
                who_id=found.who_id,
                version_field=found.object.version_field,
            )
        )
    return pushes, {pk: found.version for pk, found in expected.items()}, held


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
    config = SalesforceSettings.from_django()
    pushes, versions, held = _build_pushes(rows, task_match=config.task_match, now=now)
    # One retry time for the whole batch: per-row jitter would split it into many calls.
    delay = timedelta(seconds=core.retry_delay(max(row.attempts for row in rows) + 1))
    results: list[PushResult] | None = None
    sent_at = timezone.now()
    # In query mode a note's Task is created when the query finds none, so a request of
    # ours still on its way could create it a second time. Marked before sending: should
    # this worker die waiting, the next push holds those notes back until it cannot land.
    creating = []
    if config.task_match == "query":
        creating = [row.pk for row, push in zip(rows, pushes, strict=True) if push.tasks]
        if creating:
            core.mark_in_flight(
                creating, since=sent_at, max_request_seconds=settings.SALESFORCE_MAX_REQUEST_SECONDS
            )
    try:
        with SalesforceClient(config) as client:
            results = client.push(pushes)
    except ConnectorError as error:
        message = f"{error.code}: {error}"
        done = timezone.now()
        retry_at = done + delay
        if error.outcome_unknown:
            # It may still land, after the retry: read the values back once it cannot.
            core.mark_uncertain([row.pk for row in rows], since=sent_at)
        elif creating:
            core.clear_in_flight(creating, since=sent_at)
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

    if creating:
        core.clear_in_flight(creating, since=sent_at)  # answered: nothing of it can land later
    done = timezone.now()
    retry_at = done + delay
    succeeded = []
    for row, result in zip(rows, results, strict=True):
        version = versions[row.contact_id]
        if not result.held:
            if result.status == "transient":
                refused = f"{result.code}: {result.message}"
                core.record_transient(row, token, refused, done, retry_at)
                outcome.retry += 1
                _retry_at(outcome, retry_at)
            else:
                _record_refusal(row, token, f"{result.code}: {result.message}", done)
                outcome.failed += 1
        elif not result.notes_sent:
            # allOrNone false: the values stand whatever became of the note (client.push).
            note = f"{result.notes_code}: {result.notes_message}"
            if result.notes_status == "transient":
                refused = f"Salesforce holds the preferences; the note will be sent again: {note}"
                core.record_notes_behind(
                    row, token, done, version=version, retry_at=retry_at, error=refused
                )
                outcome.retry += 1
                _retry_at(outcome, retry_at)
            else:
                refused = f"Salesforce holds the preferences but refused the note: {note}"
                core.record_notes_behind(
                    row,
                    token,
                    done,
                    version=version,
                    retry_at=None,
                    error=refused,
                    failed=True,
                    system=SALESFORCE_ACTOR,
                )
                outcome.failed += 1
        elif row.contact_id in held:
            until = held[row.contact_id]
            core.record_notes_behind(row, token, done, version=version, retry_at=until)
            outcome.retry += 1
            _retry_at(outcome, until)
        else:  # superseded too: Salesforce already holds a newer version of ours
            succeeded.append((row, version))
    core.record_successes(succeeded, token, done)
    outcome.synced = len(succeeded)
    return outcome


def _retry_at(outcome: core.BatchOutcome, when: datetime) -> None:
    """The batch's next push: the earliest retry (the sweeper finds any later ones)."""
    if outcome.next_attempt_at is None or when < outcome.next_attempt_at:
        outcome.next_attempt_at = when


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
    ids: dict[int, str] = {}
    by_kind: dict[str, list[str]] = {}
    for pk, salesforce_id, kind in Contact.objects.filter(pk__in=contact_ids).values_list(
        "pk", "salesforce_id", "kind"
    ):
        ids[pk] = salesforce_id
        by_kind.setdefault(kind, []).append(salesforce_id)
    category_fields = _active_category_fields()
    remote: dict[str, dict[str, Any]] = {}
    with SalesforceClient() as client:
        for kind, salesforce_ids in by_kind.items():  # each object's records from it
            kept_in = objects.BY_KIND[kind]
            names = [
                *kept_in.opt_out_fields.values(),
                *kept_in.category_fields(category_fields).values(),
            ]
            if kept_in is objects.CONTACT:
                records = client.get_contacts(salesforce_ids, names)
            else:
                records = client.get_records(kept_in.name, salesforce_ids, names)
            remote.update((record["Id"], record) for record in records)
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
        reconcile=inbound.read_for_reconciliation,
        active_only=True,
        match_on="salesforce_id",
    )
)
