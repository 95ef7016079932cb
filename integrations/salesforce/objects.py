"""The Salesforce objects a contact can be, and the fields the app reads and writes on each
(docs/design.md, "Contacts come from Salesforce").

A Lead carries the same opt-out fields as a Contact; a Person Account carries them as
PersonHasOptedOutOfEmail / PersonDoNotCall, and its contact's custom fields with the
``__pc`` suffix ("Person Accounts" in the Salesforce object reference). Email categories are
Contact checkboxes, so a Lead has none. The load, the pull, the push and the nightly
comparison all go through these descriptions, so each object is read and written alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from lib.channels import SALESFORCE_FIELDS, Channel
from preferences.models import ContactKind


@dataclass(frozen=True)
class SalesforceObject:
    kind: str  # ContactKind
    name: str  # the sObject's API name
    opt_out_fields: dict[str, str]  # channel -> field
    email_field: str = "Email"
    has_categories: bool = True
    # A filter every query of the object carries (Person Accounts among Accounts, and the
    # person contacts left out of Contact, whose fields only change through the Account).
    where: str = ""
    # The Contact custom fields on this object are named with this suffix instead of __c.
    custom_suffix: str = "__c"

    def custom(self, field_name: str) -> str:
        """A Contact custom field's name on this object (Newsletter__c -> Newsletter__pc)."""
        if self.custom_suffix != "__c" and field_name.endswith("__c"):
            return field_name[: -len("__c")] + self.custom_suffix
        return field_name

    @property
    def ascend_field(self) -> str:
        """The field holding the Ascend ID, or empty if this object has none."""
        name = str(settings.SALESFORCE_ASCEND_ID_FIELD or "")
        if not name or self.kind == ContactKind.LEAD:
            return ""
        return self.custom(name)

    @property
    def version_field(self) -> str:
        name = str(settings.SALESFORCE_VERSION_FIELD or "")
        return self.custom(name) if name else ""

    def category_fields(self, by_key: dict[str, str]) -> dict[str, str]:
        """Category key -> this object's field, from the categories' Contact fields."""
        if not self.has_categories:
            return {}
        return {key: self.custom(name) for key, name in by_key.items()}

    def identity_fields(self) -> list[str]:
        names = ["FirstName", "LastName", self.email_field, "Phone"]
        if self.ascend_field:
            names.append(self.ascend_field)
        if self.kind == ContactKind.PERSON_ACCOUNT:
            names.append("PersonContactId")
        return names

    def read_fields(self, category_fields: dict[str, str]) -> list[str]:
        """Everything the load and the pull read: identity, opt-outs, categories."""
        return [
            "Id",
            *self.identity_fields(),
            *self.opt_out_fields.values(),
            *self.category_fields(category_fields).values(),
        ]

    def identity(self, record: dict[str, Any]) -> dict[str, str]:
        """The Contact row's identity columns from a record (JSON or CSV: absent and empty
        both read as empty)."""

        def text(name: str) -> str:
            value = record.get(name) if name else None
            return "" if value is None else str(value).strip()

        return {
            "first_name": text("FirstName")[:100],
            "last_name": text("LastName")[:100],
            "email": text(self.email_field).lower()[:254],
            "phone": text("Phone")[:32],
            "ascend_id": text(self.ascend_field)[:20],
            "person_contact_id": text("PersonContactId")
            if self.kind == ContactKind.PERSON_ACCOUNT
            else "",
        }


CONTACT = SalesforceObject(
    kind=ContactKind.CONTACT, name="Contact", opt_out_fields=dict(SALESFORCE_FIELDS)
)
LEAD = SalesforceObject(
    kind=ContactKind.LEAD,
    name="Lead",
    opt_out_fields=dict(SALESFORCE_FIELDS),
    has_categories=False,
    # A converted Lead lives on as its Contact; the pull still reads it, to join them.
)
PERSON_ACCOUNT = SalesforceObject(
    kind=ContactKind.PERSON_ACCOUNT,
    name="Account",
    opt_out_fields={
        Channel.EMAIL: "PersonHasOptedOutOfEmail",
        Channel.PHONE: "PersonDoNotCall",
    },
    email_field="PersonEmail",
    where="IsPersonAccount = true",
    custom_suffix="__pc",
)
BY_KIND = {found.kind: found for found in (CONTACT, LEAD, PERSON_ACCOUNT)}


def in_use() -> list[SalesforceObject]:
    """The objects this org's contacts live in, in the order the pull reads them: Contacts
    before Leads, so a converted Lead finds its Contact."""
    found = [CONTACT]
    if settings.SALESFORCE_PERSON_ACCOUNTS:
        found.append(PERSON_ACCOUNT)
    if settings.SALESFORCE_LEADS:
        found.append(LEAD)
    return found


def contact_where() -> str:
    """Contact's own filter: in an org with Person Accounts, their contacts are Contacts
    too, but written through the Account."""
    return "IsPersonAccount = false" if settings.SALESFORCE_PERSON_ACCOUNTS else ""


def where(found: SalesforceObject) -> str:
    return contact_where() if found is CONTACT else found.where
