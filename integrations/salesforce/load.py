"""The initial load: every Contact (then Person Account, then Lead) Salesforce holds,
created in the app with its starting state (docs/design.md, "Initial load").

Each object is read through a Bulk API 2.0 query job, one result page at a time. A page is
COPYed into a temporary table and written with a few set-based statements, in one
transaction together with the run's progress past it (``ContactLoad.progress``: the job id
and the next page's locator). So memory stays at a few pages, and a run killed at any
instant carries on, when started again, from the first page it had not committed: committed
pages are never read again, and the job's results stay in Salesforce for 7 days.

Pages are written by ``writers`` connections at once (two by default), in order: a page's
statements start when the page before has run its own, and it commits after that page has
committed. So the commit of one page (its audit entries are sealed then, one at a time, under
the audit log's lock) overlaps the statements of the next, and the progress is still one
locator; a kill loses at most ``writers`` pages read and not committed.

What a page does, as the pull does it one record at a time (inbound.create and
refresh_identity), so the rows are the same:

- a record the app has not seen becomes a contact, with Salesforce's opt-outs and categories
  as its starting state (``record_starting_states``: state, a ``starting_state`` audit entry,
  and Salesforce marked as holding it);
- a contact the app knows takes its names, email, phone and Ascend ID from Salesforce, which
  owns them; its preferences are left alone (a difference there is the pull's and the
  nightly reconciliation's to settle);
- an Ascend ID another contact has is not taken (the new contact is created without it, a
  known one keeps its own) and is counted.
"""

from __future__ import annotations

import csv
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.db import connection, transaction
from django.utils import timezone

from audit.models import Source
from integrations.base import PermanentError
from integrations.models import ContactLoad
from integrations.salesforce import objects
from integrations.salesforce.client import BULK_PAGE_SIZE, RequestCount, SalesforceClient
from integrations.salesforce.inbound import TARGET, active_category_fields
from integrations.salesforce.objects import SalesforceObject
from preferences.services import StartingState, record_starting_states

logger = logging.getLogger(__name__)

STAGING = "load_staging"
WRITERS = 2
# The note of every starting state the load records: the pull's own (inbound.create).
NOTE = "Read from Salesforce when the app first saw this {name}."
# The date the Bulk API writes as each record's LastModifiedDate: the newest one read is
# shown with the summary (how recent the loaded data is).
MODIFIED_FIELD = "LastModifiedDate"
# A converted Lead lives on as its Contact, which the load reads: the Lead is not loaded.
NOT_CONVERTED = "IsConverted = false"


class LoadBusy(Exception):
    """Another load_contacts process is writing the same run."""


class Progress(Protocol):
    """What the command shows while a load runs (rows and pages are totals so far)."""

    def started(self, name: str, *, total: int, rows: int, pages: int) -> None: ...

    def advanced(self, name: str, *, rows: int, pages: int) -> None: ...

    def finished(self, name: str, *, rows: int, pages: int) -> None: ...


class _Silent:
    def started(self, name: str, *, total: int, rows: int, pages: int) -> None:
        pass

    def advanced(self, name: str, *, rows: int, pages: int) -> None:
        pass

    def finished(self, name: str, *, rows: int, pages: int) -> None:
        pass


@dataclass
class PageResult:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    with_opt_outs: int = 0
    ascend_collisions: int = 0


@dataclass
class ParsedPage:
    """A result page as the statements take it: the staging table's rows as COPY text, and
    the opt-outs and categories of the records that have any, by Salesforce Id."""

    copy_text: str = ""
    rows: int = 0
    wanted: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)
    latest_modified: str = ""
    # Ascend IDs the page before took and has not committed yet (invisible to this page's
    # statements): not to be taken again.
    taken: list[str] = field(default_factory=list)


def open_run(*, restart: bool = False) -> tuple[ContactLoad, bool]:
    """The newest unfinished run, to resume; or a new one (restart: the unfinished ones are
    abandoned). Returns the run and whether it is resumed."""
    now = timezone.now()
    with transaction.atomic():
        unfinished = ContactLoad.objects.select_for_update().filter(
            finished_at__isnull=True, abandoned_at__isnull=True
        )
        if restart:
            unfinished.update(abandoned_at=now)
        else:
            found = unfinished.order_by("-started_at", "-pk").first()
            if found is not None:
                return found, True
        return ContactLoad.objects.create(started_at=now), False


