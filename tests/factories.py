"""Hand-written factories: small, explicit, and valid by default."""

from __future__ import annotations

import itertools
from typing import Any

from django.utils import timezone

from preferences.management.commands.seed_demo import CATEGORIES
from preferences.models import Contact, EmailCategory, salesforce_id_18
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
