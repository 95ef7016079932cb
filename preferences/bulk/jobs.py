"""Bulk opt-outs (docs/design.md, rule 11): choose contacts, preview them, confirm with a
note, apply.

A run is a DRAFT while the manager looks at the preview (nothing is applied), QUEUED once
confirmed (the matching contacts are fixed as BulkItems in one INSERT ... SELECT), RUNNING
while a worker applies it, then DONE, or CANCELLED at any point before that.

A worker applies one item per transaction: apply_change() and the item's mark commit
together, so a worker killed at any instant leaves each item either applied and marked or
untouched, and whoever resumes the run starts at the first pending item. Only opt-outs: a
re-enrolment needs each contact's own consent (docs/design.md, rule 4).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import Count, Exists, F, JSONField, OuterRef, Q, QuerySet, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, Source
from audit.services import record
from integrations import core
from lib import background
from lib.channels import Channel
from lib.salesforce_ids import SALESFORCE_ID, salesforce_id_18
from preferences.models import (
    BulkItem,
    BulkItemState,
    BulkRun,
    BulkRunState,
    ChannelPreference,
    Contact,
    ContactQuerySet,
    Subscription,
)
from preferences.services import ChangeRefused, apply_change

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 20
CHUNK_SIZE = 100  # items read per query; the run's state is checked between chunks
# One task works a run for at most this long, then queues the rest: well inside the broker's
# visibility timeout (600 s), and a worker shutting down waits minutes, not hours.
SLICE_SECONDS = 300.0
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_ROWS = 50_000
MAX_PROBLEMS_KEPT = 1_000  # bad rows stored with the run; the count is kept in full
_LOOKUP_BATCH = 5_000

ACTIVE_STATES = [BulkRunState.QUEUED, BulkRunState.RUNNING]
FILTERS = ("country", "category", "opted_out")

# What process() reports (the task re-queues the run on MORE).
DONE = "done"
CANCELLED = "cancelled"
MORE = "more"  # the time slice ended with items left
BUSY = "busy"  # another worker holds the run
IDLE = "idle"  # nothing to do: a draft, a finished run, or no such run

RUN_TASK = "preferences.tasks.run_bulk_change"

_HEADERS = {
    "email",
    "emails",
    "emailaddress",
    "e-mail",
    "id",
    "contactid",
    "salesforceid",
    "salesforcecontactid",
    "sfid",
}


class UploadRefused(ChangeRefused):
    """The file as a whole cannot be used (too big, not text, no rows)."""


class StaleRun(ChangeRefused):
    """The run changed, or its selection did, since the manager saw the preview."""


# --- selecting contacts -------------------------------------------------------------------


def matching_contacts(channel: str, criteria: Mapping[str, Any]) -> ContactQuerySet:
    """The contacts a draft selects: every filter given must hold (AND), or the upload's.

    Criteria without a filter select nobody: a bulk change never means "everyone".
    """
    contacts = Contact.objects.all()
    if "contact_ids" in criteria:
        # An array parameter rather than IN (...): an upload may name more contacts than
        # one statement may carry parameters.
        ids = [int(pk) for pk in criteria["contact_ids"]]
        return contacts.filter(pk__in=RawSQL("SELECT unnest(%s::bigint[])", (ids,)))
    if not any(criteria.get(name) not in (None, "") for name in FILTERS):
        return contacts.none()
    if criteria.get("country"):
        contacts = contacts.filter(country=criteria["country"])
    if criteria.get("category"):
        contacts = contacts.filter(
            Exists(
                Subscription.objects.filter(
                    contact=OuterRef("pk"), category__key=criteria["category"]
                )
            )
        )
    if criteria.get("opted_out") is True:
        contacts = contacts.opted_out(channel)
    elif criteria.get("opted_out") is False:
        contacts = contacts.filter(
            ~Exists(
                ChannelPreference.objects.filter(
                    contact=OuterRef("pk"), channel=channel, opted_out=True
                )
            )
        )
    return contacts


def selected_contacts(run: BulkRun) -> ContactQuerySet:
    return matching_contacts(run.channel, run.criteria)


def describe(channel: str, criteria: Mapping[str, Any], category_names: Mapping[str, str]) -> str:
    """The selection in staff words, for lists and the run page."""
    if "upload" in criteria:
        count = criteria.get("contacts", 0)
        return f"Upload {criteria['upload']} ({count:,} contact{'' if count == 1 else 's'})"
    parts = []
    if criteria.get("country"):
        parts.append(f"country {criteria['country']}")
    if criteria.get("category"):
        key = criteria["category"]
        parts.append(f"subscribed to {category_names.get(key, key)}")
    name = Channel(channel).label.lower()
    if criteria.get("opted_out") is True:
        parts.append(f"already opted out of {name}")
    elif criteria.get("opted_out") is False:
        parts.append(f"not opted out of {name}")
    return ", ".join(parts) or "nobody"


# --- uploads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedUpload:
    rows: int  # data rows read (blank lines and the header aside)
    contact_ids: list[int]
    problems: list[dict[str, Any]]  # {"row": line number, "value": ..., "reason": ...}


def _printable(value: str) -> str:
    # PostgreSQL's JSON cannot hold NUL; other control characters would only confuse the page.
    return re.sub(r"[\x00-\x1f\x7f]", "\N{REPLACEMENT CHARACTER}", value)[:200]


def _batched(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _LOOKUP_BATCH):
        yield values[start : start + _LOOKUP_BATCH]


def _read_rows(data: bytes) -> Iterator[tuple[int, list[str]]]:
    """(line number, non-empty cells) of each non-blank row."""
    try:
        text = data.decode("utf-8-sig")  # a BOM, as Excel writes "CSV UTF-8", is dropped
    except UnicodeDecodeError:
        raise UploadRefused(
            "The file is not UTF-8 text. Save it as CSV (UTF-8) and upload it again."
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for cells in reader:
            values = [cell.strip() for cell in cells if cell.strip()]
            if values:
                yield reader.line_num, values
    except csv.Error as error:
        raise UploadRefused(f"Line {reader.line_num} is not valid CSV ({error}).") from None


def parse_upload(data: bytes) -> ParsedUpload:
    """Read a CSV of email addresses or Salesforce Contact IDs (15 or 18 characters), one a
    row, with or without a header; list every row that cannot be used, with the reason."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadRefused(
            f"The file is {len(data) / 1024 / 1024:.1f} MB; the limit is "
            f"{MAX_UPLOAD_BYTES // 1024 // 1024} MB ({MAX_UPLOAD_ROWS:,} rows). "
            "Split it into several bulk changes."
        )
    entries: list[tuple[int, str]] = []
    problems: list[dict[str, Any]] = []
    rows = 0

    def problem(line: int, value: str, reason: str) -> None:
        problems.append({"row": line, "value": _printable(value), "reason": reason})

    for position, (line, values) in enumerate(_read_rows(data)):
        if position == 0 and len(values) == 1 and _is_header(values[0]):
            continue
        rows += 1
        if rows > MAX_UPLOAD_ROWS:
            raise UploadRefused(
                f"The file has more than {MAX_UPLOAD_ROWS:,} rows. Split it into several "
                "bulk changes."
            )
        if len(values) > 1:
            problem(
                line,
                ", ".join(values),
                f"One email address or Salesforce ID per row; this row has {len(values)} values.",
            )
            continue
        entries.append((line, values[0]))
    if not rows:
        raise UploadRefused("The file has no rows: one email address or Salesforce ID per row.")

    keys: list[tuple[int, str, str, str]] = []  # line, value, kind, lookup key
    for line, value in entries:
        if "@" in value:
            email = value.lower()
            try:
                validate_email(email)
            except ValidationError:
                problem(line, value, "Not a valid email address.")
                continue
            keys.append((line, value, "email", email))
        elif SALESFORCE_ID.match(value):
            keys.append((line, value, "id", salesforce_id_18(value)))
        else:
            problem(
                line, value, "Neither an email address nor a Salesforce ID (15 or 18 characters)."
            )

    by_email: dict[str, list[int]] = {}
    for batch in _batched(sorted({k for _, _, kind, k in keys if kind == "email"})):
        for email, pk in Contact.objects.filter(email__in=batch).values_list("email", "pk"):
            by_email.setdefault(email, []).append(pk)
    by_id: dict[str, int] = {}
    for batch in _batched(sorted({k for _, _, kind, k in keys if kind == "id"})):
        by_id.update(
            Contact.objects.filter(salesforce_id__in=batch).values_list("salesforce_id", "pk")
        )

    seen_values: dict[str, int] = {}
    seen_contacts: dict[int, int] = {}
    contact_ids: list[int] = []
    for line, value, kind, key in keys:
        if key in seen_values:
            problem(line, value, f"Duplicate of row {seen_values[key]}.")
            continue
        seen_values[key] = line
        if kind == "email":
            found = by_email.get(key, [])
            if not found:
                problem(line, value, "No contact has this email address.")
                continue
            if len(found) > 1:
                problem(
                    line,
                    value,
                    f"{len(found)} contacts share this email address: list them by Salesforce "
                    "ID instead.",
                )
                continue
            pk = found[0]
        else:
            if key not in by_id:
                problem(line, value, "No contact has this Salesforce ID.")
                continue
            pk = by_id[key]
        if pk in seen_contacts:
            problem(line, value, f"Duplicate: the same contact as row {seen_contacts[pk]}.")
            continue
        seen_contacts[pk] = line
        contact_ids.append(pk)
    problems.sort(key=lambda p: p["row"])
    return ParsedUpload(rows, contact_ids, problems)


