"""Dates at the ends of the calendar, typed or pasted into any date filter or the consent
date, get a clear message, never a server error, and change nothing."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit.models import AuditEntry
from preferences.models import ChannelPreference
from preferences.services import apply_change

pytestmark = pytest.mark.django_db

EXTREMES = ["0001-01-01", "9999-12-31", "1899-12-31", "2101-01-01"]

FILTERS = [
    ("audit:log", ["start", "end"]),
    ("audit:export", ["start", "end"]),
    ("audit:reports", ["start", "end"]),
    ("audit:change_report_export", ["start", "end"]),
    ("audit:chart_export", ["start", "end"]),
    ("preferences:suppression_list", ["since"]),
    ("preferences:suppression_export", ["since"]),
]


@pytest.mark.parametrize(("name", "fields"), FILTERS, ids=[name for name, _ in FILTERS])
@pytest.mark.parametrize("value", EXTREMES)
def test_a_date_filter_at_the_ends_of_the_calendar_is_refused_with_a_message(
    manager_client, name, fields, value
):
    for field in fields:
        answer = manager_client.get(reverse(name), {field: value})
        assert answer.status_code < 500, (name, field, value, answer.status_code)
        if answer.status_code == 200 and answer["Content-Type"].startswith("text/html"):
            assert "Choose a date between" in answer.content.decode(), (name, field, value)


@pytest.mark.parametrize("value", ["0001-01-01T00:00", "9999-12-31T23:59", "1899-12-31T10:00"])
def test_a_consent_date_at_the_ends_of_the_calendar_changes_nothing(
    specialist_client, specialist, contact, value
):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Asked.", opt_out={"email": True}
    )
    contact.refresh_from_db()
    entries = AuditEntry.objects.count()
    answer = specialist_client.post(
        reverse("preferences:update", args=[contact.pk]),
        {
            "version": contact.version,
            "opt_out_phone": "",
            "note": "Asked to be back.",
            "consent_method": "phone_call",
            "consent_obtained_at": value,
            "consent_attested": "on",
        },
    )
    assert answer.status_code == 422
    assert AuditEntry.objects.count() == entries
    assert ChannelPreference.objects.get(contact=contact, channel="email").opted_out
