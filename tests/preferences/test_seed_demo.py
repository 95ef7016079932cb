from __future__ import annotations

from itertools import pairwise

import pytest
from django.core.management import call_command

from audit.models import AuditEntry
from preferences.models import Contact, Subscription
from preferences.services import current_state

pytestmark = pytest.mark.django_db


def test_demo_data_is_consistent_with_its_own_history(capsys):
    call_command("seed_demo", contacts=400, batch=150)

    assert Contact.objects.count() == 400
    assert "specialist@demo.test" in capsys.readouterr().out
    histories = 0
    for contact in Contact.objects.all():
        state = current_state(contact)
        if state.opted_out["email"]:
            assert not Subscription.objects.filter(contact=contact).exists()
        entries = list(
            AuditEntry.objects.filter(contact=contact, contact_version__isnull=False).order_by("id")
        )
        assert len(entries) == contact.version
        for earlier, later in pairwise(entries):
            assert earlier.after == later.before
        if entries:
            histories += 1
            assert entries[-1].after == state.as_json()
    assert histories > 20  # a realistic mix: some contacts have a history


def test_seeding_again_with_if_empty_adds_nothing():
    call_command("seed_demo", contacts=10)
    call_command("seed_demo", contacts=10, if_empty=True)
    assert Contact.objects.count() == 10
