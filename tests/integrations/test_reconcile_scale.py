"""Reconciliation at size: 100,000 contacts, 5 % of them changed behind the app's back, in
Salesforce (a data load through the stand-in) and in Ascend's file. Every one is found, and
nothing else; resolving one through the page puts the system right and is audited."""

from __future__ import annotations

import csv
import random
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations import reconcile
from integrations.ascend import sync as ascend
from integrations.models import Discrepancy
from integrations.salesforce import sync as salesforce
from integrations.salesforce.client import forget_sessions
from standins.salesforce import running_standin
from tests import factories

pytestmark = pytest.mark.django_db

CONTACTS = 100_000
CHANGED = CONTACTS // 20  # 5 %


@pytest.fixture
def standin(settings: Any, categories: Any) -> Any:
    forget_sessions()
    with running_standin() as server:
        settings.SALESFORCE_ENABLED = True
        settings.SALESFORCE_LOGIN_URL = server.url
        settings.SALESFORCE_CLIENT_ID = server.client_id
        settings.SALESFORCE_CLIENT_SECRET = server.client_secret
        settings.SALESFORCE_CA_BUNDLE = server.ca_path
        settings.SALESFORCE_TIMEOUT = 60
        yield server
    forget_sessions()


def _open_keys(system: str) -> dict[str, str]:
    return dict(Discrepancy.objects.open().filter(system=system).values_list("key", "kind"))


def test_a_data_load_changing_5_percent_in_salesforce_is_found_exactly(
    standin, system_client, django_capture_on_commit_callbacks
):
    contacts = factories.make_contacts_in_step(standin, CONTACTS)
    changed = random.Random(9).sample(contacts, CHANGED)
    fields = ["HasOptedOutOfEmail", "DoNotCall", "Newsletter__c", "Events__c"]
    for n, contact in enumerate(changed):  # each a different kind of change
        standin.external_update(contact.salesforce_id, **{fields[n % len(fields)]: True})

    (run,) = reconcile.run(["salesforce"])

    assert not run.failed, run.detail
    assert run.compared == CONTACTS
    assert _open_keys("salesforce") == {c.salesforce_id: "differs" for c in changed}

    # The page's "push the app's values" puts Salesforce right, and is audited.
    one = Discrepancy.objects.get(key=changed[0].salesforce_id)
    with django_capture_on_commit_callbacks(execute=False):
        response = system_client.post(
            reverse("preferences:discrepancy_push", args=[one.pk]), {"note": "Bad data load."}
        )
    assert response.status_code == 302
    salesforce.push_batch()
    assert standin.contact(changed[0].salesforce_id)["HasOptedOutOfEmail"] is False
    assert AuditEntry.objects.filter(
        action=AuditAction.DISCREPANCY_RESOLVED, contact=changed[0]
    ).exists()


def test_an_ascend_file_with_5_percent_different_is_found_exactly(
    categories, settings, tmp_path: Path, system_client
):
    settings.ASCEND_DESTINATION = str(tmp_path / "dropbox")
    settings.ASCEND_STAGING_DIR = str(tmp_path / "staging")
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()

    class NoSalesforce:
        def add_contacts(self, records: Any) -> list[str]:
            return [factories.salesforce_id_18(f"003Scl{n:09d}") for n, _ in enumerate(records)]

    contacts = factories.make_contacts_in_step(NoSalesforce(), CONTACTS)
    changed = {c.ascend_id for c in random.Random(10).sample(contacts, CHANGED)}
    exported = (timezone.now() + timedelta(minutes=1)).astimezone(UTC)
    with (dropbox / "ascend-optouts-20261201.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["ascend_id", "salesforce_id", "HasOptedOutOfEmail", "DoNotCall", "exported_at"]
        )
        for contact in contacts:
            out = "TRUE" if contact.ascend_id in changed else "FALSE"
            writer.writerow(
                [
                    contact.ascend_id,
                    contact.salesforce_id,
                    out,
                    "FALSE",
                    f"{exported:%Y-%m-%dT%H:%M:%SZ}",
                ]
            )

    (run,) = reconcile.run(["ascend"])

    assert not run.failed, run.detail
    assert run.compared == CONTACTS
    assert _open_keys("ascend") == dict.fromkeys(changed, "differs")

    # Pushing the app's value gives Ascend a correction row in the next change file.
    one = Discrepancy.objects.filter(system="ascend").first()
    assert one is not None
    system_client.post(
        reverse("preferences:discrepancy_push", args=[one.pk]), {"note": "Ascend is wrong."}
    )
    night = ascend.export()
    rows = (dropbox / night.filename).read_text().splitlines()
    assert len(rows) == 2 and f"{one.key}," in rows[1] and ",TRUE,FALSE," in rows[1]
