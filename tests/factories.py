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
