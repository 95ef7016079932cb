"""The Ascend target: the nightly change file (docs/design.md, rule 7).

Ascend takes files, not API calls. Each run covers the audit entries (after_id, up_to_id]
and lists, one row per channel, every opt-out that went FALSE→TRUE or TRUE→FALSE in them.
The next window starts where the last *delivered* run ended, so a failed night is carried
into the next one and nothing is lost; the window's upper bound is read under the change
window lock, so no change falls between two nights. The rows come from the append-only
audit log in id order, so re-running a window writes the same bytes.

The file is written to a staging directory under a temporary name and renamed when
complete, then delivered the same way by the connector (client.py) to a directory or an
SFTP server, chosen by ``ASCEND_DESTINATION``. Ascend never sees a partial file.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import BooleanField, CharField, Func, Max, Q
from django.db.models.fields.json import KT, KeyTextTransform
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from audit.services import record
from integrations import core
from integrations.ascend.client import (
    AscendExportError,
    destination,
    fsync_directory,
    remove_stale_temp_files,
)
from lib.channels import SALESFORCE_FIELDS
from lib.locks import AdvisoryLock
from lib.spreadsheet import safe_row
from preferences.models import AscendRun, SyncStatus

logger = logging.getLogger(__name__)

HEADER = [
    "ascend_id",
    "salesforce_id",
    "field",
    "old_value",
    "new_value",
    "changed_at",
    "changed_by",
    "source",
    "change_id",
]
TARGET = "ascend"
ACTOR_LABEL = "Ascend export"
# Held (session-level) for a whole export, so two exports (beat and a manual re-run, or two
# workers) cannot deliver overlapping windows. Its own lock: committing changes take the
# audit seal lock, and an export holding that for minutes would hold every change too.
EXPORT_LOCK = AdvisoryLock.ASCEND_EXPORT
CHANGE_WINDOW_LOCK = AdvisoryLock.CHANGE_WINDOW
# How long reading the window may wait for in-flight changes to commit before giving up.
WINDOW_LOCK_TIMEOUT = "60s"
_CHUNK = 5_000


# --- the window and the rows -----------------------------------------------------------------


def next_window() -> tuple[int, int]:
    """The audit ids (after_id, up_to_id] the next run covers."""
    after_id = (
        AscendRun.objects.filter(delivered_at__isnull=False)
        .order_by("-up_to_id")
        .values_list("up_to_id", flat=True)
        .first()
    ) or 0
    with transaction.atomic(), connection.cursor() as cursor:
        # Audit ids come from a sequence when the row is inserted, not when it commits, so a
        # change can commit with an id below a max(id) read a moment earlier, and would then
        # fall between two nights. apply_change holds CHANGE_WINDOW_LOCK shared for its whole
        # transaction; taking it exclusively waits for every change in flight to commit (or
        # roll back) and holds new ones off, so when max(id) is read every entry up to it is
        # visible (READ COMMITTED: the SELECT takes its snapshot after the lock is granted),
        # and any later change gets a larger id. The lock is held for an instant only.
        # set_config, not SET: SET takes no bind parameters under server-side binding.
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [WINDOW_LOCK_TIMEOUT])
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int(CHANGE_WINDOW_LOCK)])
        up_to_id = AuditEntry.objects.aggregate(newest=Max("id"))["newest"] or 0
    return after_id, max(after_id, up_to_id)


class _IsDistinctFrom(Func):
    # NULL-safe inequality, so an entry whose snapshot lacks a channel is not dropped in SQL.
    arg_joiner = " IS DISTINCT FROM "
    template = "(%(expressions)s)"
    output_field = BooleanField()


class _UtcIso(Func):
    # Formatted by PostgreSQL (seconds, UTC, "Z"), so no datetime is built per row.
    template = """to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
    output_field = CharField()


def change_rows(after_id: int, up_to_id: int) -> Iterator[list[str]]:
    """The file's rows, header first: one per channel whose opt-out changed in the window.

    Ordered by audit entry id, then channel, from append-only entries: the same window
    always gives the same rows.
    """
    yield list(HEADER)
    channels = list(SALESFORCE_FIELDS.items())
    # The flags are read as JSON text ('true' / 'false' / NULL): decoding the snapshots in
    # Python would cost more than the rest of the row.
    flags: dict[str, KeyTextTransform] = {}
    changed = Q()
    for index, (channel, _) in enumerate(channels):
        old = flags[f"old_{index}"] = KT(f"before__opted_out__{channel}")
        new = flags[f"new_{index}"] = KT(f"after__opted_out__{channel}")
        changed |= Q(_IsDistinctFrom(old, new))
    entries = (
        AuditEntry.objects.filter(id__gt=after_id, id__lte=up_to_id, contact__isnull=False)
        .exclude(contact__ascend_id="")  # not in Ascend (a Lead, mostly)
        .filter(changed)
        .annotate(changed_at=_UtcIso("created_at"), **flags)
        .order_by("id")
        .values_list(
            "id",
            "contact__ascend_id",
            "contact__salesforce_id",
            "changed_at",
            "actor_label",
            "source",
            *flags,
        )
    )
    # A server-side cursor: a window may hold a million entries.
    for (
        entry_id,
        ascend_id,
        salesforce_id,
        changed_at,
        actor_label,
        source,
        *values,
    ) in entries.iterator(chunk_size=_CHUNK):
        for index, (_, salesforce_field) in enumerate(channels):
            # A channel missing from a snapshot predates it: the contact was not opted out.
            was = values[2 * index] == "true"
            now = values[2 * index + 1] == "true"
            if was != now:
                yield [
                    ascend_id,
                    salesforce_id,
                    salesforce_field,
                    "TRUE" if was else "FALSE",
                    "TRUE" if now else "FALSE",
                    changed_at,
                    actor_label,
                    source,
                    str(entry_id),
                ]


