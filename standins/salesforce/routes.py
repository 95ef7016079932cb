"""The REST API (v60.0) and the way into it.

Each request is logged and may meet a fault; then it goes to the token endpoint or through
the API's gate (a live session, the daily allowance), and on to its route, as the REST API
Developer Guide describes them:

- ``sobjects/<type>/describe`` ("sObject Describe") for Contact, Lead, Account, Task;
- ``sobjects/<type>/<id>``: GET (``?fields=``) and PATCH of a Contact, Lead, Account or Task
  ("sObject Rows"); ``POST sobjects/Task`` creates one ("sObject Basic Information");
- ``sobjects/Task/<field>/<value>``: upsert on an External ID field ("Upsert Records Using
  sObject Rows by External ID"); on a field that is not one, or does not exist,
  ``404 NOT_FOUND`` "Provided external ID field does not exist or is not accessible";
- ``composite/sobjects``: PATCH updates up to 200 Contacts, Leads and Accounts, POST creates
  up to 200 Tasks, ``allOrNone`` either way ("sObject Collections"); ``PATCH
  composite/sobjects/Task/<field>`` upserts Tasks on an External ID field;
- ``composite``: up to 25 subrequests, ``allOrNone`` rolling back ("Composite");
- ``query`` and ``queryAll`` with their pages (query.py), getUpdated;
- Bulk API 2.0 query jobs (bulk.py) and the Tooling API's ValidationRule (tooling.py).

Updates meet what a real org checks: the org's schema (schema.py: INVALID_FIELD for a field
it lacks, INVALID_FIELD_FOR_INSERT_UPDATE for one the integration user may not write), a
deleted record (ENTITY_IS_DELETED), a converted lead (CANNOT_UPDATE_CONVERTED_LEAD,
"cannot reference converted lead": Salesforce Help, "CANNOT_UPDATE_CONVERTED_LEAD"), and the
org's validation rule on Contact when it is installed and active (rules.py). Requests are
applied one at a time under the store's lock, so every call is atomic.
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
from standins.salesforce.query import Queries, record_row
from standins.salesforce.rules import version_rule_error
from standins.salesforce.schema import ObjectSchema
from standins.salesforce.store import (
    API_USER_ID,
    VERSION_FIELD,
    RecordError,
    SalesforceStore,
    normalize_id,
)
from standins.salesforce.tooling import Tooling

API_VERSION = "v60.0"
MAX_RECORDS = 200  # sObject Collections
MAX_SUBREQUESTS = 25  # composite
MAX_COLLECTION_SUBREQUESTS = 5  # composite: collections and queries among the 25

DATA_PATH = re.compile(r"^/services/data/(v\d+\.\d+)/(.*?)/?$")
_HEAVY = re.compile(r"/(composite/sobjects|query|queryAll)(/|$)")
_REFERENCE = re.compile(r"[A-Za-z0-9_]+")
UPDATABLE = ("Contact", "Lead", "Account", "Task")
CREATABLE = ("Task",)
CONVERTED_LEAD: RecordError = (
    "CANNOT_UPDATE_CONVERTED_LEAD",
    "cannot reference converted lead",
    [],
)


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


def _lookup(record: Mapping[str, Any], name: str) -> Any:
    """A field of a request body, named in any case."""
    lowered = name.lower()
    return next((value for key, value in record.items() if key.lower() == lowered), None)


class Org(Protocol):
    """What the routes work with: the SalesforceStandIn's parts and settings."""

    store: SalesforceStore
    faults: FaultBook[SalesforceFault]
    rejections: Rejections
    oauth: OAuth
    page_size: int
    auto_create: bool
    bulk_in_progress_polls: int

    @property
    def version_rule_enforced(self) -> bool: ...

    def version_rule_enforced_on(self, object_name: str) -> bool: ...

    def validation_rules(self) -> list[dict[str, Any]]: ...

    def hold(self, delay: FaultRule | None) -> bool: ...

    def mark_changed(self) -> None: ...


