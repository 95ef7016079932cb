"""Hand-written factories: small, explicit, and valid by default."""

from __future__ import annotations

import itertools
from typing import Any

from django.utils import timezone

from preferences.management.commands.seed_demo import BUSINESS_UNITS, CATEGORIES
from preferences.models import (
    BusinessUnit,
    Contact,
    EmailCategory,
    ResubscribeRequest,
    salesforce_id_18,
)
from preferences.services import ConsentEvidence

_numbers = itertools.count(1)


def make_categories() -> list[EmailCategory]:
    return [
        EmailCategory.objects.get_or_create(
            key=key, defaults={"name": name, "salesforce_field": field, "position": position}
        )[0]
        for position, (key, name, field) in enumerate(CATEGORIES)
    ]


def make_contact(**fields: Any) -> Contact:
    n = next(_numbers)
    values: dict[str, Any] = {
        "first_name": "Ada",
        "last_name": f"Lovelace{n}",
        "email": f"ada.lovelace{n}@example.edu",
        "phone": f"+1 (303) 555-{n:04d}",
        "salesforce_id": salesforce_id_18(f"003Tst{n:09d}"),
        "ascend_id": f"{2_000_000_000 + n}",
        "country": "US",
    }
    values.update(fields)
    return Contact.objects.create(**values)


def consent(**fields: Any) -> ConsentEvidence:
    values: dict[str, Any] = {
        "method": "phone_call",
        "obtained_at": timezone.now(),
        "attested": True,
    }
    values.update(fields)
    return ConsentEvidence(**values)


def make_business_units() -> list[BusinessUnit]:
    """The demo's parent ("University") and its two children, in that order."""
    return [
        BusinessUnit.objects.get_or_create(
            mid=mid, defaults={"name": name, "is_parent": is_parent, "position": position}
        )[0]
        for position, (mid, name, is_parent) in enumerate(BUSINESS_UNITS)
    ]


def make_resubscribe_request(
    contact: Contact, *, actor: Any, status: str = "held", business_unit: Any = None
) -> ResubscribeRequest:
    """An open request after a real email re-enrolment (opting the contact out first)."""
    from django.db import transaction

    from preferences.resubscribe.requests import open_request
    from preferences.services import apply_change, current_state

    if not current_state(contact).opted_out["email"]:
        apply_change(
            contact=contact, actor=actor, source="staff", note="Stop.", opt_out={"email": True}
        )
    entry = apply_change(
        contact=contact,
        actor=actor,
        source="staff",
        note="Asked to be emailed again.",
        opt_out={"email": False},
        consent=consent(),
    )
    unit = business_unit or make_business_units()[1]
    with transaction.atomic():
        request = open_request(
            contact=contact, business_unit=unit, status_seen=status, re_enrolment=entry
        )
    assert request is not None
    return request


def make_discrepancy(
    contact: Contact,
    *,
    system: str = "salesforce",
    kind: str = "differs",
    app: dict[str, Any] | None = None,
    remote: dict[str, Any] | None = None,
) -> Any:
    """An open discrepancy as a night's reconciliation would have recorded it."""
    from django.utils import timezone

    from integrations.models import Discrepancy, ReconcileRun

    now = timezone.now()
    run = ReconcileRun.objects.create(system=system, started_at=now, finished_at=now)
    key = contact.ascend_id if system == "ascend" else contact.salesforce_id
    return Discrepancy.objects.create(
        system=system,
        kind=kind,
        key=key,
        contact=contact,
        details={
            "app": app or {"opted_out": ["email"], "categories": []},
            "remote": remote or {"opted_out": [], "categories": ["newsletter"], "version": 1},
        },
        first_seen=now,
        last_seen=now,
        run=run,
    )


_in_step_numbers = itertools.count(3_000_000_000)


def make_contacts_in_step(standin: Any, count: int) -> list[Contact]:
    """`count` contacts that exist in the stand-in and in the database, in step: nobody
    opted out, every category checkbox false (checkboxes are never empty in Salesforce)."""
    unticked = dict.fromkeys(
        EmailCategory.objects.values_list("salesforce_field", flat=True), False
    )
    ids = standin.add_contacts(
        {
            "FirstName": "Rel",
            "LastName": f"Contact{i}",
            "HasOptedOutOfEmail": False,
            "DoNotCall": False,
            **unticked,
        }
        for i in range(count)
    )
    contacts = []
    for i, salesforce_id in enumerate(ids):
        number = next(_in_step_numbers)
        contacts.append(
            Contact(
                first_name="Rel",
                last_name=f"Contact{i}",
                email=f"rel.contact{number}@example.edu",
                phone=f"+1 (720) 555-{i % 10_000:04d}",
                salesforce_id=salesforce_id,
                ascend_id=str(number),
                country="US",
            )
        )
    return Contact.objects.bulk_create(contacts)
