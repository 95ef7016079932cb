"""The org's validation rule on Contact that Preference Desk's README asks the admin to
install, so that an older push arriving late cannot overwrite a newer one:

- rule name ``Preference_Version_Not_Older``;
- error condition formula ``PRIORVALUE(Preference_Version__c) > Preference_Version__c``;
- error location the field ``Preference_Version__c``;
- error message ``PD_SUPERSEDED: a newer Preference Desk change is already stored for this
  contact.``

It is the pattern of Salesforce's sample rule "Allow Number to Be Increased but Not
Decreased" (``PRIORVALUE(Commit_Amount__c) > Commit_Amount__c``, in "Sample Validation
Rules", Miscellaneous Sample Validation Rules), evaluated as the formula reference
"PRIORVALUE" says: the field's value before the update; on a create, the new value itself
(so a create never trips it). A comparison with a blank number is not true, so a blank on
either side never blocks; an update that leaves the field out compares the stored value
with itself and passes.

A record the rule refuses fails with ``FIELD_CUSTOM_VALIDATION_EXCEPTION``, the message,
and the error location as its field, like any validation rule. The stand-in applies it to
API updates (sObject PATCH, sObject Collections, either inside composite); the test helpers
that load or change data directly (add_contacts, external_update) bypass it, as a data load
run with validation rules switched off would.

The Tooling API shows the rule as a ``ValidationRule`` record ("ValidationRule", Tooling API
Developer Guide): ``ValidationName``, ``Active``, ``ErrorMessage``, ``ErrorDisplayField``,
``EntityDefinition`` (Contact), and its ``Metadata`` (``errorConditionFormula`` and the
rest, as the Metadata API's ValidationRule type has them). An org without the rule, or
without the field it reads, has no such record; an inactive rule is listed with ``Active``
false and refuses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from standins.salesforce.store import ADMIN_USER_ID, VERSION_FIELD, RecordError, make_id

VERSION_RULE_NAME = "Preference_Version_Not_Older"
VERSION_RULE_ID = make_id("03d", 1)
LEAD_VERSION_RULE_ID = make_id("03d", 2)  # the same rule on Lead (README, Salesforce set-up)
VERSION_RULE_DESCRIPTION = (
    "Preference Desk: a late or repeated push may not overwrite a newer change "
    "(README, Salesforce set-up)."
)
_INSTALLED = datetime(2024, 1, 15, 9, 30, tzinfo=UTC)
VERSION_RULE_FORMULA = f"PRIORVALUE({VERSION_FIELD}) > {VERSION_FIELD}"
VERSION_RULE_MESSAGE = (
    "PD_SUPERSEDED: a newer Preference Desk change is already stored for this contact."
)
VERSION_RULE_ERROR: RecordError = (
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    VERSION_RULE_MESSAGE,
    [VERSION_FIELD],
)


def _number(value: Any) -> Decimal | None:
    """A Number field's value, or None for a blank (or anything that is not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def version_rule_error(
    stored: Mapping[str, Any] | None, fields: Mapping[str, Any], stored_name: str
) -> RecordError | None:
    """Why the rule refuses this update of a contact, or None.

    ``stored``: the contact as it is (None: the update creates it); ``fields``: the update,
    field names in any case; ``stored_name``: the org's spelling of the version field.
    """
    if stored is None:
        return None  # PRIORVALUE on a create is the new value: never greater than itself
    wanted = VERSION_FIELD.lower()
    new = next((value for name, value in fields.items() if name.lower() == wanted), None)
    prior, after = _number(stored.get(stored_name)), _number(new)
    if prior is None or after is None:
        return None
    return VERSION_RULE_ERROR if prior > after else None


def version_rule_record(*, active: bool, object_name: str = "Contact") -> dict[str, Any]:
    """The rule, on Contact or Lead, as the Tooling API's ValidationRule object shows it."""
    return validation_rule_record(
        rule_id=VERSION_RULE_ID if object_name == "Contact" else LEAD_VERSION_RULE_ID,
        object_name=object_name,
        name=VERSION_RULE_NAME,
        formula=VERSION_RULE_FORMULA,
        message=VERSION_RULE_MESSAGE,
        display_field=VERSION_FIELD,
        active=active,
        description=VERSION_RULE_DESCRIPTION,
    )


def validation_rule_record(
    *,
    rule_id: str,
    object_name: str,
    name: str,
    formula: str,
    message: str,
    display_field: str | None,
    active: bool,
    description: str | None,
) -> dict[str, Any]:
    """A validation rule as the Tooling API's ValidationRule object shows it."""
    metadata = {
        "active": active,
        "description": description,
        "errorConditionFormula": formula,
        "errorDisplayField": display_field,
        "errorMessage": message,
        "shouldEvaluateOnClient": None,
        "urls": None,
    }
    return {
        "Id": rule_id,
        "ValidationName": name,
        "Active": active,
        "Description": description,
        "ErrorMessage": message,
        "ErrorDisplayField": display_field,
        "EntityDefinitionId": object_name,
        "EntityDefinition": {
            "QualifiedApiName": object_name,
            "DeveloperName": object_name,
            "DurableId": object_name,
            "Label": object_name,
        },
        "FullName": f"{object_name}.{name}",
        "ManageableState": "unmanaged",
        "NamespacePrefix": None,
        "Metadata": metadata,
        "CreatedDate": _INSTALLED,
        "CreatedById": ADMIN_USER_ID,
        "LastModifiedDate": _INSTALLED,
        "LastModifiedById": ADMIN_USER_ID,
    }