def _is_header(value: str) -> bool:
    return re.sub(r"[\s_]", "", value.lower()) in _HEADERS


# --- drafts and the preview ---------------------------------------------------------------


def _check_channel(channel: str) -> None:
    if channel not in Channel.values:
        raise ChangeRefused(f"Unknown channel: {channel}.")


def draft_from_filters(*, actor: User, channel: str, criteria: Mapping[str, Any]) -> BulkRun:
    _check_channel(channel)
    wanted = {k: v for k, v in criteria.items() if k in FILTERS and v not in (None, "")}
    if not wanted:
        raise ChangeRefused("Choose at least one filter: a bulk change never selects everyone.")
    return BulkRun.objects.create(channel=channel, criteria=wanted, created_by=actor)


def draft_from_upload(*, actor: User, channel: str, filename: str, data: bytes) -> BulkRun:
    _check_channel(channel)
    parsed = parse_upload(data)
    return BulkRun.objects.create(
        channel=channel,
        criteria={
            "upload": _printable(filename) or "upload.csv",
            "rows": parsed.rows,
            "bad_rows": len(parsed.problems),
            "contacts": len(parsed.contact_ids),
            "contact_ids": parsed.contact_ids,
        },
        problems=parsed.problems[:MAX_PROBLEMS_KEPT],
        created_by=actor,
    )


