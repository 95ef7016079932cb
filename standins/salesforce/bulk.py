"""Bulk API 2.0 query jobs: ``/services/data/vXX.X/jobs/query``, on every object the org
holds (Contact, Lead, Account, Task).

As the "Bulk API 2.0 and Bulk API Developer Guide" describes them (Create a Query Job, Get
Information About a Query Job, Get Information About All Query Jobs, Get Results for a
Query Job, Abort a Query Job, Delete a Query Job, Errors, Valid Date Format in Records):

- ``POST jobs/query`` takes ``{"operation": "query" | "queryAll", "query": soql}`` and the
  optional ``contentType`` (CSV only), ``columnDelimiter`` and ``lineEnding``; it checks the
  query at once (a query the org cannot run is refused with 400, as the REST query refuses
  it: MALFORMED_QUERY, among others for a dateTime literal in a form the SOQL reference does
  not document, INVALID_FIELD, INVALID_TYPE, INVALID_QUERY_FILTER_OPERATOR; the clauses the
  guide says Bulk API 2.0 does not support, and a job it cannot create, with INVALIDJOB) and
  answers the job in state ``UploadComplete``. ``queryAll`` keeps deleted records, merged
  ones with their ``MasterRecordId``.
- ``GET jobs/query/<id>`` answers the job's information. Each read moves the job on:
  ``InProgress`` for as many reads as the stand-in's ``bulk_in_progress_polls`` says (0 by
  default), then ``JobComplete``. Completing takes the snapshot: the records the query
  selects at that moment. A job with no InProgress reads to answer also completes on a
  results request, so it may complete at once; one that answered InProgress completes on a
  status read only, so a client sees it complete before its results are there.
- ``GET jobs/query/<id>/results?maxRecords=&locator=`` answers one set of results as CSV: a
  header row with the fields as the query wrote them, then a row per record, every value in
  double quotes (as the guide's examples show), a null as an empty field, booleans ``true`` /
  ``false`` (a checkbox never set is ``false``), date-times as ``2024-05-01T12:00:00.000Z``.
  ``Sforce-NumberOfRecords`` counts the set's rows; ``Sforce-Locator`` names the next set,
  or is ``null`` after the last. A locator stays valid as long as its job exists. Only a
  ``JobComplete`` job has results.
- ``PATCH jobs/query/<id>`` with ``{"state": "Aborted"}`` aborts an ``UploadComplete`` or
  ``InProgress`` job; ``DELETE jobs/query/<id>`` deletes a terminated one (204).

A set's CSV is rendered when its answer is written, outside the org's lock, from the
snapshot: a list of the stored records themselves (the store never changes one in place),
so a million-row job costs a list of references, and one set at a time is built as text.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from standins.common.http import Reply
from standins.salesforce.errors import NOT_FOUND, Refusal
from standins.salesforce.query import parse_query, select
from standins.salesforce.schema import ObjectSchema
from standins.salesforce.soql import Query, field_value
from standins.salesforce.store import (
    API_USER_ID,
    SalesforceStore,
    format_datetime,
    normalize_id,
)

UPLOAD_COMPLETE = "UploadComplete"
IN_PROGRESS = "InProgress"
JOB_COMPLETE = "JobComplete"
ABORTED = "Aborted"
FAILED = "Failed"
_RUNNING = (UPLOAD_COMPLETE, IN_PROGRESS)
_TERMINATED = (JOB_COMPLETE, ABORTED, FAILED)

COLUMN_DELIMITERS = {
    "BACKQUOTE": "`",
    "CARET": "^",
    "COMMA": ",",
    "PIPE": "|",
    "SEMICOLON": ";",
    "TAB": "\t",
}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
# Without maxRecords Salesforce splits a large result by size; the stand-in by count. It also
# caps a set at MAX_RESULT_RECORDS rows ("the request is still subject to the size limits").
DEFAULT_RESULT_RECORDS = 50_000
MAX_RESULT_RECORDS = 100_000
_KEPT_JOBS = 200  # the oldest beyond these are forgotten (Salesforce keeps jobs for days)

# What the guide says Bulk API 2.0 queries cannot contain: GROUP BY, OFFSET, TYPEOF,
# aggregate functions, FIELDS(), parent-to-child subqueries.
_UNSUPPORTED = re.compile(
    r"\bGROUP\s+BY\b|\bOFFSET\b|\bTYPEOF\b|\b(?:COUNT|COUNT_DISTINCT|SUM|AVG|MIN|MAX|FIELDS)\s*\("
    r"|\(\s*SELECT\b",
    re.I,
)


def _invalid_job(message: str) -> Refusal:
    return Refusal(400, "INVALIDJOB", message)


def _now() -> datetime:
    # The job's own clock: the contacts' SystemModstamp sequence is left alone.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _api_version(version: str) -> float:
    return float(version.lstrip("v"))


def encode_locator(offset: int) -> str:
    # Salesforce's locators are opaque; these are the offset in base64, as theirs look.
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(locator: str) -> int | None:
    try:
        text = base64.b64decode(locator + "=" * (-len(locator) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def bulk_datetime(value: datetime) -> str:
    """A date-time as Bulk API CSV writes it: ``2024-05-01T12:00:00.000Z``."""
    return format_datetime(value)[:-5] + "Z"


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _cell(value: Any, datetimes: dict[datetime, str]) -> str:
    """One CSV field: quoted, or empty for a null (a text field never holds "")."""
    kind = type(value)
    if kind is str:
        return '"' + value.replace('"', '""') + '"' if value else ""
    if value is None:
        return ""
    if kind is bool:
        return '"true"' if value else '"false"'
    if isinstance(value, datetime):
        text = datetimes.get(value)
        if text is None:  # a data load gives a million records one stamp: render it once
            text = datetimes[value] = '"' + bulk_datetime(value) + '"'
        return text
    if kind is float and value.is_integer():
        return f'"{int(value)}"'  # a Number field with no decimals: 3, not 3.0
    return _quoted(str(value))


# How a column reads its value from a record: (key, default) of a stored field, or a
# function for a worked-out one (a Name, a relationship path).
Column = tuple[str, Any] | Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class CsvPage:
    """One set of a job's results, rendered to bytes when the answer is written."""

    records: list[dict[str, Any]]  # the set's records, in order
    header: list[str]  # the fields as the query wrote them
    columns: list[Column]  # how each field's value is read
    delimiter: str
    line_ending: str

    def render(self) -> bytes:
        delimiter, columns = self.delimiter, self.columns
        datetimes: dict[datetime, str] = {}
        lines = [delimiter.join(_quoted(name) for name in self.header)]
        stored = [column for column in columns if isinstance(column, tuple)]
        if len(stored) == len(columns):
            lines.extend(
                delimiter.join(
                    [_cell(record.get(key, default), datetimes) for key, default in stored]
                )
                for record in self.records
            )
        else:
            lines.extend(
                delimiter.join(
                    [
                        _cell(
                            column(record)
                            if callable(column)
                            else record.get(column[0], column[1]),
                            datetimes,
                        )
                        for column in columns
                    ]
                )
                for record in self.records
            )
        lines.append("")  # every row, the last included, ends with the line ending
        return self.line_ending.join(lines).encode()


