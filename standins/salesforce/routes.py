"""The REST API (v60.0) and the way into it.

Each request is logged and may meet a fault; then it goes to the token endpoint or through
the API's gate (a live session, the daily allowance), and on to its route: sObject Contact
and Task, sObject Collections, composite, the queries (``query.py``) and the Bulk API 2.0
query jobs (``bulk.py``). Requests are applied one at a time under the store's lock, so
every call is atomic. Contact updates meet the org's validation rule when it is installed
(``rules.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from standins.common.faults import DELAY_KINDS, FaultBook, FaultRule
from standins.common.http import Reply
from standins.salesforce.bulk import BulkQueries
from standins.salesforce.errors import (
    HALTED,
    NOT_FOUND,
    ROLLED_BACK,
    Refusal,
    record_result,
)
from standins.salesforce.faults import (
    ANSWER_KINDS,
    DATA_PREFIX,
    EXPIRE_SESSIONS,
    Rejections,
    SalesforceFault,
    fault_reply,
)
from standins.salesforce.oauth import TOKEN_PATH, OAuth
from standins.salesforce.query import Queries, contact_row
from standins.salesforce.rules import version_rule_error
from standins.salesforce.store import (
    API_USER_ID,
    VERSION_FIELD,
    RecordError,
    SalesforceStore,
    normalize_id,
)

API_VERSION = "v60.0"
MAX_RECORDS = 200  # sObject Collections
MAX_SUBREQUESTS = 25  # composite
MAX_COLLECTION_SUBREQUESTS = 5  # composite: collections and queries among the 25

DATA_PATH = re.compile(r"^/services/data/(v\d+\.\d+)/(.*?)/?$")
_HEAVY = re.compile(r"/(composite/sobjects|query|queryAll)(/|$)")
_REFERENCE = re.compile(r"[A-Za-z0-9_]+")


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise Refusal(
            405,
            "METHOD_NOT_ALLOWED",
            f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}",
        )


def _collection(payload: Any) -> tuple[list[dict[str, Any]], bool]:
    """The records of an sObject Collections body, and its allOrNone."""
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise Refusal(400, "JSON_PARSER_ERROR", 'expected {"allOrNone": ..., "records": [...]}')
    records = payload["records"]
    if len(records) > MAX_RECORDS:
        raise Refusal(
            400,
            "EXCEEDED_ID_LIMIT",
            f"record limit reached. cannot submit more than {MAX_RECORDS} records into this call",
        )
    if not all(isinstance(record, dict) for record in records):
        raise Refusal(400, "JSON_PARSER_ERROR", "each record must be a JSON object")
    return records, payload.get("allOrNone") is True


def _fields_of(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}


def _record_type(record: Mapping[str, Any]) -> str | None:
    attributes = record.get("attributes")
    return attributes.get("type") if isinstance(attributes, dict) else None


class Org(Protocol):
    """What the routes work with: the SalesforceStandIn's parts and settings."""

    store: SalesforceStore
    faults: FaultBook[SalesforceFault]
    rejections: Rejections
    oauth: OAuth
    page_size: int
    auto_create: bool
    version_rule: bool
    bulk_in_progress_polls: int

    def hold(self, delay: FaultRule | None) -> bool: ...

    def mark_changed(self) -> None: ...


