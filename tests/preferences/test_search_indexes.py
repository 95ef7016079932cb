"""Each kind of search is answered from its own index, so it stays fast at a million contacts.

The figures themselves come from benchmarks/bench_contacts.py; this only proves the plan.
"""

from __future__ import annotations

import pytest
from django.db import connection

from preferences.models import Contact
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada(categories):
    return factories.make_contact(first_name="Ada", last_name="Okafor", ascend_id="1234567890")


def _plan(query: str) -> str:
    queryset = Contact.objects.search(query)[:51]
    with connection.cursor() as cursor:
        # On a near-empty table the planner rightly prefers a scan; forbid it to see the index.
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.parametrize(
    ("kind", "index"),
    [
        ("email", "contact_email_pattern"),
        ("email_prefix", "contact_email_pattern"),
        ("name", "contact_name_trgm"),
        ("salesforce_id", "preferences_contact_salesforce_id"),
        ("phone", "contact_phone_digits"),
        ("ascend_id", "unique_ascend_id"),
    ],
)
def test_search_uses_an_index(ada, kind, index):
    query = {
        "email": ada.email,
        "email_prefix": ada.email[:8],  # no "@": name fragment or email start
        "name": "okafor",
        "salesforce_id": ada.salesforce_id,
        "phone": ada.phone,
        "ascend_id": ada.ascend_id,
    }[kind]
    plan = _plan(query)
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan
    # A common name fragment matches thousands: sorting them all would cost more than the lookup.
    assert "Sort" not in plan, plan
