"""Reading records: the REST API's ``query`` and ``queryAll`` with their ``queryMore`` pages
(REST API Developer Guide, "Execute a SOQL Query", "Execute a SOQL Query that Includes
Deleted Items"), and getUpdated ("Get Updated Records"). Called with the store's lock held.

A query is parsed by ``soql.py``; ``select`` narrows it through the store first where it
can (a contact's SystemModstamp window through the stamp index, an ``Id IN`` list by key),
so the inbound sync's queries stay cheap however many contacts the org holds. ``query``
leaves deleted records out; ``queryAll`` keeps them, with ``IsDeleted`` true, and so finds
contacts deleted in a merge with their ``MasterRecordId`` ("merge()", SOAP API Developer
Guide: "Use queryAll() to view records that have been deleted during a merge").

``select`` and ``record_row`` are shared with the Bulk API 2.0 query jobs (bulk.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from standins.common.http import Reply
from standins.salesforce.errors import Refusal
from standins.salesforce.schema import ObjectSchema
from standins.salesforce.soql import Query, field_value, parse
from standins.salesforce.store import (
    BASE62,
    SalesforceStore,
    format_datetime,
    parse_datetime,
)

DEFAULT_PAGE_SIZE = 2000
_KEPT_CURSORS = 50  # like Salesforce, old cursors expire


def parse_query(store: SalesforceStore, soql: str) -> Query:
    """A query on the org's sObjects (Contact, Lead, Account, Task)."""
    return parse(soql, store.org.object, lambda schema, name: _spelling(store, schema, name))


def _spelling(store: SalesforceStore, schema: ObjectSchema, name: str) -> str:
    return store.field_name_for(schema.name, name)


def select(store: SalesforceStore, query: Query, *, include_deleted: bool) -> list[dict[str, Any]]:
    """The stored records the query selects now, in its order (the records themselves,
    never copies)."""
    object_name = query.object.name
    records = store.records[object_name]
    candidates: list[dict[str, Any]] | None = None
    ordered_by_stamp = False
    if object_name == "Contact":
        candidates, ordered_by_stamp = _narrowed(store, query)
    if candidates is None:
        candidates = list(records.values())
        if query.where is None and include_deleted:
            return query.arrange(candidates)
    if not include_deleted:
        candidates = [record for record in candidates if not record.get("IsDeleted")]
    test = query.where
    if test is not None:
        candidates = [record for record in candidates if test(record)]
    if ordered_by_stamp and _stamp_order(query):
        start = query.offset or 0
        end = None if query.limit is None else start + query.limit
        return candidates[start:end]
    return query.arrange(candidates)


def _narrowed(store: SalesforceStore, query: Query) -> tuple[list[dict[str, Any]] | None, bool]:
    """Contacts a query's top-level AND terms leave, read from an index; None: every one.
    True when they come in SystemModstamp, Id order."""
    since: datetime | None = None
    until: datetime | None = None
    inclusive = False
    for path, operator, literal in query.conjuncts:
        name = path.name.lower()
        if name == "systemmodstamp" and literal.kind == "datetime":
            if operator in (">", ">=") and (since is None or literal.value > since):
                since, inclusive = literal.value, operator == ">="
            elif operator in ("<", "<=") and (until is None or literal.value < until):
                until = literal.value
        elif name == "id" and operator == "=" and literal.kind == "id":
            record = store.contacts.get(literal.value)
            return ([record] if record is not None else []), False
    if since is not None:
        return store.in_window(since, until, inclusive_start=inclusive), True
    ids = query.id_list
    if ids is not None:
        contacts = store.contacts
        return [contacts[key] for key in dict.fromkeys(ids) if key in contacts], False
    return None, False


def _stamp_order(query: Query) -> bool:
    """Whether the query's ORDER BY is the stamp index's own order (or none)."""
    order = [(path.name.lower(), descending) for path, descending, _ in query.order]
    return order in ([], [("systemmodstamp", False)], [("systemmodstamp", False), ("id", False)])


def record_row(
    schema: ObjectSchema,
    record: Mapping[str, Any],
    query: Query | None,
    version: str,
    names: list[str] | None = None,
    *,
    url_base: str = "sobjects",
) -> dict[str, Any]:
    """A record as the API shows it: all its fields, or those the query (or ``names``)
    asks for, in the org's spelling and the query's order."""
    row: dict[str, Any] = {
        "attributes": {
            "type": schema.name,
            "url": f"/services/data/{version}/{url_base}/{schema.name}/{record['Id']}",
        }
    }
    if query is None and names is None:
        row.update(record)
        return row
    wanted = [path.name for path in query.fields] if query is not None else names or []
    for name in wanted:
        value = field_value(schema, record, name)
        if "." not in name:
            row[name] = value
            continue
        relationship, _, field_name = name.partition(".")
        related = record.get(relationship)
        attributes = related.get("attributes") if isinstance(related, Mapping) else None
        nested = row.setdefault(
            relationship, {"attributes": attributes or {"type": relationship, "url": None}}
        )
        nested[field_name] = value
    return row


class Queries:
    """Answers queries from the store, ``page_size`` rows a page."""

    def __init__(self, store: SalesforceStore) -> None:
        self.store = store

    def query(self, soql: str, endpoint: str, version: str, page_size: int) -> Reply:
        """``query`` or ``queryAll`` (which includes deleted records)."""
        store = self.store
        parsed = parse_query(store, soql)
        matches = select(store, parsed, include_deleted=endpoint == "queryAll")
        return Reply(200, self._page(matches, parsed, 0, endpoint, version, None, page_size))

    def query_more(self, locator: str, endpoint: str, version: str, page_size: int) -> Reply:
        cursor, _, position = locator.rpartition("-")
        found = self.store.cursors.get(cursor)
        if found is None or not position.isdigit():
            raise Refusal(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        records, parsed = found
        page = self._page(records, parsed, int(position), endpoint, version, cursor, page_size)
        return Reply(200, page)

    def _page(
        self,
        records: list[dict[str, Any]],
        parsed: Query,
        start: int,
        endpoint: str,
        version: str,
        cursor: str | None,
        page_size: int,
    ) -> dict[str, Any]:
        end = start + max(1, page_size)
        done = end >= len(records)
        rows = [record_row(parsed.object, r, parsed, version) for r in records[start:end]]
        page: dict[str, Any] = {"totalSize": len(records), "done": done, "records": rows}
        if not done:
            if cursor is None:
                cursors = self.store.cursors
                cursor = "01g" + "".join(secrets.choice(BASE62) for _ in range(15))
                cursors[cursor] = (records, parsed)
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
