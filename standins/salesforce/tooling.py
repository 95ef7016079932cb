"""The Tooling API's view of the org's validation rules: ``GET
/services/data/vXX.X/tooling/query?q=SELECT ... FROM ValidationRule WHERE
EntityDefinition.QualifiedApiName = 'Contact'`` and ``GET
/services/data/vXX.X/tooling/sobjects/ValidationRule/<id>``.

As the Tooling API Developer Guide's "ValidationRule" page documents the object: ``Id``,
``ValidationName``, ``Active``, ``Description``, ``ErrorMessage``, ``ErrorDisplayField``,
``EntityDefinitionId`` and the ``EntityDefinition`` it belongs to, ``NamespacePrefix``,
``ManageableState``, the system fields, and ``FullName`` and ``Metadata`` (the rule's
``errorConditionFormula``, ``errorMessage``, ``errorDisplayField``, ``active``...), which
may be queried "only if the query result contains no more than one record. Otherwise, an
error is returned" (MALFORMED_QUERY). Reading one rule by Id always carries its Metadata.
Queries go through the same SOQL as the REST API's (soql.py). Called with the store's lock
held; a tooling call is an API call like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from standins.common.http import Reply
from standins.salesforce.errors import NOT_FOUND, Refusal
from standins.salesforce.query import record_row
from standins.salesforce.schema import Field, ObjectSchema
from standins.salesforce.soql import parse
from standins.salesforce.store import normalize_id

_ONE_ROW_FIELDS = frozenset({"metadata", "fullname"})


def _validation_rule_schema() -> ObjectSchema:
    fixed: dict[str, Any] = {"updateable": False, "createable": False}
    schema = ObjectSchema(
        "ValidationRule",
        "Validation Rule",
        "Validation Rules",
        "03d",
        [
            Field("Id", "id", "Validation Rule ID", 18, nillable=False, id_lookup=True, **fixed),
            Field("ValidationName", "string", "Rule Name", 40, nillable=False),
            Field("Active", "boolean", "Active", nillable=False),
            Field("Description", "string", "Description", 255),
            Field("ErrorMessage", "string", "Error Message", 255, nillable=False),
            Field("ErrorDisplayField", "string", "Error Location", 255),
            Field("EntityDefinitionId", "string", "Entity Definition ID", 18, nillable=False),
            Field("NamespacePrefix", "string", "Namespace Prefix", 15, **fixed),
            Field("ManageableState", "picklist", "Manageable State", 40, **fixed),
            Field("FullName", "string", "Full Name", 255),
            Field("Metadata", "complexvalue", "Metadata"),
            Field("CreatedDate", "datetime", "Created Date", nillable=False, **fixed),
            Field("CreatedById", "reference", "Created By ID", 18, **fixed),
            Field("LastModifiedDate", "datetime", "Last Modified Date", **fixed),
            Field("LastModifiedById", "reference", "Last Modified By ID", 18, **fixed),
        ],
    )
    schema.relationships["entitydefinition"] = ObjectSchema(
        "EntityDefinition",
        "Entity Definition",
        "Entity Definitions",
        "",
        [
            Field("QualifiedApiName", "string", "Qualified API Name", 255),
            Field("DeveloperName", "string", "Developer Name", 40),
            Field("DurableId", "string", "Durable ID", 255),
            Field("Label", "string", "Label", 40),
        ],
    )
    return schema


class Tooling:
    """Answers the Tooling API from the rules the org has now (``rules()``)."""

    def __init__(self, rules: Callable[[], list[dict[str, Any]]]) -> None:
        self.rules = rules
        self.schema = _validation_rule_schema()

    def _resolve(self, name: str) -> ObjectSchema | None:
        return self.schema if name.lower() == "validationrule" else None

    def query(self, soql: str, version: str) -> Reply:
        parsed = parse(soql, self._resolve)
        found = parsed.select(self.rules())
        one_row_only = [p for p in parsed.fields if p.name.lower() in _ONE_ROW_FIELDS]
        if one_row_only and len(found) > 1:
            raise Refusal(
                400,
                "MALFORMED_QUERY",
                "When retrieving results with Metadata or FullName fields, the query "
                "qualifications must specify no more than one row for retrieval. "
                f"Result size: {len(found)}",
            )
        rows = [self._row(rule, parsed, version) for rule in found]
        return Reply(
            200,
            {
                "size": len(rows),
                "totalSize": len(rows),
                "done": True,
                "queryLocator": None,
                "entityTypeName": "ValidationRule",
                "records": rows,
            },
        )

    def get(self, object_name: str, record_id: str, version: str) -> Reply:
        if object_name.lower() != "validationrule":
            raise Refusal(*NOT_FOUND)
        key = normalize_id(record_id)
        rule = next((r for r in self.rules() if r["Id"] == key), None)
        if rule is None:
            raise Refusal(*NOT_FOUND)
        return Reply(200, self._row(rule, None, version))

    def _row(self, rule: Mapping[str, Any], parsed: Any, version: str) -> dict[str, Any]:
        entity = dict(rule["EntityDefinition"])
        entity["attributes"] = {
            "type": "EntityDefinition",
            "url": f"/services/data/{version}/tooling/sobjects/EntityDefinition/"
            f"{entity['DurableId']}",
        }
        record = {**rule, "EntityDefinition": entity}
        if parsed is None:
            row = record_row(self.schema, record, None, version, url_base="tooling/sobjects")
            del row["EntityDefinition"]  # a record read by Id names its entity by Id only
            return row
        return record_row(self.schema, record, parsed, version, url_base="tooling/sobjects")
