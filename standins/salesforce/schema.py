"""The org's schema: which fields each sObject has and what the API may do with them, as
``GET /services/data/vXX.X/sobjects/<type>/describe`` reports it.

Objects and standard fields follow Salesforce's "Object Reference for the Salesforce
Platform" (Contact, Lead, Account with its person account fields, Task); the describe shape
follows the REST API Developer Guide, "sObject Describe" (the ``fields`` entries with
``name``, ``label``, ``type``, ``updateable``, ``createable``, ``externalId``, ``unique``,
``idLookup``, ``nillable``...). Person account fields exist only in an org with person
accounts enabled ("Person Account Record Types", SOAP API Developer Guide): there, custom
Contact fields also appear on Account with the ``__pc`` suffix.

Custom fields of the org Preference Desk is installed in: ``Preference_Version__c``
(Number) on Contact and Lead; the Ascend ID (``Ascend_Id__c``, Text, External ID, unique;
its name is configurable) on Contact; one checkbox per email category (configurable, by
default the demo's: ``Newsletter__c``, ``Events__c``, ``Giving__c``, ``Athletics__c``,
``Research_News__c``) on Contact; the Task's external ID for the notes
(``Preference_Change_Id__c``, Text, External ID, unique).

A test changes the schema per object: leave out a field (``remove_field``), or change what
the integration user may do with one (``set_field``: ``externalId=False``,
``updateable=False``...). Contact is *open* unless the stand-in was given ``contact_fields``:
a field it does not declare may still be written and selected (as if the org had it), except
one removed on purpose. The other objects are closed: only their declared fields exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

VERSION_FIELD = "Preference_Version__c"
DEFAULT_TASK_EXTERNAL_ID = "Preference_Change_Id__c"
DEFAULT_ASCEND_ID_FIELD = "Ascend_Id__c"
# The demo's email categories (seed_demo's CATEGORIES), each a checkbox on Contact.
DEFAULT_CATEGORY_FIELDS = (
    "Newsletter__c",
    "Events__c",
    "Giving__c",
    "Athletics__c",
    "Research_News__c",
)
OBJECT_NAMES = ("Contact", "Lead", "Account", "Task")

_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "datetime": "xsd:dateTime",
    "date": "xsd:date",
    "double": "xsd:double",
}
# Names set_field() takes as describe spells them, and the attribute each one sets.
_DESCRIBE_NAMES = {
    "externalId": "external_id",
    "idLookup": "id_lookup",
    "referenceTo": "reference_to",
    "defaultedOnCreate": "defaulted_on_create",
    "nameField": "name_field",
}


@dataclass(frozen=True)
class Field:
    """One field of an object, with the properties the describe call reports."""

    name: str
    type: str  # id, boolean, string, email, phone, textarea, picklist, date, datetime...
    label: str = ""
    length: int = 0
    updateable: bool = True
    createable: bool = True
    nillable: bool = True
    external_id: bool = False
    unique: bool = False
    id_lookup: bool = False
    custom: bool = False
    calculated: bool = False
    defaulted_on_create: bool = False
    name_field: bool = False
    reference_to: tuple[str, ...] = ()
    person: bool = False  # exists only in an org with person accounts

    def describe(self) -> dict[str, Any]:
        textual = self.type in ("string", "email", "phone", "textarea", "picklist", "combobox")
        return {
            "name": self.name,
            "label": self.label or self.name.removesuffix("__c").replace("_", " "),
            "type": self.type,
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
            "length": self.length if textual else 0,
            "byteLength": self.length * 3 if textual else (18 if self.type == "id" else 0),
            "precision": 18 if self.type == "double" else 0,
            "scale": 0,
            "digits": 0,
            "updateable": self.updateable,
            "createable": self.createable,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.id_lookup,
            "nillable": self.nillable,
            "custom": self.custom,
            "calculated": self.calculated,
            "defaultedOnCreate": self.defaulted_on_create,
            "nameField": self.name_field,
            "caseSensitive": False,
            "filterable": self.type != "textarea",
            "sortable": self.type != "textarea",
            "groupable": self.type not in ("textarea", "double", "datetime"),
            "referenceTo": list(self.reference_to),
            "relationshipName": _relationship_name(self),
            "picklistValues": [],
        }


def _relationship_name(field: Field) -> str | None:
    if field.type != "reference":
        return None
    if field.custom:
        return field.name.removesuffix("__c") + "__r"
    return field.name.removesuffix("Id") or None


def _system_fields(id_label: str) -> list[Field]:
    fixed: dict[str, Any] = {"updateable": False, "createable": False}
    return [
        Field(
            "Id", "id", id_label, 18, nillable=False, id_lookup=True, defaulted_on_create=True,
            **fixed,
        ),
        Field("IsDeleted", "boolean", "Deleted", nillable=False, defaulted_on_create=True, **fixed),
        Field("CreatedDate", "datetime", "Created Date", nillable=False, **fixed),
        Field(
            "CreatedById", "reference", "Created By ID", 18, nillable=False,
            reference_to=("User",), **fixed,
        ),
        Field("LastModifiedDate", "datetime", "Last Modified Date", nillable=False, **fixed),
        Field(
            "LastModifiedById", "reference", "Last Modified By ID", 18, nillable=False,
            reference_to=("User",), **fixed,
        ),
        Field("SystemModstamp", "datetime", "System Modstamp", nillable=False, **fixed),
    ]  # fmt: skip


def _checkbox(name: str, *, person: bool = False) -> Field:
    return Field(
        name, "boolean", nillable=False, custom=True, defaulted_on_create=True, person=person
    )


def _version_field() -> Field:
    return Field(VERSION_FIELD, "double", "Preference Version", custom=True)


def _ascend_field(name: str) -> Field:
    return Field(name, "string", "Ascend ID", 20, custom=True, external_id=True, unique=True,
                 id_lookup=True)  # fmt: skip


def known_contact_field(name: str, ascend_id_field: str) -> Field:
    """A field ``contact_fields`` names: a standard one as the Object Reference describes it,
    the version or Ascend ID field as the org has them, else a custom checkbox (the only
    other custom fields the app writes are the email categories)."""
    for field in _contact_standard():
        if field.name.lower() == name.lower():
            return field
    if name.lower() == VERSION_FIELD.lower():
        return _version_field()
    if name.lower() == ascend_id_field.lower():
        return _ascend_field(name)
    return _checkbox(name)


def _contact_standard() -> list[Field]:
    return [
        *_system_fields("Contact ID"),
        Field("MasterRecordId", "reference", "Master Record ID", 18, updateable=False,
              createable=False, reference_to=("Contact",)),
        Field("AccountId", "reference", "Account ID", 18, reference_to=("Account",)),
        Field("FirstName", "string", "First Name", 40),
        Field("LastName", "string", "Last Name", 80, nillable=False),
        Field("Name", "string", "Full Name", 121, updateable=False, createable=False,
              nillable=False, calculated=True, name_field=True),
        Field("Email", "email", "Email", 80, id_lookup=True),
        Field("Phone", "phone", "Business Phone", 40),
        Field("HasOptedOutOfEmail", "boolean", "Email Opt Out", nillable=False,
              defaulted_on_create=True),
        Field("DoNotCall", "boolean", "Do Not Call", nillable=False, defaulted_on_create=True),
        Field("IsPersonAccount", "boolean", "Is Person Account", updateable=False,
              createable=False, nillable=False, defaulted_on_create=True, person=True),
    ]  # fmt: skip


def _lead_fields() -> list[Field]:
    return [
        *_system_fields("Lead ID"),
        Field("MasterRecordId", "reference", "Master Record ID", 18, updateable=False,
              createable=False, reference_to=("Lead",)),
        Field("FirstName", "string", "First Name", 40),
        Field("LastName", "string", "Last Name", 80, nillable=False),
        Field("Name", "string", "Full Name", 121, updateable=False, createable=False,
              nillable=False, calculated=True, name_field=True),
        Field("Company", "string", "Company", 255, nillable=False),
        Field("Email", "email", "Email", 80, id_lookup=True),
        Field("Phone", "phone", "Phone", 40),
        Field("HasOptedOutOfEmail", "boolean", "Email Opt Out", nillable=False,
              defaulted_on_create=True),
        Field("DoNotCall", "boolean", "Do Not Call", nillable=False, defaulted_on_create=True),
        Field("Status", "picklist", "Lead Status", 255, nillable=False,
              defaulted_on_create=True),
        Field("IsConverted", "boolean", "Converted", updateable=False, nillable=False,
              defaulted_on_create=True),
        Field("ConvertedDate", "date", "Converted Date", updateable=False, createable=False),
        Field("ConvertedContactId", "reference", "Converted Contact ID", 18, updateable=False,
              createable=False, reference_to=("Contact",)),
        Field("ConvertedAccountId", "reference", "Converted Account ID", 18, updateable=False,
              createable=False, reference_to=("Account",)),
        _version_field(),
    ]  # fmt: skip


def _account_fields() -> list[Field]:
    return [
        *_system_fields("Account ID"),
        Field("MasterRecordId", "reference", "Master Record ID", 18, updateable=False,
              createable=False, reference_to=("Account",)),
        Field("Name", "string", "Account Name", 255, nillable=False, name_field=True),
        Field("Phone", "phone", "Account Phone", 40),
        Field("IsPersonAccount", "boolean", "Is Person Account", updateable=False,
              createable=False, nillable=False, defaulted_on_create=True, person=True),
        Field("FirstName", "string", "First Name", 40, person=True),
        Field("LastName", "string", "Last Name", 80, person=True),
        Field("PersonEmail", "email", "Email", 80, id_lookup=True, person=True),
        Field("PersonHasOptedOutOfEmail", "boolean", "Email Opt Out", nillable=False,
              defaulted_on_create=True, person=True),
        Field("PersonDoNotCall", "boolean", "Do Not Call", nillable=False,
              defaulted_on_create=True, person=True),
        Field("PersonContactId", "reference", "Person Contact ID", 18, updateable=False,
              createable=False, reference_to=("Contact",), person=True),
    ]  # fmt: skip


def _task_fields(external_id: str) -> list[Field]:
    return [
        *_system_fields("Activity ID"),
        Field("WhoId", "reference", "Name ID", 18, reference_to=("Contact", "Lead")),
        Field("WhatId", "reference", "Related To ID", 18, reference_to=("Account",)),
        Field("Subject", "combobox", "Subject", 255),
        Field("Description", "textarea", "Description", 32000),
        Field("ActivityDate", "date", "Due Date Only"),
        Field("Status", "picklist", "Status", 255, nillable=False, defaulted_on_create=True),
        Field("Priority", "picklist", "Priority", 40, nillable=False, defaulted_on_create=True),
        Field("Type", "picklist", "Type", 40),
        Field("TaskSubtype", "picklist", "Task Subtype", 40, updateable=False),
        Field("OwnerId", "reference", "Assigned To ID", 18, nillable=False,
              defaulted_on_create=True, reference_to=("User",)),
        Field(external_id, "string", "Preference Change ID", 255, custom=True,
              external_id=True, unique=True, id_lookup=True),
    ]  # fmt: skip


def person_name(contact_field: str) -> str:
    """The name a custom Contact field has on a person account: ``X__c`` is ``X__pc``."""
    return contact_field[: -len("__c")] + "__pc" if contact_field.endswith("__c") else contact_field


class ObjectSchema:
    """One sObject's fields. ``open``: undeclared fields exist too (as if the org had every
    field a test writes), except the names in ``absent``."""

    def __init__(
        self, name: str, label: str, plural: str, key_prefix: str, fields: Iterable[Field]
    ) -> None:
        self.name = name
        self.label = label
        self.plural = plural
        self.key_prefix = key_prefix
        self.fields: dict[str, Field] = {field.name.lower(): field for field in fields}
        self.open = False
        self.absent: set[str] = set()
        self.person_accounts = False
        # Relationships a query may follow ("EntityDefinition.QualifiedApiName"), by name.
        self.relationships: dict[str, ObjectSchema] = {}

    def field(self, name: str) -> Field | None:
        """The declared field of that name (any case), if the org has it."""
        field = self.fields.get(name.lower())
        if field is None or (field.person and not self.person_accounts):
            return None
        return field

    def has(self, name: str) -> bool:
        lowered = name.lower()
        if self.field(name) is not None:
            return True
        if lowered in self.fields:  # a person account field in an org without them
            return False
        return self.open and lowered not in self.absent

    def visible_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if self.person_accounts or not f.person]

    def set_field(self, name: str, **attributes: Any) -> Field:
        """Declare a field or change its properties (describe's names or Field's)."""
        changes = {_DESCRIBE_NAMES.get(key, key): value for key, value in attributes.items()}
        if "reference_to" in changes:
            changes["reference_to"] = tuple(changes["reference_to"])
        known = {f.name for f in dataclasses.fields(Field)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"not a field property: {', '.join(sorted(unknown))}")
        current = self.fields.get(name.lower())
        custom = current.custom if current is not None else name.endswith("__c")
        if custom and "external_id" in changes and "id_lookup" not in changes:
            changes["id_lookup"] = changes["external_id"]  # a custom field: only as External ID
        if current is None:
            changes.setdefault("type", "string")
            changes.setdefault("custom", name.endswith("__c"))
            field = Field(name=name, **changes)
        else:
            field = dataclasses.replace(current, **changes)
        self.fields[name.lower()] = field
        self.absent.discard(name.lower())
        return field

    def remove_field(self, name: str) -> None:
        """The org does not have this field: writing or selecting it is INVALID_FIELD."""
        if name.lower() == "id":
            raise ValueError("every object has an Id")
        self.fields.pop(name.lower(), None)
        self.absent.add(name.lower())

    def describe(self, version: str) -> dict[str, Any]:
        base = f"/services/data/{version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": self.label,
            "labelPlural": self.plural,
            "keyPrefix": self.key_prefix,
            "custom": False,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "retrieveable": True,
            "searchable": True,
            "undeletable": True,
            "mergeable": self.name in ("Contact", "Lead", "Account"),
            "replicateable": True,
            "triggerable": True,
            "fields": [field.describe() for field in self.visible_fields()],
            "childRelationships": [],
            "recordTypeInfos": [],
            "urls": {
                "sobject": base,
                "describe": f"{base}/describe",
                "rowTemplate": f"{base}/{{ID}}",
            },
        }


class OrgSchema:
    """Contact, Lead, Account and Task as this org has them."""

    def __init__(
        self,
        *,
        contact_fields: Iterable[str] | None = None,
        category_fields: Iterable[str] = DEFAULT_CATEGORY_FIELDS,
        ascend_id_field: str = DEFAULT_ASCEND_ID_FIELD,
        task_external_id: str = DEFAULT_TASK_EXTERNAL_ID,
        person_accounts: bool = False,
    ) -> None:
        categories = list(category_fields)
        self.ascend_id_field = ascend_id_field
        self.task_external_id = task_external_id
        if contact_fields is None:
            custom = [_version_field(), _ascend_field(ascend_id_field)]
            custom += [_checkbox(name) for name in categories]
        else:
            custom = [known_contact_field(name, ascend_id_field) for name in contact_fields]
        contact = ObjectSchema("Contact", "Contact", "Contacts", "003", _contact_standard())
        for field in custom:
            contact.fields.setdefault(field.name.lower(), field)
        contact.open = contact_fields is None
        account = ObjectSchema("Account", "Account", "Accounts", "001", _account_fields())
        # A person account has its contact's custom fields, as __pc.
        for field in (f for f in custom if f.custom):
            name = person_name(field.name)
            account.fields.setdefault(
                name.lower(), dataclasses.replace(field, name=name, person=True)
            )
        self.objects: dict[str, ObjectSchema] = {
            "contact": contact,
            "lead": ObjectSchema("Lead", "Lead", "Leads", "00Q", _lead_fields()),
            "account": account,
            "task": ObjectSchema("Task", "Task", "Tasks", "00T", _task_fields(task_external_id)),
        }
        self.set_person_accounts(person_accounts)

    @property
    def person_accounts(self) -> bool:
        return self.objects["account"].person_accounts

    def set_person_accounts(self, enabled: bool) -> None:
        for schema in self.objects.values():
            schema.person_accounts = enabled

    def object(self, name: str) -> ObjectSchema | None:
        return self.objects.get(name.lower())

    def by_prefix(self, key_prefix: str) -> ObjectSchema | None:
        return next((o for o in self.objects.values() if o.key_prefix == key_prefix), None)

    def apply(self, changes: Mapping[str, Mapping[str, Mapping[str, Any] | None]]) -> None:
        """``{object: {field: None (remove it) | {property: value} (set it)}}``."""
        for object_name, fields in changes.items():
            schema = self.object(object_name)
            if schema is None:
                raise ValueError(f"no such object: {object_name}")
            for name, attributes in fields.items():
                if attributes is None:
                    schema.remove_field(name)
                else:
                    schema.set_field(name, **attributes)
