"""Reading contacts: SOQL (the two shapes the inbound sync sends), queryMore pages, and
getUpdated. Called with the store's lock held.

``parse_select`` and ``Selection`` are shared with the Bulk API 2.0 query jobs (bulk.py),
which also take a query without WHERE.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from standins.common.http import Reply
from standins.salesforce.errors import Refusal
from standins.salesforce.store import (
    BASE62,
    SalesforceStore,
    format_datetime,
    normalize_id,
    parse_datetime,
)

DEFAULT_PAGE_SIZE = 2000
_KEPT_CURSORS = 50  # like Salesforce, old cursors expire

_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_DATETIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})"
_SELECT = re.compile(
    r"^SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)(?:\s+WHERE\s+(?P<where>.+))?$", re.I
)
_WINDOW = re.compile(
    rf"^SystemModstamp\s*>\s*(?P<since>{_DATETIME})"
    rf"(?:\s+AND\s+SystemModstamp\s*<=\s*(?P<until>{_DATETIME}))?"
    r"\s+ORDER\s+BY\s+SystemModstamp(?:\s+ASC)?(?:\s*,\s*Id(?:\s+ASC)?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?$",
    re.I,
)
_ID_LIST = re.compile(
    r"^Id\s+IN\s*\((?P<ids>\s*'[A-Za-z0-9]+'(?:\s*,\s*'[A-Za-z0-9]+')*\s*)\)"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?$",
    re.I,
)


def _malformed(soql: str, *, where_required: bool = True) -> Refusal:
    also = "" if where_required else " and 'SELECT f FROM Contact'"
    return Refusal(
        400,
        "MALFORMED_QUERY",
        "The stand-in answers only 'SELECT f FROM Contact WHERE SystemModstamp > t "
        "[AND SystemModstamp <= t] ORDER BY SystemModstamp[, Id] [LIMIT n]' and "
        f"'SELECT f FROM Contact WHERE Id IN (...)'{also}; got: {soql[:200]}",
    )


@dataclass(frozen=True)
class Selection:
    """A parsed ``SELECT``: the fields as written, and which contacts it takes."""

    names: list[str]
    since: datetime | None = None  # the SystemModstamp window, if it is one
    until: datetime | None = None
    ids: list[str | None] | None = None  # the Id list, if it is one
    limit: int | None = None

    def matches(self, store: SalesforceStore, *, include_deleted: bool) -> list[dict[str, Any]]:
        """The stored records it selects now (the records themselves, never copies)."""
        if self.since is not None:
            found = store.in_window(self.since, self.until, inclusive_start=False)
        elif self.ids is not None:
            contacts = store.contacts
            found = [contacts[k] for k in dict.fromkeys(self.ids) if k in contacts]
        else:
            found = list(store.contacts.values())
        if not include_deleted:
            found = [record for record in found if not record["IsDeleted"]]
        return found if self.limit is None else found[: self.limit]


def parse_select(store: SalesforceStore, soql: str, *, where_required: bool = True) -> Selection:
    """Parse one of the SOQL shapes the stand-in answers, checking the fields against the
    org's schema; raise the Refusal Salesforce would answer otherwise."""
    text = " ".join(soql.split())
    select = _SELECT.match(text)
    if select is None or (where_required and select["where"] is None):
        raise _malformed(soql, where_required=where_required)
    if select["object"].lower() != "contact":
        message = f"sObject type '{select['object']}' is not supported"
        raise Refusal(400, "INVALID_TYPE", message)
    names = [name.strip() for name in select["fields"].split(",")]
    if not all(_FIELD_NAME.match(name) for name in names):
        raise _malformed(soql, where_required=where_required)
    lowered = [name.lower() for name in names]
    if len(set(lowered)) != len(lowered):
        raise Refusal(400, "MALFORMED_QUERY", "duplicate field selected")
    if store.schema is not None:
        unknown = [name for name in names if name.lower() not in store.schema]
        if unknown:
            raise Refusal(
                400, "INVALID_FIELD", f"No such column '{unknown[0]}' on entity 'Contact'"
            )
    where = select["where"]
    if where is None:
        return Selection(names)
    window = _WINDOW.match(where)
    id_list = _ID_LIST.match(where)
    if window is not None:
        limit = window["limit"]
        return Selection(
            names,
            since=parse_datetime(window["since"]),
            until=parse_datetime(window["until"]) if window["until"] else None,
            limit=int(limit) if limit is not None else None,
        )
    if id_list is not None:
        limit = id_list["limit"]
        keys = [normalize_id(raw.strip().strip("'")) for raw in id_list["ids"].split(",")]
        return Selection(names, ids=keys, limit=int(limit) if limit is not None else None)
    raise _malformed(soql, where_required=where_required)


def contact_row(
    store: SalesforceStore, record: Mapping[str, Any], names: list[str] | None, version: str
) -> dict[str, Any]:
    """A contact as the API shows it: all its fields, or those named, in the org's
    spelling."""
    row: dict[str, Any] = {
        "attributes": {
            "type": "Contact",
            "url": f"/services/data/{version}/sobjects/Contact/{record['Id']}",
        }
    }
    if names is None:
        row.update(record)
        return row
    for name in names:
        canonical = store.field_name(name)
        row[canonical] = record.get(canonical)
    return row


class Queries:
    """Answers queries from the store, ``page_size`` rows a page."""

    def __init__(self, store: SalesforceStore) -> None:
        self.store = store

    def query(self, soql: str, endpoint: str, version: str, page_size: int) -> Reply:
        """``query`` or ``queryAll`` (which includes deleted contacts)."""
        store = self.store
        selection = parse_select(store, soql)
        matches = selection.matches(store, include_deleted=endpoint == "queryAll")
        rows = [contact_row(store, record, selection.names, version) for record in matches]
        return Reply(200, self._page(rows, 0, endpoint, version, None, page_size))

    def query_more(self, locator: str, endpoint: str, version: str, page_size: int) -> Reply:
        cursor, _, position = locator.rpartition("-")
        rows = self.store.cursors.get(cursor)
        if rows is None or not position.isdigit():
            raise Refusal(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        page = self._page(rows, int(position), endpoint, version, cursor, page_size)
        return Reply(200, page)

    def _page(
        self,
        rows: list[dict[str, Any]],
        start: int,
        endpoint: str,
        version: str,
        cursor: str | None,
        page_size: int,
    ) -> dict[str, Any]:
        end = start + max(1, page_size)
        done = end >= len(rows)
        page: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": rows[start:end]}
        if not done:
            if cursor is None:
                cursors = self.store.cursors
                cursor = "01g" + "".join(secrets.choice(BASE62) for _ in range(15))
                cursors[cursor] = rows
                while len(cursors) > _KEPT_CURSORS:
                    cursors.popitem(last=False)
            page["nextRecordsUrl"] = f"/services/data/{version}/{endpoint}/{cursor}-{end}"
        return page

    def updated(self, params: Mapping[str, str]) -> Reply:
        """getUpdated: the Ids of contacts changed in ``[start, end]``."""
        try:
            start = parse_datetime(params["start"])
            end = parse_datetime(params["end"])
        except (KeyError, ValueError):
            raise Refusal(
                400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 date-times"
            ) from None
        if end <= start:
            raise Refusal(400, "INVALID_REPLICATION_DATE", "end date must be after start date")
        matches = self.store.in_window(start, end, inclusive_start=True)
        ids = [record["Id"] for record in matches if not record["IsDeleted"]]
        return Reply(200, {"ids": ids, "latestDateCovered": format_datetime(end)})