def load_contacts(
    *,
    page_size: int = BULK_PAGE_SIZE,
    restart: bool = False,
    progress: Progress | None = None,
    run: ContactLoad | None = None,
    writers: int = WRITERS,
) -> ContactLoad:
    """Load every record of every object in use (objects.in_use()), resuming the newest
    unfinished run unless ``restart``; returns the finished run."""
    if page_size < 1 or writers < 1:
        raise ValueError("page_size and writers must be at least 1")
    if run is None:
        run, _resumed = open_run(restart=restart)
    with SalesforceClient() as client, _Writers(writers) as pool:
        loader = _Loader(run, client, page_size, progress or _Silent(), pool)
        for found in objects.in_use():
            loader.load(found)
        loader.finish()
    return loader.run


def query_filter(found: SalesforceObject) -> str:
    conditions = [objects.where(found)]
    if found.kind == objects.LEAD.kind:
        conditions.append(NOT_CONVERTED)
    return " AND ".join(condition for condition in conditions if condition)


# --- the writers ----------------------------------------------------------------------------------


class _Writers:
    """Threads that write pages, each on its own database connection; with one writer, the
    calling thread writes (and nothing runs beside it)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.tasks: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.threads = [
            threading.Thread(target=self._work, name=f"load-writer-{n}", daemon=True)
            for n in range(count if count > 1 else 0)
        ]

    def __enter__(self) -> _Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _thread in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join()

    def submit(self, task: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        if not self.threads:
            _run(task, future)
        else:
            self.tasks.put((task, future))
        return future

    def _work(self) -> None:
        try:
            while (item := self.tasks.get()) is not None:
                _run(*item)
        finally:
            connection.close()  # this thread's own


def _run(task: Callable[[], Any], future: Future[Any]) -> None:
    try:
        future.set_result(task())
    except BaseException as error:  # handed to the thread that waits for the page
        future.set_exception(error)


@dataclass
class _Turn:
    """A page's place in the order of writing: when its statements have run (the next page
    may start its own), and when it has committed (the next page may commit)."""

    ran: threading.Event = field(default_factory=threading.Event)
    committed: threading.Event = field(default_factory=threading.Event)
    taken: list[str] = field(default_factory=list)

    @classmethod
    def done(cls) -> _Turn:
        turn = cls()
        turn.ran.set()
        turn.committed.set()
        return turn


class _Loader:
    def __init__(
        self,
        run: ContactLoad,
        client: SalesforceClient,
        page_size: int,
        progress: Progress,
        writers: _Writers,
    ) -> None:
        self.run = run
        self.client = client
        self.page_size = page_size
        self.progress = progress
        self.writers = writers
        self.category_fields = active_category_fields()
        self.requests: RequestCount = client.count_requests()
        self.counted_calls = 0
        self.clock = time.monotonic()
        self.accounting = threading.Lock()

    # -- one object ----------------------------------------------------------------------------

    def load(self, found: SalesforceObject) -> None:
        entry = self.run.progress.get(found.name)
        if entry is None or not entry.get("job_id"):
            entry = self._new_job(found, None)
        if entry.get("total") is None:
            entry = self._wait(found, entry)
        self.progress.started(
            found.name, total=int(entry["total"]), rows=entry["rows"], pages=entry["pages"]
        )
        retried = False
        pending: deque[Future[dict[str, Any]]] = deque()
        previous = _Turn.done()
        try:
            while not entry["finished"]:
                # At most one page a writer read and not committed: a kill loses no more.
                while len(pending) >= self.writers.count:
                    self._settled(found, pending.popleft())
                try:
                    text, locator = self.client.bulk_page(
                        found.name, entry["job_id"], entry["locator"], self.page_size
                    )
                except PermanentError as error:
                    # The job's results are gone (Salesforce keeps them 7 days): read the
                    # object again with a new job; the contacts loaded are only updated.
                    if error.code != "NOT_FOUND" or retried or pending:
                        raise
                    logger.warning("Query job %s is gone; reading %s again", entry["job_id"], found)
                    retried = True
                    entry = self._wait(found, self._new_job(found, entry))
                    self.progress.started(found.name, total=int(entry["total"]), rows=0, pages=0)
                    continue
                page = parse_page(found, text, self.category_fields)
                del text
                after = {
                    **entry,
                    "locator": locator,
                    "pages": entry["pages"] + 1,
                    "rows": entry["rows"] + page.rows,
                    "finished": not locator,
                    "latest_modified": max(entry["latest_modified"] or "", page.latest_modified),
                }
                turn = _Turn()
                task = _bind(self._write, found, entry, after, page, previous, turn)
                pending.append(self.writers.submit(task))
                entry, previous = after, turn
                del page
            while pending:
                self._settled(found, pending.popleft())
        except BaseException:
            # The pages handed out are written, or fail, before the first failure is raised
            # (those after it fail too: their page before did not commit).
            for future in pending:
                future.exception()
            raise
        self.progress.finished(found.name, rows=entry["rows"], pages=entry["pages"])

    def _settled(self, found: SalesforceObject, page: Future[dict[str, Any]]) -> None:
        entry = page.result()
        self.progress.advanced(found.name, rows=entry["rows"], pages=entry["pages"])

    def _new_job(self, found: SalesforceObject, current: dict[str, Any] | None) -> dict[str, Any]:
        fields = [*found.read_fields(self.category_fields), MODIFIED_FIELD]
        job_id = self.client.create_bulk_query(found.name, fields, where=query_filter(found))
        logger.info("Bulk API query job %s reads every %s", job_id, found.name)
        entry = {
            "job_id": job_id,
            "locator": "",
            "pages": 0,
            "rows": 0,
            "total": None,
            "finished": False,
            "latest_modified": "",
        }
        # Kept at once: a run killed while the job runs waits for the same job again.
        with transaction.atomic():
            self._save(self._locked(found, current), found, entry)
        return entry

    def _wait(self, found: SalesforceObject, entry: dict[str, Any]) -> dict[str, Any]:
        try:
            total = self.client.wait_for_bulk_query(found.name, entry["job_id"])
        except PermanentError as error:
            if error.code != "NOT_FOUND":
                raise
            logger.warning("Query job %s is gone; starting another", entry["job_id"])
            return self._wait(found, self._new_job(found, entry))
        updated = {**entry, "total": total}
        with transaction.atomic():
            self._save(self._locked(found, entry), found, updated)
        return updated

    # -- one page (in a writer) ----------------------------------------------------------------

    def _write(
        self,
        found: SalesforceObject,
        before: dict[str, Any],
        after: dict[str, Any],
        page: ParsedPage,
        previous: _Turn,
        turn: _Turn,
    ) -> dict[str, Any]:
        try:
            # The page before has inserted its contacts: this page's Ascend IDs are checked
            # against them (and against every committed contact, in the statements).
            previous.ran.wait()
            page.taken = previous.taken
            with transaction.atomic():
                result = write_page(found, page, turn.taken)
                turn.ran.set()
                previous.committed.wait()
                # The run's row, locked and checked: a second process loading the same run
                # (or this one's page before, failed) leaves a progress this page does not
                # follow, and the page is rolled back.
                run = self._locked(found, before)
                run.created += result.created
                run.updated += result.updated
                run.unchanged += result.unchanged
                run.with_opt_outs += result.with_opt_outs
                run.ascend_collisions += result.ascend_collisions
                self._save(run, found, after)
            return after
        finally:
            turn.ran.set()
            turn.committed.set()

    def _locked(self, found: SalesforceObject, expected: dict[str, Any] | None) -> ContactLoad:
        run = ContactLoad.objects.select_for_update().get(pk=self.run.pk)
        if run.progress.get(found.name) != expected or run.finished_at or run.abandoned_at:
            raise LoadBusy(
                f"Contact load {run.pk} moved on without this process (another load_contacts "
                "is running it, or it was restarted); this one stops."
            )
        return run

    def _account(self, run: ContactLoad) -> None:
        """Add the seconds and API calls since the last commit to the run."""
        with self.accounting:
            now, calls = time.monotonic(), self.requests.calls
            run.seconds += now - self.clock
            run.api_calls += calls - self.counted_calls
            # A transaction that fails after this ends the load (it raises), so the calls
            # and seconds counted here are simply lost with it.
            self.clock, self.counted_calls = now, calls

    def _save(self, run: ContactLoad, found: SalesforceObject, entry: dict[str, Any]) -> None:
        self._account(run)
        run.progress = {**run.progress, found.name: entry}
        run.save(
            update_fields=[
                "progress",
                "created",
                "updated",
                "unchanged",
                "with_opt_outs",
                "ascend_collisions",
                "api_calls",
                "seconds",
            ]
        )
        self.run = run

    def finish(self) -> None:
        with transaction.atomic():
            run = ContactLoad.objects.select_for_update().get(pk=self.run.pk)
            if run.finished_at is None:
                run.finished_at = timezone.now()
                self._account(run)
                run.save(update_fields=["finished_at", "seconds", "api_calls"])
        self.run = run


def _bind(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: function(*args)


# --- a page --------------------------------------------------------------------------------------


_STAGING_COLUMNS = (
    "pos, salesforce_id, first_name, last_name, email, phone, ascend_id, person_contact_id"
)
# COPY's text format: a backslash, tab, newline or carriage return in a value is escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def parse_page(found: SalesforceObject, text: str, category_fields: dict[str, str]) -> ParsedPage:
    """A result page (CSV, header first) of ``found``'s records, read as the pull reads a
    record (SalesforceObject.identity, inbound.remote_state)."""
    page = ParsedPage()
    # The fields remote_state reads, looked up once a page rather than once a record; and
    # one tuple per combination of opt-outs and categories, however many records have it.
    opt_out_fields = list(found.opt_out_fields.items())
    checkbox_fields = list(found.category_fields(category_fields).items())
    shapes: dict[tuple[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]]
    shapes = {}
    lines: list[str] = []
    for pos, record in enumerate(_records(text)):
        identity = found.identity(record)
        salesforce_id = record["Id"]
        lines.append(
            "\t".join(
                [
                    str(pos),
                    salesforce_id.translate(_COPY_ESCAPES),
                    identity["first_name"].translate(_COPY_ESCAPES),
                    identity["last_name"].translate(_COPY_ESCAPES),
                    identity["email"].translate(_COPY_ESCAPES),
                    identity["phone"].translate(_COPY_ESCAPES),
                    identity["ascend_id"].translate(_COPY_ESCAPES),
                    identity["person_contact_id"].translate(_COPY_ESCAPES),
                ]
            )
        )
        opted_out = frozenset(c for c, name in opt_out_fields if _checked(record.get(name)))
        categories = frozenset(k for k, name in checkbox_fields if _checked(record.get(name)))
        if opted_out or categories:
            shape = (opted_out, categories)
            page.wanted[salesforce_id] = shapes.setdefault(shape, shape)
        modified = record.get(MODIFIED_FIELD) or ""
        if modified > page.latest_modified:
            page.latest_modified = modified
    page.rows = len(lines)
    if lines:
        lines.append("")
    page.copy_text = "\n".join(lines)
    return page


def write_page(found: SalesforceObject, page: ParsedPage, taken: list[str]) -> PageResult:
    """Write a parsed page of ``found``'s records, in the caller's transaction; ``taken``
    receives the Ascend IDs the page gave its contacts."""
    result = PageResult(rows=page.rows)
    now = timezone.now()
    with connection.cursor() as cursor:
        # Every statement below matches the page's rows to the whole contact table (and its
        # syncs) by a unique key. The planner, whose statistics lag a bulk load, would hash
        # a full scan of a table growing to millions instead of probing its indexes, each
        # page slower than the last: for this transaction, index probes only.
        cursor.execute("SET LOCAL enable_hashjoin = off")
        cursor.execute("SET LOCAL enable_mergejoin = off")
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(
            f"""
            CREATE TEMP TABLE IF NOT EXISTS {STAGING} (
                pos integer PRIMARY KEY,
                salesforce_id varchar(18) NOT NULL,
                first_name varchar(100) NOT NULL,
                last_name varchar(100) NOT NULL,
                email varchar(254) NOT NULL,
                phone varchar(32) NOT NULL,
                ascend_id varchar(20) NOT NULL,
                person_contact_id varchar(18) NOT NULL,
                collided boolean NOT NULL DEFAULT false
            ) ON COMMIT DELETE ROWS
            """
        )
        cursor.execute(f"TRUNCATE {STAGING}")  # a caller's transaction may write two pages
        if not page.rows:
            return result
        with cursor.cursor.copy(f"COPY {STAGING} ({_STAGING_COLUMNS}) FROM STDIN") as copy:
            copy.write(page.copy_text)
        # Without statistics the planner takes a temporary table for a few rows.
        cursor.execute(f"ANALYZE {STAGING}")
        result.ascend_collisions = _mark_collisions(cursor, page.taken)
        result.updated, result.unchanged = _refresh_known(cursor, now)
        created = _create_new(cursor, found, now)
        cursor.execute(f"SELECT ascend_id FROM {STAGING} WHERE ascend_id <> '' AND NOT collided")
        taken.extend(ascend_id for (ascend_id,) in cursor.fetchall())
    result.created = len(created)
    states = [
        StartingState(pk, *page.wanted[salesforce_id])
        for pk, salesforce_id in created
        if salesforce_id in page.wanted
    ]
    result.with_opt_outs = sum(1 for state in states if state.opted_out)
    record_starting_states(
        states,
        source=Source.SALESFORCE,
        note=NOTE.format(name=found.name),
        already_in=[TARGET],
    )
    return result


def _checked(value: str | None) -> bool:
    """A checkbox as the Bulk API writes it ("true"/"false"), read as inbound._true reads
    it."""
    return value is not None and value.strip().lower() == "true"


def _records(text: str) -> Iterator[dict[str, str]]:
    # Line by line from the page's text (a quoted value may span lines: the reader asks for
    # the next): an io.StringIO would hold a copy of the page at four bytes a character.
    reader = csv.reader(_lines(text))
    header = next(reader, None)
    if header is None:
        return
    for values in reader:
        if values:
            yield dict(zip(header, values, strict=True))


def _lines(text: str) -> Iterator[str]:
    start = 0
    while (end := text.find("\n", start)) != -1:
        yield text[start : end + 1]
        start = end + 1
    if start < len(text):
        yield text[start:]


def _mark_collisions(cursor: Any, taken: list[str]) -> int:
    """Ascend IDs the page may not take: another contact has it (``taken``: or the page
    before gave it, not committed yet), or an earlier record of the page asks for it too
    (the unique index is partial: ascend_id <> '')."""
    cursor.execute(
        f"""
        UPDATE {STAGING} s SET collided = true
        WHERE s.ascend_id <> '' AND (
            s.ascend_id = ANY(%s) OR EXISTS (
                SELECT 1 FROM preferences_contact c
                WHERE c.ascend_id <> '' AND c.ascend_id = s.ascend_id
                  AND c.salesforce_id <> s.salesforce_id
            )
        )
        """,
        [taken],
    )
    first = cursor.rowcount
    cursor.execute(
        f"""
        UPDATE {STAGING} s SET collided = true
        FROM (
            SELECT pos, row_number() OVER (PARTITION BY ascend_id ORDER BY pos) AS n
            FROM {STAGING} WHERE ascend_id <> '' AND NOT collided
        ) later
        WHERE s.pos = later.pos AND later.n > 1
        """
    )
    return int(first + cursor.rowcount)


def _refresh_known(cursor: Any, now: datetime) -> tuple[int, int]:
    """Known contacts take their identity from Salesforce (never their preferences);
    returns how many of them changed and how many did not."""
    cursor.execute(
        f"""
        WITH refreshed AS (
            UPDATE preferences_contact c SET
                first_name = known.first_name,
                last_name = known.last_name,
                email = known.email,
                phone = known.phone,
                ascend_id = known.ascend_id,
                person_contact_id = known.person_contact_id,
                identity_read_at = %s
            FROM (
                SELECT old.id, s.first_name, s.last_name, s.email, s.phone,
                       CASE WHEN s.collided THEN old.ascend_id ELSE s.ascend_id END
                           AS ascend_id,
                       s.person_contact_id,
                       (old.first_name, old.last_name, old.email, old.phone, old.ascend_id,
                        old.person_contact_id)
                       IS DISTINCT FROM
                       (s.first_name, s.last_name, s.email, s.phone,
                        CASE WHEN s.collided THEN old.ascend_id ELSE s.ascend_id END,
                        s.person_contact_id) AS differs
                FROM {STAGING} s
                JOIN preferences_contact old ON old.salesforce_id = s.salesforce_id
            ) known
            WHERE c.id = known.id
            RETURNING known.differs
        )
        SELECT count(*) FILTER (WHERE differs), count(*) FILTER (WHERE NOT differs)
        FROM refreshed
        """,
        [now],
    )
    changed, same = cursor.fetchone()
    return int(changed), int(same)


def _create_new(cursor: Any, found: SalesforceObject, now: datetime) -> list[tuple[int, str]]:
    """The page's records the app has not seen, as new contacts (version 0, as
    Contact.objects.create makes them), in the page's order; returns (id, Salesforce id)
    of each. One the pull created meanwhile is left to it."""
    cursor.execute(
        f"""
        INSERT INTO preferences_contact (
            kind, salesforce_id, person_contact_id, first_name, last_name, email, phone,
            ascend_id, identity_read_at, country, email_bounced, version, created_at
        )
        SELECT %s, s.salesforce_id, s.person_contact_id, s.first_name, s.last_name, s.email,
               s.phone, CASE WHEN s.collided THEN '' ELSE s.ascend_id END, %s, '', false, 0,
               %s
        FROM {STAGING} s
        WHERE NOT EXISTS (
            SELECT 1 FROM preferences_contact c WHERE c.salesforce_id = s.salesforce_id
        )
        ORDER BY s.pos
        ON CONFLICT (salesforce_id) DO NOTHING
        RETURNING id, salesforce_id
        """,
        [str(found.kind), now, now],
    )
    return [(int(pk), str(salesforce_id)) for pk, salesforce_id in cursor.fetchall()]