# --- the file --------------------------------------------------------------------------------


def file_name(run: AscendRun) -> str:
    """Deterministic for a run: the (UTC) date it was created and its window."""
    created = run.created_at.astimezone(UTC)
    return f"ascend-changes-{created:%Y%m%d}-{run.after_id}-{run.up_to_id}.csv"


class _HashingWriter:
    """What csv.writer writes to: UTF-8 bytes into the file and into the checksum."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        self.sha256.update(data)
        self.file.write(data)
        return len(text)


def write_file(run: AscendRun, directory: str | Path) -> Path:
    """Write the run's CSV into directory and return its path.

    Sets run.rows and run.checksum (not saved). The file appears under its final name only
    when complete and on disk; if anything fails, no file and no temporary file is left.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / file_name(run)
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            out = _HashingWriter(file)
            writer = csv.writer(out, lineterminator="\r\n")
            lines = 0
            for row in change_rows(run.after_id, run.up_to_id):
                # Every cell, not only the free-text ones: IDs come from data loads too.
                writer.writerow(safe_row(tuple(row)))
                lines += 1
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o644)  # mkstemp's 0600 would keep Ascend's reader out
        os.replace(temp, final)
        fsync_directory(directory)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    run.rows = lines - 1
    run.checksum = out.sha256.hexdigest()
    return final


def staging_directory() -> Path:
    default = Path(settings.BASE_DIR) / ".data" / "ascend-staging"
    return Path(getattr(settings, "ASCEND_STAGING_DIR", default))


# --- the run ---------------------------------------------------------------------------------


@contextmanager
def _single_export() -> Iterator[None]:
    # Session-level, not a transaction: the export does network I/O, which must not happen
    # inside a transaction. If the process dies, PostgreSQL drops the lock with the session.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [int(EXPORT_LOCK)])
        row = cursor.fetchone()
    if not row or not row[0]:
        raise AscendExportError("Another Ascend export is running; try again when it is done.")
    try:
        yield
    finally:
        with suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [int(EXPORT_LOCK)])


def _error_text(error: BaseException) -> str:
    return str(error) or error.__class__.__name__


def export(*, rerun: AscendRun | None = None) -> AscendRun:
    """Write and deliver the next night's file (or, with rerun, that run's file again).

    Returns the delivered run. On failure the run records the error, stays undelivered
    (a re-run of a delivered run keeps its delivery time), and AscendExportError is raised;
    the next export then covers its window again. Call it outside any transaction.
    """
    target = destination()  # a configuration mistake is raised before anything is recorded
    staging = staging_directory()
    with _single_export():
        if rerun is None:
            after_id, up_to_id = next_window()
            # The same window again (the last attempt failed and nothing happened since)
            # reuses that run, so it keeps its file name.
            run, _ = AscendRun.objects.get_or_create(after_id=after_id, up_to_id=up_to_id)
        else:
            run = AscendRun.objects.get(pk=rerun.pk)
            _check_rerun(run)
        delivered_checksum = run.checksum if run.delivered_at else ""
        try:
            remove_stale_temp_files(staging)
            staged = write_file(run, staging)
            if delivered_checksum and run.checksum != delivered_checksum:
                staged.unlink()
                raise AscendExportError(
                    f"The file for window ({run.after_id}, {run.up_to_id}] no longer matches "
                    f"the one delivered (sha256 {delivered_checksum}): a contact's Ascend or "
                    "Salesforce ID has changed since. Not delivered."
                )
            run.filename = staged.name
            run.destination = target.describe(staged.name)[:500]
            target.deliver(staged)
        except Exception as error:
            logger.exception("Ascend export of run %s failed", run.pk)
            AscendRun.objects.filter(pk=run.pk).update(error=_error_text(error))
            run.error = _error_text(error)
            if isinstance(error, AscendExportError):
                raise
            raise AscendExportError(
                f"Ascend file for window ({run.after_id}, {run.up_to_id}] not delivered: "
                f"{_error_text(error)}"
            ) from error

        run.delivered_at = timezone.now()
        run.error = ""
        with transaction.atomic():
            run.save(
                update_fields=[
                    "rows",
                    "checksum",
                    "filename",
                    "destination",
                    "delivered_at",
                    "error",
                ]
            )
            _mark_contacts_sent(run)
            record(
                AuditAction.ASCEND_FILE,
                system=ACTOR_LABEL,
                note=(
                    f"{'Re-run: ' if rerun is not None else ''}{run.rows} rows, window "
                    f"({run.after_id}, {run.up_to_id}], sha256 {run.checksum}, "
                    f"to {run.destination}"
                ),
            )
    return run


