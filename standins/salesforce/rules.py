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
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from standins.salesforce.store import VERSION_FIELD, RecordError

VERSION_RULE_NAME = "Preference_Version_Not_Older"
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