@dataclass(frozen=True)
class Preview:
    count: int
    already_opted_out: int  # will be skipped: nothing to change
    sample: list[Contact]


def preview(run: BulkRun) -> Preview:
    contacts = selected_contacts(run)
    count = contacts.count()
    if not count:
        return Preview(0, 0, [])
    return Preview(
        count,
        contacts.opted_out(run.channel).count(),
        list(contacts.order_by("pk")[:SAMPLE_SIZE]),
    )


def public_criteria(run: BulkRun) -> dict[str, Any]:
    """The criteria as shown and audited: an upload's contacts are in its items, not here."""
    return {k: v for k, v in run.criteria.items() if k != "contact_ids"}


def runs_for_list(limit: int = 100) -> QuerySet[BulkRun]:
    """The newest runs, each with `summary`: its criteria without an upload's contact ids
    (up to 50,000 numbers a run, which the list has no use for)."""
    return (
        BulkRun.objects.select_related("created_by")
        .defer("criteria", "problems")
        .annotate(
            summary=RawSQL(
                "preferences_bulkrun.criteria - 'contact_ids'", (), output_field=JSONField()
            )
        )[:limit]
    )


# --- confirming and cancelling ------------------------------------------------------------


def _refuse_unless_draft(run: BulkRun) -> None:
    if run.state == BulkRunState.DRAFT:
        return
    if run.state == BulkRunState.CANCELLED:
        raise StaleRun("This bulk change was cancelled. Start a new one.")
    raise StaleRun(
        f"This bulk change was already confirmed on "
        f"{timezone.localtime(run.confirmed_at):%d %b %Y, %H:%M}; nothing was applied twice."
        if run.confirmed_at
        else "This bulk change was already confirmed; nothing was applied twice."
    )