class SalesforceRoutes:
    def __init__(self, org: Org) -> None:
        self.org = org
        self.store = org.store
        self.queries = Queries(org.store)
        self.bulk = BulkQueries(org.store)

    def serve(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply | None:
        """Answer one request outside the control API; None: drop it (stopping)."""
        org, faults = self.org, self.org.faults
        with self.store.lock:
            self.store.log.append((method, path))
            delay = faults.take(DELAY_KINDS, path)
        if org.hold(delay):
            return None
        try:
            if path == TOKEN_PATH:
                fault = faults.take(ANSWER_KINDS, path)
                if fault is not None:
                    return fault_reply(fault.kind)
                return org.oauth.token(method, headers, body)
            if not path.startswith(DATA_PREFIX):
                raise Refusal(*NOT_FOUND)
            return self._api(method, path, params, headers, body)
        except Refusal as refusal:
            return refusal.reply()

    def _api(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        """The gate: session, allowance and faults, in that order; then the route. Only
        calls that reach a route count against the allowance."""
        org, store, faults = self.org, self.store, self.org.faults
        with store.lock:
            if faults.take(EXPIRE_SESSIONS, path) is not None:
                org.oauth.expire_sessions()
            if not org.oauth.valid(headers.get("authorization", "")):
                reply = Refusal(401, "INVALID_SESSION_ID", "Session expired or invalid").reply()
            elif store.api_used >= store.api_allowance:
                reply = Refusal(
                    403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."
                ).reply()
            elif (fault := faults.take(ANSWER_KINDS, path)) is not None:
                reply = fault_reply(fault.kind)
            else:
                store.api_used += 1
                store.api_calls += 1
                try:
                    payload = json.loads(body) if body else None
                except ValueError:
                    reply = Refusal(400, "JSON_PARSER_ERROR", "The body is not JSON").reply()
                else:
                    try:
                        reply = self._route(method, path, params, payload)
                    except Refusal as refusal:
                        reply = refusal.reply()
                org.mark_changed()
            reply.headers["Sforce-Limit-Info"] = f"api-usage={store.api_used}/{store.api_allowance}"
            return reply

    def _route(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        payload: Any,
        *,
        nested: bool = False,
    ) -> Reply:
        match = DATA_PATH.match(path)
        if match is None:
            raise Refusal(*NOT_FOUND)
        version, rest = match.groups()
        parts = [unquote(part) for part in rest.split("/")] if rest else []
        match parts:
            case ["sobjects", "Contact", "updated"]:
                _allow(method, "GET")
                return self.queries.updated(params)
            case ["sobjects", "Contact", contact_id]:
                _allow(method, "GET", "PATCH")
                if method == "GET":
                    return self._get_contact(contact_id, params, version)
                return self._patch_contact(contact_id, payload)
            case ["sobjects", "Task", external_field, value]:
                _allow(method, "PATCH")
                return self._upsert_task(external_field, value, payload)
            case ["composite", "sobjects"]:
                _allow(method, "PATCH")
                return Reply(200, self._update_collection(payload))
            case ["composite", "sobjects", "Task", external_field]:
                _allow(method, "PATCH")
                return Reply(200, self._upsert_task_collection(external_field, payload))
            case ["composite"] if not nested:
                _allow(method, "POST")
                return self._composite(payload)
            case ["query" | "queryAll" as endpoint]:
                _allow(method, "GET")
                soql = params.get("q", "")
                return self.queries.query(soql, endpoint, version, self.org.page_size)
            case ["query" | "queryAll" as endpoint, locator]:
                _allow(method, "GET")
                return self.queries.query_more(locator, endpoint, version, self.org.page_size)
            case ["jobs", "query"] if not nested:
                _allow(method, "GET", "POST")
                if method == "GET":
                    return self.bulk.all_jobs()
                return self.bulk.create(payload, version, self.org.bulk_in_progress_polls)
            case ["jobs", "query", job_id] if not nested:
                _allow(method, "GET", "PATCH", "DELETE")
                if method == "GET":
                    return self.bulk.info(job_id)
                if method == "PATCH":
                    return self.bulk.abort(job_id, payload)
                return self.bulk.delete(job_id)
            case ["jobs", "query", job_id, "results"] if not nested:
                _allow(method, "GET")
                return self.bulk.results(job_id, params)
        raise Refusal(*NOT_FOUND)

    # -- contacts ----------------------------------------------------------------------------

    def _get_contact(self, contact_id: str, params: Mapping[str, str], version: str) -> Reply:
        key = normalize_id(contact_id)
        record = self.store.contacts.get(key) if key else None
        if record is None:
            raise Refusal(*NOT_FOUND)
        if record["IsDeleted"]:
            raise Refusal(404, "ENTITY_IS_DELETED", "entity is deleted")
        names = [n.strip() for n in params["fields"].split(",")] if params.get("fields") else None
        return Reply(200, contact_row(self.store, record, names, version))

    def _patch_contact(self, contact_id: str, payload: Any) -> Reply:
        if not isinstance(payload, dict):
            raise Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object of fields")
        key = normalize_id(contact_id)
        error = self._contact_error(key or contact_id, payload)
        if error is not None:
            code, message, fields = error
            status = 404 if code in ("NOT_FOUND", "ENTITY_IS_DELETED") else 400
            # A validation rule's error names its error location, as Salesforce's does.
            named = fields if code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" else None
            raise Refusal(status, code, message, named)
        assert key is not None
        store = self.store
        store.write_contact(key, store.canonical(payload), store.next_stamp(), API_USER_ID)
        return Reply(204)

    def _update_collection(self, payload: Any) -> list[dict[str, Any]]:
        records, all_or_none = _collection(payload)
        keys: list[str | None] = []
        errors: list[RecordError | None] = []
        for record in records:
            raw_id = record.get("id", record.get("Id"))
            key = normalize_id(raw_id)
            if raw_id is None:
                error: RecordError | None = (
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    [],
                )
            elif _record_type(record) not in (None, "Contact"):
                error = ("INVALID_TYPE", "the stand-in updates Contact records only", [])
            elif key is not None and key in keys:
                error = ("DUPLICATE_VALUE", f"Duplicate ID in list: {raw_id}", [])
            else:
                error = self._contact_error(str(raw_id), _fields_of(record))
            keys.append(key)
            errors.append(error)
        if all_or_none and any(errors):
            return [
                record_result(key, error or ROLLED_BACK)
                for key, error in zip(keys, errors, strict=True)
            ]
        store = self.store
        stamp = store.next_stamp()
        for record, key, error in zip(records, keys, errors, strict=True):
            if error is None and key is not None:
                store.write_contact(key, store.canonical(_fields_of(record)), stamp, API_USER_ID)
        return [record_result(key, error) for key, error in zip(keys, errors, strict=True)]

    def _contact_error(self, contact_id: str, fields: Mapping[str, Any]) -> RecordError | None:
        key = normalize_id(contact_id)
        if key is None or not key.startswith("003"):
            return ("MALFORMED_ID", f"Contact ID: id value of incorrect type: {contact_id}", [])
        rejection = self.org.rejections.take(key)
        if rejection is not None:
            return (rejection.code, rejection.message, rejection.fields)
        record = self.store.contacts.get(key)
        if record is None and not self.org.auto_create:
            return ("NOT_FOUND", "The requested resource does not exist", [])
        if record is not None and record["IsDeleted"]:
            return ("ENTITY_IS_DELETED", "entity is deleted", [])
        error = self.store.field_error(fields)
        if error is None and self.org.version_rule:
            error = version_rule_error(record, fields, self.store.field_name(VERSION_FIELD))
        return error

    # -- tasks -------------------------------------------------------------------------------

    def _check_external_field(self, name: str) -> None:
        if name.lower() != self.store.task_external_id.lower():
            raise Refusal(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {name}",
            )

    def _upsert_task(self, external_field: str, value: str, payload: Any) -> Reply:
        self._check_external_field(external_field)
        if not isinstance(payload, dict):
            raise Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object of fields")
        record = {k: v for k, v in payload.items() if k != "attributes"}
        record[self.store.task_external_id] = value
        error = self._task_error(record, set())
        if error is not None:
            raise Refusal(400, error[0], error[1])
        task_id, created = self.store.write_task(value, record, self.store.next_stamp())
        return Reply(201 if created else 200, record_result(task_id, None, created))

    def _upsert_task_collection(self, external_field: str, payload: Any) -> list[dict[str, Any]]:
        self._check_external_field(external_field)
        records, all_or_none = _collection(payload)
        name = self.store.task_external_id
        values = [record.get(name) for record in records]
        duplicates = {v for v in values if isinstance(v, str) and values.count(v) > 1}
        errors = [self._task_error(record, duplicates) for record in records]
        if all_or_none and any(errors):
            return [record_result(None, error or ROLLED_BACK, False) for error in errors]
        stamp = self.store.next_stamp()
        results = []
        for record, error in zip(records, errors, strict=True):
            if error is not None:
                results.append(record_result(None, error, False))
                continue
            fields = {k: v for k, v in record.items() if k != "attributes"}
            task_id, created = self.store.write_task(record[name], fields, stamp)
            results.append(record_result(task_id, None, created))
        return results

    def _task_error(self, record: Mapping[str, Any], duplicates: set[str]) -> RecordError | None:
        name = self.store.task_external_id
        value = record.get(name)
        if not isinstance(value, str) or not value:
            return ("MISSING_ARGUMENT", f"{name} not specified", [name])
        if value in duplicates:
            return ("DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", [name])
        who = record.get("WhoId")
        if who is not None:
            key = normalize_id(who) if isinstance(who, str) else None
            contact = self.store.contacts.get(key) if key else None
            if contact is None:
                message = "Name ID: id value of incorrect type"
                return ("FIELD_INTEGRITY_EXCEPTION", message, ["WhoId"])
            if contact["IsDeleted"]:
                return ("ENTITY_IS_DELETED", "entity is deleted", ["WhoId"])
        # The declared schema is the Contact's: a task's fields are not checked against it.
        return self.store.read_only_error(record)

    # -- composite ---------------------------------------------------------------------------

    def _composite(self, payload: Any) -> Reply:
        """Up to 25 subrequests in order, as one API call; with allOrNone, the first failure
        rolls back the ones before it and halts the rest."""
        parsed, all_or_none = self._subrequests(payload)
        answers: list[tuple[str, Reply]] = []
        failed = False
        with self.store.journal(all_or_none):
            for reference, method, path, params, body in parsed:
                if failed:
                    answers.append((reference, HALTED.reply()))
                    continue
                try:
                    reply = self._route(method, path, params, body, nested=True)
                except Refusal as refusal:
                    reply = refusal.reply()
                failed = all_or_none and reply.status >= 400
                answers.append((reference, reply))
            if failed:
                self.store.rollback()
                answers = [(ref, r if r.status >= 400 else HALTED.reply()) for ref, r in answers]
        return Reply(
            200,
            {
                "compositeResponse": [
                    {
                        "body": reply.body,
                        "httpHeaders": reply.headers,
                        "httpStatusCode": reply.status,
                        "referenceId": reference,
                    }
                    for reference, reply in answers
                ]
            },
        )

    def _subrequests(
        self, payload: Any
    ) -> tuple[list[tuple[str, str, str, dict[str, str], Any]], bool]:
        """(referenceId, method, path, params, body) of each subrequest, and allOrNone;
        refuses the whole request if any is malformed or there are too many."""
        if not isinstance(payload, dict) or not isinstance(payload.get("compositeRequest"), list):
            raise Refusal(400, "JSON_PARSER_ERROR", "compositeRequest is required")
        subrequests = payload["compositeRequest"]
        if len(subrequests) > MAX_SUBREQUESTS:
            raise Refusal(
                400,
                "LIMIT_EXCEEDED",
                f"A composite request can't contain more than {MAX_SUBREQUESTS} subrequests",
            )
        parsed: list[tuple[str, str, str, dict[str, str], Any]] = []
        references: set[str] = set()
        heavy = 0
        for sub in subrequests:
            if not isinstance(sub, dict):
                raise Refusal(400, "JSON_PARSER_ERROR", "each subrequest must be an object")
            method, url, reference = sub.get("method"), sub.get("url"), sub.get("referenceId")
            if not (isinstance(method, str) and isinstance(url, str)):
                raise Refusal(400, "INVALID_INPUT", "each subrequest needs a method and a url")
            if not isinstance(reference, str) or not _REFERENCE.fullmatch(reference):
                raise Refusal(400, "INVALID_INPUT", "each subrequest needs a referenceId")
            if reference in references:
                raise Refusal(400, "INVALID_INPUT", f"Duplicate referenceId: {reference}")
            references.add(reference)
            split = urlsplit(url)
            if not DATA_PATH.match(split.path):
                raise Refusal(400, "INVALID_INPUT", f"Invalid subrequest url: {url}")
            if _HEAVY.search(split.path):
                heavy += 1
            params = {k: v[-1] for k, v in parse_qs(split.query).items()}
            parsed.append((reference, method.upper(), split.path, params, sub.get("body")))
        if heavy > MAX_COLLECTION_SUBREQUESTS:
            raise Refusal(
                400,
                "LIMIT_EXCEEDED",
                f"A composite request can contain at most {MAX_COLLECTION_SUBREQUESTS} "
                "sObject Collections or query subrequests",
            )
        return parsed, payload.get("allOrNone") is True