@dataclass
class QueryJob:
    id: str
    operation: str
    selection: Query
    version: str
    column_delimiter: str
    line_ending: str
    created: datetime
    modstamp: datetime
    polls_left: int
    state: str = UPLOAD_COMPLETE
    started: float = field(default_factory=time.monotonic)
    processing_ms: int = 0
    snapshot: list[dict[str, Any]] | None = None

    def describe(self, *, detail: bool) -> dict[str, Any]:
        """The job's information: as Create answers it, or (detail) as Get Information."""
        info: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.selection.object.name,
            "createdById": API_USER_ID,
            "createdDate": format_datetime(self.created),
            "systemModstamp": format_datetime(self.modstamp),
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": _api_version(self.version),
        }
        if detail:
            info["jobType"] = "V2Query"
        info["lineEnding"] = self.line_ending
        info["columnDelimiter"] = self.column_delimiter
        if detail:
            info["numberRecordsProcessed"] = len(self.snapshot or ())
            info["retries"] = 0
            info["totalProcessingTime"] = self.processing_ms
        return info


class BulkQueries:
    """The org's query jobs. Called with the store's lock held."""

    def __init__(self, store: SalesforceStore) -> None:
        self.store = store
        self.jobs: OrderedDict[str, QueryJob] = OrderedDict()

    def clear(self) -> None:
        self.jobs.clear()

    # -- the resources -----------------------------------------------------------------------

    def create(self, payload: Any, version: str, in_progress_polls: int) -> Reply:
        if not isinstance(payload, dict):
            raise Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object describing the job")
        operation = payload.get("operation")
        if operation not in ("query", "queryAll"):
            raise _invalid_job(f"operation must be query or queryAll for a query job: {operation}")
        soql = payload.get("query")
        if not isinstance(soql, str) or not soql.strip():
            raise _invalid_job("query is required for a query job")
        content_type = payload.get("contentType", "CSV")
        if content_type != "CSV":
            raise _invalid_job(f"contentType must be CSV: {content_type}")
        delimiter = payload.get("columnDelimiter", "COMMA")
        if delimiter not in COLUMN_DELIMITERS:
            raise _invalid_job(f"columnDelimiter is not one of {', '.join(COLUMN_DELIMITERS)}")
        line_ending = payload.get("lineEnding", "LF")
        if line_ending not in LINE_ENDINGS:
            raise _invalid_job("lineEnding must be LF or CRLF")
        unsupported = _UNSUPPORTED.search(soql)
        if unsupported is not None:
            raise _invalid_job(
                f"Bulk API 2.0 does not support {unsupported.group(0).strip()!r} in a query"
            )
        selection = parse_query(self.store, soql)
        stamp = _now()
        job = QueryJob(
            id=self.store.next_id("750"),
            operation=operation,
            selection=selection,
            version=version,
            column_delimiter=delimiter,
            line_ending=line_ending,
            created=stamp,
            modstamp=stamp,
            polls_left=max(0, in_progress_polls),
        )
        self.jobs[job.id] = job
        while len(self.jobs) > _KEPT_JOBS:
            self.jobs.popitem(last=False)
        return Reply(200, job.describe(detail=False))

    def all_jobs(self) -> Reply:
        records = [job.describe(detail=False) for job in self.jobs.values()]
        for record in records:
            record["jobType"] = "V2Query"
        return Reply(200, {"done": True, "records": records, "nextRecordsUrl": None})

    def info(self, job_id: str) -> Reply:
        job = self._job(job_id)
        if job.state in _RUNNING:
            if job.polls_left > 0:
                job.polls_left -= 1
                self._set_state(job, IN_PROGRESS)
            else:
                self._complete(job)
        return Reply(200, job.describe(detail=True))

    def results(self, job_id: str, params: Mapping[str, str]) -> Reply:
        job = self._job(job_id)
        if job.state == UPLOAD_COMPLETE and job.polls_left == 0:
            self._complete(job)  # not held InProgress: it has completed by now
        if job.state != JOB_COMPLETE or job.snapshot is None:
            raise Refusal(
                400,
                "INVALIDJOBSTATE",
                f"Results are available for a job in state JobComplete; this one is {job.state}",
            )
        raw_max = params.get("maxRecords")
        if raw_max is None:
            max_records = DEFAULT_RESULT_RECORDS
        elif raw_max.isascii() and raw_max.isdigit() and int(raw_max) > 0:
            max_records = min(int(raw_max), MAX_RESULT_RECORDS)
        else:
            raise Refusal(400, "API_ERROR", f"maxRecords must be a positive integer: {raw_max}")
        snapshot = job.snapshot
        start = 0
        if params.get("locator"):
            decoded = decode_locator(params["locator"])
            if decoded is None or decoded > len(snapshot):
                raise Refusal(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            start = decoded
        end = min(start + max_records, len(snapshot))
        page = CsvPage(
            records=snapshot[start:end],
            header=job.selection.names,
            columns=_columns(job.selection),
            delimiter=COLUMN_DELIMITERS[job.column_delimiter],
            line_ending=LINE_ENDINGS[job.line_ending],
        )
        headers = {
            "Sforce-Locator": encode_locator(end) if end < len(snapshot) else "null",
            "Sforce-NumberOfRecords": str(end - start),
        }
        return Reply(200, page, headers, content_type="text/csv")

    def abort(self, job_id: str, payload: Any) -> Reply:
        job = self._job(job_id)
        state = payload.get("state") if isinstance(payload, dict) else None
        if state != ABORTED:
            raise Refusal(
                400, "INVALIDJOBSTATE", f"A query job can only be set to Aborted, not {state}"
            )
        if job.state not in _RUNNING:
            raise Refusal(
                400, "INVALIDJOBSTATE", f"Aborting a job in state {job.state} is not allowed"
            )
        self._set_state(job, ABORTED)
        info = job.describe(detail=False)
        del info["lineEnding"], info["columnDelimiter"]  # as the guide's example answers
        return Reply(200, info)

    def delete(self, job_id: str) -> Reply:
        job = self._job(job_id)
        if job.state not in _TERMINATED:
            raise Refusal(
                400,
                "API_ERROR",
                "Error encountered when deleting the job because the job is not terminated",
            )
        del self.jobs[job.id]
        return Reply(204)

    # -- the job's life ----------------------------------------------------------------------

    def _job(self, job_id: str) -> QueryJob:
        key = normalize_id(job_id)
        job = self.jobs.get(key) if key is not None else None
        if job is None:
            raise Refusal(*NOT_FOUND)
        return job

    def _set_state(self, job: QueryJob, state: str) -> None:
        job.state = state
        job.modstamp = _now()

    def _complete(self, job: QueryJob) -> None:
        job.snapshot = select(
            self.store, job.selection, include_deleted=job.operation == "queryAll"
        )
        job.processing_ms = int((time.monotonic() - job.started) * 1000)
        self._set_state(job, JOB_COMPLETE)


def _columns(query: Query) -> list[Column]:
    schema = query.object
    columns: list[Column] = []
    for path in query.fields:
        name = path.name
        declared = schema.field(name) if "." not in name else None
        if "." in name or (declared is not None and declared.calculated):
            columns.append(_worked_out(schema, name))
        else:
            columns.append((name, False if path.type == "boolean" else None))
    return columns


def _worked_out(schema: ObjectSchema, name: str) -> Callable[[Mapping[str, Any]], Any]:
    def value(record: Mapping[str, Any]) -> Any:
        return field_value(schema, record, name)

    return value