def confirm(*, run_id: int, actor: User, note: str, expected_total: int | None = None) -> BulkRun:
    """Fix the selection as items, queue the run and record who confirmed it and why.

    expected_total is the count the manager saw: if the selection has changed since, nothing
    is queued and StaleRun says so.
    """
    note = note.strip()
    if not note:
        raise ChangeRefused(
            "Write a note: every change needs one. It goes on each contact's history and to "
            "Salesforce."
        )
    if "\x00" in note:
        raise ChangeRefused("The note contains a character that cannot be stored (NUL).")
    with transaction.atomic():
        # The row lock makes a double submit (or two managers) wait here, then see QUEUED.
        run = BulkRun.objects.select_for_update().get(pk=run_id)
        _refuse_unless_draft(run)
        total = _snapshot(run)
        if not total:
            raise ChangeRefused("No contact matches this selection: there is nothing to apply.")
        if expected_total is not None and total != expected_total:
            raise StaleRun(
                f"The selection changed since the preview: it showed {expected_total:,} "
                f"contacts, now {total:,} match. Nothing was applied: check the preview "
                "again and confirm."
            )
        now = timezone.now()
        run.state = BulkRunState.QUEUED
        run.note = note
        run.confirmed_at = now
        run.total = total
        run.save(update_fields=["state", "note", "confirmed_at", "total"])
        record(
            AuditAction.BULK,
            created_at=now,
            actor=actor,
            source=Source.BULK,
            channels=[run.channel],
            after={
                "event": "confirmed",
                "opt_out": run.channel,
                "criteria": public_criteria(run),
                "contacts": total,
            },
            note=note,
            bulk_run=run,
        )
        transaction.on_commit(partial(enqueue, run.pk))
    return run


def _snapshot(run: BulkRun) -> int:
    """Insert one pending item per selected contact in one statement: fast for a million."""
    contacts = selected_contacts(run).values("pk")
    sql, params = contacts.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {BulkItem._meta.db_table} (run_id, contact_id, state, detail) "
            f"SELECT %s, selected.id, %s, '' FROM ({sql}) AS selected (id) ORDER BY selected.id",
            [run.pk, BulkItemState.PENDING, *params],
        )
        return cursor.rowcount


def enqueue(run_id: int) -> None:
    """Ask a worker to start. If the broker is down the run waits for resume_bulk_runs."""
    background.send(RUN_TASK, [run_id])


def cancel(*, run_id: int, actor: User) -> BulkRun:
    """Stop a run: no item is applied after this returns. A draft is simply discarded."""
    with transaction.atomic():
        # Waits for the item a worker is applying (it holds the run FOR SHARE), so the counts
        # below are final: every later item sees the run cancelled and is left alone.
        run = BulkRun.objects.select_for_update().get(pk=run_id)
        if run.state == BulkRunState.DONE:
            raise StaleRun("This bulk change has already finished: there is nothing to cancel.")
        if run.state == BulkRunState.CANCELLED:
            raise StaleRun("This bulk change was already cancelled.")
        was = run.state
        now = timezone.now()
        run.state = BulkRunState.CANCELLED
        run.cancelled_by = actor
        run.finished_at = now
        run.claimed_until = None
        run.save(update_fields=["state", "cancelled_by", "finished_at", "claimed_until"])
        if was != BulkRunState.DRAFT:
            counts = item_counts(run.pk)
            record(
                AuditAction.BULK_CANCELLED,
                created_at=now,
                actor=actor,
                source=Source.BULK,
                channels=[run.channel],
                after={"event": "cancelled", **counts},
                note=(
                    f"Bulk change {run.pk} cancelled: {counts['applied']:,} opted out, "
                    f"{counts['skipped']:,} skipped, {counts['pending']:,} not applied."
                ),
                bulk_run=run,
            )
    return run