def _check_rerun(run: AscendRun) -> None:
    if run.delivered_at is not None:
        return
    covered = AscendRun.objects.filter(delivered_at__isnull=False, up_to_id__gt=run.after_id)
    if covered.exists():
        # Its changes went out in a later, wider run; sending them again would duplicate them.
        raise AscendExportError(
            f"Run {run.pk} was never delivered and a later run has delivered its changes; "
            "there is nothing to re-run."
        )


def describe_run(run: AscendRun) -> str:
    """One line for the command and the logs."""
    state = (
        f"delivered {run.delivered_at:%Y-%m-%d %H:%M:%S %Z} to {run.destination}"
        if run.delivered_at
        else "not delivered"
    )
    error = f"; error: {run.error}" if run.error else ""
    return (
        f"Ascend run {run.pk}: window ({run.after_id}, {run.up_to_id}], {run.rows} rows, "
        f"{run.filename or 'no file'}, sha256 {run.checksum or '-'}, {state}{error}"
    )


def _mark_contacts_sent(run: AscendRun) -> None:
    """Ascend now has every change of the window: move each contact's Ascend mark up to the
    newest version the window holds (category-only changes have nothing for Ascend). A
    correction (a discrepancy pushed to Ascend: no version) settles the mark it left
    pending; GREATEST ignores its NULL version."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE preferences_contactsync AS sync
               SET synced_version = GREATEST(sync.synced_version, window_.version),
                   status = CASE
                       WHEN GREATEST(sync.synced_version, window_.version) >= contact.version
                       THEN %s ELSE sync.status END,
                   synced_at = now(),
                   updated_at = now()
              FROM (SELECT contact_id, MAX(contact_version) AS version
                      FROM audit_auditentry
                     WHERE id > %s AND id <= %s AND contact_id IS NOT NULL
                       AND (contact_version IS NOT NULL OR action = %s)
                     GROUP BY contact_id) AS window_
              JOIN preferences_contact AS contact ON contact.id = window_.contact_id
             WHERE sync.contact_id = window_.contact_id AND sync.target = %s
            """,
            [
                SyncStatus.SYNCED,
                run.after_id,
                run.up_to_id,
                AuditAction.DISCREPANCY_RESOLVED,
                TARGET,
            ],
        )


# --- reconciliation --------------------------------------------------------------------------

# Ascend's own nightly export of every contact's current opt-outs, dropped where our change
# files go (README, "Ascend's opt-out file"): ascend_id, salesforce_id, one TRUE/FALSE column
# per channel named by its Salesforce field (as in our change file), exported_at (UTC).
INBOUND_PATTERN = "ascend-optouts-*.csv"
_PAGE = 50_000


def read_for_reconciliation(rows: core.RemoteRows) -> core.RemoteRead:
    """Every contact's opt-outs as Ascend's newest export says, for the nightly comparison."""
    staging = staging_directory()
    staging.mkdir(parents=True, exist_ok=True)
    source = destination()
    path = source.fetch_newest(INBOUND_PATTERN, staging)
    if path is None:
        raise AscendExportError(
            f"No Ascend opt-out file ({INBOUND_PATTERN}) at {source.describe('')}"
        )
    exported: datetime | None = None
    count = 0
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        wanted = ["ascend_id", *SALESFORCE_FIELDS.values()]
        if missing := [name for name in wanted if name not in (reader.fieldnames or [])]:
            raise AscendExportError(f"{path.name} has no column {', '.join(missing)}")
        for record in reader:
            rows.add(
                record["ascend_id"].strip(),
                opted_out=[
                    channel
                    for channel, name in SALESFORCE_FIELDS.items()
                    if record[name].strip().upper() == "TRUE"
                ],
            )
            if stamp := (record.get("exported_at") or "").strip():
                moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                exported = moment if exported is None else max(exported, moment)
            count += 1
            if count % _PAGE == 0:
                rows.flush()
    if exported is None:  # no column: the file's own time is the best there is
        exported = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    if path.parent == staging:  # a copy fetched over SFTP
        path.unlink(missing_ok=True)
    return core.RemoteRead(exported, f"{path.name}: {count:,} contacts")


# Registered when the sync core discovers this module. Ascend takes a file a night, not
# pushes: the export marks contacts sent (above).
core.register(
    core.Target(
        name=TARGET,
        label="Ascend",
        pending_hint="goes in tonight's change file",
        reconcile=read_for_reconciliation,
        match_on="ascend_id",
    )
)