class SalesforceRoutes:
    def __init__(self, org: Org) -> None:
        self.org = org
        self.store = org.store
        self.queries = Queries(org.store)
        self.bulk = BulkQueries(org.store)
        self.tooling = Tooling(org.validation_rules)

    def serve(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        *,
        login_host: bool = False,
    ) -> Reply | None:
        """Answer one request outside the control API; None: drop it (stopping).
        ``login_host``: it came to the generic login host, not the org's My Domain."""
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
                return org.oauth.token(method, headers, body, login_host=login_host)
            if login_host or not path.startswith(DATA_PREFIX):
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

    def _object(self, name: str) -> ObjectSchema:
        schema = self.store.org.object(name)
        if schema is None:
            raise Refusal(*NOT_FOUND)
        return schema

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
            case ["sobjects", object_name, "describe"]:
                _allow(method, "GET")
                return Reply(200, self._object(object_name).describe(version))
            case ["sobjects", object_name]:
                _allow(method, "POST")
                return self._create(self._object(object_name).name, payload)
            case ["sobjects", object_name, record_id]:
                _allow(method, "GET", "PATCH")
                schema = self._object(object_name)
                if method == "GET":
                    return self._get(schema, record_id, params, version)
                return self._patch(schema.name, record_id, payload)
            case ["sobjects", object_name, external_field, value]:
                _allow(method, "PATCH")
                return self._upsert_task(object_name, external_field, value, payload, version)
            case ["composite", "sobjects"]:
                _allow(method, "PATCH", "POST")
                if method == "POST":
                    return Reply(200, self._create_collection(payload))
                return Reply(200, self._update_collection(payload))
            case ["composite", "sobjects", object_name, external_field]:
                _allow(method, "PATCH")
                return Reply(200, self._upsert_collection(object_name, external_field, payload))
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
            case ["tooling", "query"]:
                _allow(method, "GET")
                return self.tooling.query(params.get("q", ""), version)
            case ["tooling", "sobjects", object_name, record_id]:
                _allow(method, "GET")
                return self.tooling.get(object_name, record_id, version)
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

    # -- reading and updating one record -----------------------------------------------------

    def _get(
        self, schema: ObjectSchema, record_id: str, params: Mapping[str, str], version: str
    ) -> Reply:
        key = normalize_id(record_id)
        record = self.store.records[schema.name].get(key) if key else None
        if record is None:
            raise Refusal(*NOT_FOUND)
        if record["IsDeleted"]:
            raise Refusal(404, "ENTITY_IS_DELETED", "entity is deleted")
        if not params.get("fields"):
            return Reply(200, record_row(schema, record, None, version))
        names = [n.strip() for n in params["fields"].split(",")]
        unknown = [name for name in names if not schema.has(name)]
        if unknown:
            message = f"No such column '{unknown[0]}' on entity '{schema.name}'"
            raise Refusal(400, "INVALID_FIELD", message)
        spelled = [self.store.field_name_for(schema.name, name) for name in names]
        return Reply(200, record_row(schema, record, None, version, spelled))

    def _patch(self, object_name: str, record_id: str, payload: Any) -> Reply:
        if not isinstance(payload, dict):
            raise Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object of fields")
        key = normalize_id(record_id)
        fields = {k: v for k, v in payload.items() if k != "attributes"}
        error = self._update_error(object_name, key or record_id, fields)
        if error is not None:
            code, message, names = error
            status = 404 if code in ("NOT_FOUND", "ENTITY_IS_DELETED") else 400
            # A validation rule's error names its error location, as Salesforce's does.
            named = names if code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" else None
            raise Refusal(status, code, message, named)
        assert key is not None
        store = self.store
        canonical = store.canonical_for(object_name, fields)
        store.write(object_name, key, canonical, store.next_stamp(), API_USER_ID)
        return Reply(204)

    def _update_collection(self, payload: Any) -> list[dict[str, Any]]:
        records, all_or_none = _collection(payload)
        keys: list[str | None] = []
        types: list[str] = []
        errors: list[RecordError | None] = []
        for record in records:
            raw_id = record.get("id", record.get("Id"))
            key = normalize_id(raw_id)
            declared = _record_type(record)
            object_name = self._type_of(declared, key)
            error: RecordError | None
            if raw_id is None:
                error = ("MISSING_ARGUMENT", "Id not specified in an update call", [])
            elif object_name is None:
                error = ("INVALID_TYPE", f"sObject type '{declared}' is not supported", [])
            elif key is not None and key in keys:
                error = ("DUPLICATE_VALUE", f"Duplicate ID in list: {raw_id}", [])
            else:
                error = self._update_error(object_name, str(raw_id), _fields_of(record))
            keys.append(key)
            types.append(object_name or "")
            errors.append(error)
        if all_or_none and any(errors):
            return [
                record_result(key, error or ROLLED_BACK)
                for key, error in zip(keys, errors, strict=True)
            ]
        store = self.store
        stamp = store.next_stamp()
        for record, key, object_name, error in zip(records, keys, types, errors, strict=True):
            if error is None and key is not None:
                fields = store.canonical_for(object_name, _fields_of(record))
                store.write(object_name, key, fields, stamp, API_USER_ID)
        return [record_result(key, error) for key, error in zip(keys, errors, strict=True)]

    def _type_of(self, declared: str | None, key: str | None) -> str | None:
        """The object a collection record is: its attributes' type, else its Id's."""
        if declared is None:
            return self.store.object_of(key) if key else "Contact"
        schema = self.store.org.object(declared)
        return schema.name if schema is not None and schema.name in UPDATABLE else None

    def _update_error(
        self, object_name: str, record_id: str, fields: Mapping[str, Any]
    ) -> RecordError | None:
        store = self.store
        schema = store.schema(object_name)
        key = normalize_id(record_id)
        if key is None or not key.startswith(schema.key_prefix):
            message = f"{object_name} ID: id value of incorrect type: {record_id}"
            return ("MALFORMED_ID", message, [])
        rejection = self.org.rejections.take(key)
        if rejection is not None:
            return (rejection.code, rejection.message, rejection.fields)
        record = store.records[object_name].get(key)
        if record is None and not (object_name == "Contact" and self.org.auto_create):
            return ("NOT_FOUND", "The requested resource does not exist", [])
        if record is not None and record["IsDeleted"]:
            return ("ENTITY_IS_DELETED", "entity is deleted", [])
        if record is not None and record.get("IsConverted") and object_name == "Lead":
            return CONVERTED_LEAD
        error = store.field_error(object_name, fields)
        if error is None and object_name == "Account" and record is not None:
            error = _business_account_error(schema, record, fields)
        if error is None and object_name == "Task":
            error = self._who_error(fields)
        if error is None and self.org.version_rule_enforced_on(object_name):
            stored_name = store.field_name_for(object_name, VERSION_FIELD)
            error = version_rule_error(record, fields, stored_name)
        return error

    # -- tasks -------------------------------------------------------------------------------

    def _create(self, object_name: str, payload: Any) -> Reply:
        if object_name not in CREATABLE:
            raise Refusal(400, "INVALID_TYPE", f"the stand-in creates {', '.join(CREATABLE)} only")
        if not isinstance(payload, dict):
            raise Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object of fields")
        fields = {k: v for k, v in payload.items() if k != "attributes"}
        error = self._create_error(object_name, fields, {})
        if error is not None:
            raise Refusal(400, error[0], error[1], error[2])
        store = self.store
        canonical = store.canonical_for(object_name, fields)
        record_id = store.create(object_name, canonical, store.next_stamp(), API_USER_ID)
        return Reply(201, record_result(record_id, None))

    def _create_collection(self, payload: Any) -> list[dict[str, Any]]:
        records, all_or_none = _collection(payload)
        pending: dict[str, dict[str, str]] = {}  # unique values this call creates
        errors: list[RecordError | None] = []
        for record in records:
            object_name = _record_type(record)
            schema = self.store.org.object(object_name or "")
            if object_name is None:
                errors.append(("MISSING_ARGUMENT", "attributes.type is required", []))
            elif schema is None or schema.name not in CREATABLE:
                message = f"the stand-in creates {', '.join(CREATABLE)} records only"
                errors.append(("INVALID_TYPE", message, []))
            else:
                errors.append(self._create_error(schema.name, _fields_of(record), pending))
        if all_or_none and any(errors):
            return [record_result(None, error or ROLLED_BACK) for error in errors]
        store = self.store
        stamp = store.next_stamp()
        results = []
        for record, error in zip(records, errors, strict=True):
            if error is not None:
                results.append(record_result(None, error))
                continue
            object_name = store.schema(str(_record_type(record))).name
            fields = store.canonical_for(object_name, _fields_of(record))
            results.append(
                record_result(store.create(object_name, fields, stamp, API_USER_ID), None)
            )
        return results

    def _create_error(
        self, object_name: str, fields: Mapping[str, Any], pending: dict[str, dict[str, str]]
    ) -> RecordError | None:
        if any(name.lower() == "id" for name in fields):
            return ("INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", [])
        error = self.store.field_error(object_name, fields, creating=True)
        if error is None and object_name == "Task":
            error = self._who_error(fields)
        if error is None:
            error = self._unique_error(object_name, fields, pending)
        return error

    def _unique_error(
        self, object_name: str, fields: Mapping[str, Any], pending: dict[str, dict[str, str]]
    ) -> RecordError | None:
        """A value a unique field already holds (in the org, or earlier in this call)."""
        schema = self.store.schema(object_name)
        for name, value in fields.items():
            field = schema.field(name)
            if field is None or not field.unique or value in (None, ""):
                continue
            taken = pending.setdefault(field.name, {})
            existing = self.store.task_ids_with(field.name, value) if object_name == "Task" else []
            holder = existing[0] if existing else taken.get(str(value).lower())
            if holder is not None:
                message = (
                    f"duplicate value found: {field.name} duplicates value on record with id: "
                    f"{holder}"
                )
                return ("DUPLICATE_VALUE", message, [field.name])
            taken[str(value).lower()] = "(this request)"
        return None

    def _who_error(self, fields: Mapping[str, Any]) -> RecordError | None:
        who = _lookup(fields, "WhoId")
        if who is None:
            return None
        key = normalize_id(who) if isinstance(who, str) else None
        object_name = self.store.object_of(key) if key else None
        record = self.store.records[object_name].get(key) if object_name and key else None
        if record is None or object_name not in ("Contact", "Lead"):
            return ("FIELD_INTEGRITY_EXCEPTION", "Name ID: id value of incorrect type", ["WhoId"])
        if record["IsDeleted"]:
            return ("ENTITY_IS_DELETED", "entity is deleted", ["WhoId"])
        return None

    def _external_field(self, object_name: str, name: str) -> str:
        """The field an upsert matches on, as the org spells it: an External ID (or another
        idLookup field) of Task, as "upsert()" (SOAP API Developer Guide) allows; NOT_FOUND
        for any other, as the REST API answers."""
        schema = self.store.org.object(object_name)
        field = schema.field(name) if schema is not None and schema.name == "Task" else None
        if field is None or not (field.external_id or field.id_lookup):
            raise Refusal(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {name}",
            )
        return field.name

    def _matches(self, field_name: str, value: Any) -> list[str]:
        if field_name == "Id":
            key = normalize_id(value)
            return [key] if key is not None and key in self.store.tasks else []
        return self.store.task_ids_with(field_name, value)

    def _upsert_task(
        self, object_name: str, external_field: str, value: str, payload: Any, version: str
    ) -> Reply:
        name = self._external_field(object_name, external_field)
        if not isinstance(payload, dict):
            raise Refusal(400, "JSON_PARSER_ERROR", "expected a JSON object of fields")
        fields = {k: v for k, v in payload.items() if k != "attributes"}
        matched = self._matches(name, value)
        if len(matched) > 1:
            urls = [f"/services/data/{version}/sobjects/Task/{task_id}" for task_id in matched]
            return Reply(300, urls)
        if name != "Id":
            fields[name] = value
        error = self._upsert_error(fields, matched)
        if error is not None:
            raise Refusal(400, error[0], error[1], error[2] or None)
        store = self.store
        canonical = store.canonical_for("Task", fields)
        if matched:
            store.write("Task", matched[0], canonical, store.next_stamp(), API_USER_ID)
            return Reply(200, record_result(matched[0], None, False))
        task_id = store.create("Task", canonical, store.next_stamp(), API_USER_ID)
        return Reply(201, record_result(task_id, None, True))

    def _upsert_error(self, fields: Mapping[str, Any], matched: list[str]) -> RecordError | None:
        if matched:
            return self._update_error("Task", matched[0], fields)
        return self._create_error("Task", fields, {})

    def _upsert_collection(
        self, object_name: str, external_field: str, payload: Any
    ) -> list[dict[str, Any]]:
        name = self._external_field(object_name, external_field)
        records, all_or_none = _collection(payload)
        values = [_lookup(record, name) for record in records]
        duplicates = {v for v in values if isinstance(v, str) and values.count(v) > 1}
        plans: list[tuple[list[str], RecordError | None]] = []
        for record, value in zip(records, values, strict=True):
            if not isinstance(value, str) or not value:
                plans.append(([], ("MISSING_ARGUMENT", f"{name} not specified", [name])))
            elif value in duplicates:
                message = f"Duplicate external id specified: {value}"
                plans.append(([], ("DUPLICATE_EXTERNAL_ID", message, [name])))
            else:
                matched = self._matches(name, value)
                if len(matched) > 1:
                    message = f"More than 1 record found for external id field: {value}"
                    plans.append(([], ("DUPLICATE_EXTERNAL_ID", message, [name])))
                else:
                    fields = _fields_of(record)
                    plans.append((matched, self._upsert_error(fields, matched)))
        if all_or_none and any(error for _, error in plans):
            return [record_result(None, error or ROLLED_BACK, False) for _, error in plans]
        store = self.store
        stamp = store.next_stamp()
        results = []
        for record, (matched, error) in zip(records, plans, strict=True):
            if error is not None:
                results.append(record_result(None, error, False))
                continue
            fields = store.canonical_for("Task", _fields_of(record))
            if matched:
                store.write("Task", matched[0], fields, stamp, API_USER_ID)
                results.append(record_result(matched[0], None, False))
            else:
                results.append(
                    record_result(store.create("Task", fields, stamp, API_USER_ID), None, True)
                )
        return results

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


def _business_account_error(
    schema: ObjectSchema, record: Mapping[str, Any], fields: Mapping[str, Any]
) -> RecordError | None:
    """A Person field written to a business account (the stand-in's wording)."""
    if record.get("IsPersonAccount"):
        return None
    person = [
        declared.name
        for name in fields
        if (declared := schema.field(name)) is not None and declared.person
    ]
    if person:
        message = f"Business Account may not use Person Account field {person[0]}"
        return ("INVALID_FIELD_FOR_INSERT_UPDATE", message, person)
    return None