# --- progress -----------------------------------------------------------------------------


def item_counts(run_id: int) -> dict[str, int]:
    counts = dict.fromkeys(BulkItemState.values, 0)
    for state, number in (
        BulkItem.objects.filter(run_id=run_id)
        .values_list("state")
        .annotate(number=Count("id"))
        .order_by()
    ):
        counts[state] = number
    return counts


@dataclass(frozen=True)
class Progress:
    total: int
    applied: int
    skipped: int
    pending: int

    @property
    def done(self) -> int:
        return self.applied + self.skipped

    @property
    def percent(self) -> int:
        return self.done * 100 // self.total if self.total else 0


def progress(run: BulkRun) -> Progress:
    counts = item_counts(run.pk)
    return Progress(
        run.total,
        counts[BulkItemState.APPLIED],
        counts[BulkItemState.SKIPPED],
        counts[BulkItemState.PENDING],
    )


# --- the worker -----------------------------------------------------------------------------


class _Lease:
    """The run's claimed_until, held by one worker. The timestamp it wrote is its token: a
    renewal that finds another value knows another worker has taken the run over."""

    def __init__(self, run_id: int, until: datetime) -> None:
        self.run_id = run_id
        self.until = until
        self.renewed_at = time.monotonic()

    @classmethod
    def claim(cls, run_id: int) -> _Lease | None:
        now = timezone.now()
        until = now + timedelta(seconds=settings.BULK_LEASE_SECONDS)
        # One conditional UPDATE: of two workers claiming at once, exactly one matches.
        claimed = (
            BulkRun.objects.filter(pk=run_id, state__in=ACTIVE_STATES)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .update(
                state=BulkRunState.RUNNING,
                claimed_until=until,
                started_at=Coalesce(F("started_at"), Value(now)),
            )
        )
        return cls(run_id, until) if claimed else None

    def keep(self) -> bool:
        """Renew once a third of the lease has passed; False if the run is no longer ours."""
        seconds = settings.BULK_LEASE_SECONDS
        if time.monotonic() - self.renewed_at < seconds / 3:
            return True
        until = timezone.now() + timedelta(seconds=seconds)
        if not BulkRun.objects.filter(pk=self.run_id, claimed_until=self.until).update(
            claimed_until=until
        ):
            return False
        self.until = until
        self.renewed_at = time.monotonic()
        return True

    def release(self) -> None:
        BulkRun.objects.filter(pk=self.run_id, claimed_until=self.until).update(claimed_until=None)


def process(run_id: int, *, max_seconds: float | None = None) -> str:
    """Apply a confirmed run's pending items, in id order, until none is left, the run is
    cancelled or max_seconds have passed. Safe to call twice or concurrently."""
    lease = _Lease.claim(run_id)
    if lease is None:
        state = BulkRun.objects.filter(pk=run_id).values_list("state", flat=True).first()
        return BUSY if state in ACTIVE_STATES else IDLE
    try:
        run = BulkRun.objects.get(pk=run_id)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        return _work(run, _confirmed_by(run), lease, deadline)
    finally:
        lease.release()


def _confirmed_by(run: BulkRun) -> User:
    """The manager who confirmed the run: the actor of every change it makes."""
    entry = (
        AuditEntry.objects.filter(bulk_run=run, action=AuditAction.BULK, contact__isnull=True)
        .select_related("actor")
        .order_by("id")
        .first()
    )
    if entry is not None and entry.actor is not None:
        return entry.actor
    return run.created_by


def _work(run: BulkRun, actor: User, lease: _Lease, deadline: float | None) -> str:
    pending = BulkItem.objects.filter(run_id=run.pk, state=BulkItemState.PENDING)
    after_id = 0
    while True:
        chunk = list(
            pending.filter(pk__gt=after_id)
            .order_by("pk")
            .values_list("pk", "contact_id")[:CHUNK_SIZE]
        )
        if not chunk:
            if not pending.exists():
                return _finish(run)
            # Items another worker is applying this instant: look again from the start.
            if not lease.keep():
                return BUSY
            after_id = 0
            time.sleep(0.2)
        for item_id, contact_id in chunk:
            if not lease.keep():
                return BUSY
            _apply_item(run, actor, item_id, contact_id)
        if chunk:
            after_id = chunk[-1][0]
            # One push per target for the chunk; apply_change leaves them to the run.
            core.request_pushes()
        state = BulkRun.objects.filter(pk=run.pk).values_list("state", flat=True).get()
        if state != BulkRunState.RUNNING:
            return CANCELLED if state == BulkRunState.CANCELLED else IDLE
        if deadline is not None and time.monotonic() >= deadline:
            return MORE


_LOCK_ITEM = f"""
    SELECT item.id
      FROM {BulkItem._meta.db_table} AS item
      JOIN {BulkRun._meta.db_table} AS run ON run.id = item.run_id
     WHERE item.id = %s AND item.state = %s AND run.state = %s
       FOR UPDATE OF item SKIP LOCKED
       FOR SHARE OF run
"""


def _apply_item(run: BulkRun, actor: User, item_id: int, contact_id: int) -> None:
    """One contact, one transaction: the change, its audit entry and the item's mark."""
    with transaction.atomic():
        # SKIP LOCKED: an item another worker is applying is left to it. FOR SHARE on the
        # run: cancel() waits for this item, and once it has committed no item matches.
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_ITEM, [item_id, BulkItemState.PENDING, BulkRunState.RUNNING])
            if cursor.fetchone() is None:
                return  # applied already, being applied elsewhere, or the run was cancelled
        try:
            entry = apply_change(
                contact=contact_id,
                actor=actor,
                source=Source.BULK,
                note=run.note,
                opt_out={run.channel: True},
                bulk_run=run,
            )
        except ChangeRefused as refused:  # already opted out, say: apply_change rolled back
            BulkItem.objects.filter(pk=item_id).update(
                state=BulkItemState.SKIPPED, detail=str(refused)
            )
        else:
            BulkItem.objects.filter(pk=item_id).update(
                state=BulkItemState.APPLIED, audit_entry=entry
            )


def _finish(run: BulkRun) -> str:
    now = timezone.now()
    with transaction.atomic():
        finished = BulkRun.objects.filter(pk=run.pk, state=BulkRunState.RUNNING).update(
            state=BulkRunState.DONE, finished_at=now, claimed_until=None
        )
        if not finished:  # cancelled meanwhile, or another worker finished it
            return IDLE
        counts = item_counts(run.pk)
        record(
            AuditAction.BULK_FINISHED,
            created_at=now,
            source=Source.BULK,
            channels=[run.channel],
            after={"event": "done", **counts},
            note=(
                f"Bulk change {run.pk} finished: {counts['applied']:,} opted out of "
                f"{Channel(run.channel).label.lower()}, {counts['skipped']:,} skipped."
            ),
            bulk_run=run,
        )
    return DONE


def runs_to_resume() -> list[int]:
    """Confirmed runs no worker holds: never started (a lost message) or whose worker died."""
    now = timezone.now()
    return list(
        BulkRun.objects.filter(state__in=ACTIVE_STATES)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def skipped_items(run: BulkRun, limit: int = 50) -> Iterable[BulkItem]:
    return (
        BulkItem.objects.filter(run=run, state=BulkItemState.SKIPPED)
        .select_related("contact")
        .order_by("pk")[:limit]
    )
