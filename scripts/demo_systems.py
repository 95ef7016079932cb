"""The demo only: make the Salesforce stand-in hold the demo contacts as the app does, with a
few changed behind the app's back as a data load would, and drop an Ascend opt-out file with
two contacts different, so the first reconciliation has something to show on the
Discrepancies page.

Run by scripts/demo after the stand-in is up:  python scripts/demo_systems.py URL CA_PATH
(the stand-in's client id and secret come from SALESFORCE_CLIENT_ID / _SECRET). A stand-in
that already holds contacts (its state file from an earlier demo) is left as it is.
"""

from __future__ import annotations

import csv
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
django.setup()

from django.conf import settings  # noqa: E402

from integrations.salesforce.sync import expected_values  # noqa: E402
from lib.channels import SALESFORCE_FIELDS, Channel  # noqa: E402
from preferences.models import Contact  # noqa: E402
from preferences.services import current_state  # noqa: E402
from standins.salesforce import SalesforceStandInClient  # noqa: E402

BATCH = 10_000


def load_salesforce(client: SalesforceStandInClient) -> list[str]:
    """Every demo contact, as the app holds it; returns the ones then changed there."""
    ids = list(Contact.objects.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), BATCH):
        expected = expected_values(ids[start : start + BATCH])
        client.add_contacts(
            {"Id": found.salesforce_id, **found.fields, "Preference_Version__c": found.version}
            for found in expected.values()
        )
    changed = []
    opted_in = Contact.objects.exclude(channel_preferences__opted_out=True).order_by("pk")
    for contact in opted_in[:3]:  # a data load that ticked the opt-out
        client.external_update(contact.salesforce_id, HasOptedOutOfEmail=True)
        changed.append(contact.salesforce_id)
    return changed


def write_ascend_file() -> Path:
    """Ascend's own nightly export of current opt-outs (README, "Ascend's opt-out file"),
    with the first two contacts' email opt-out the other way round."""
    directory = Path(settings.ASCEND_DESTINATION)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    path = directory / f"ascend-optouts-{now:%Y%m%d}.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ascend_id", "salesforce_id", *SALESFORCE_FIELDS.values(), "exported_at"])
        for n, contact in enumerate(Contact.objects.order_by("pk").iterator()):
            opted_out = dict(current_state(contact).opted_out)
            if n < 2:
                opted_out[Channel.EMAIL] = not opted_out[Channel.EMAIL]
            writer.writerow(
                [
                    contact.ascend_id,
                    contact.salesforce_id,
                    *("TRUE" if opted_out[c] else "FALSE" for c in SALESFORCE_FIELDS),
                    f"{now:%Y-%m-%dT%H:%M:%SZ}",
                ]
            )
    return path


def main(url: str, ca_path: str) -> None:
    client = SalesforceStandInClient(
        url,
        ca_path,
        os.environ["SALESFORCE_CLIENT_SECRET"],
        os.environ.get("SALESFORCE_CLIENT_ID", "preference-desk"),
    )
    if client.state(records=False)["contact_count"]:
        print("  The Salesforce stand-in holds contacts already (its state file): left as is.")
        return
    changed = load_salesforce(client)
    print(f"  Salesforce stand-in: {Contact.objects.count():,} contacts, in step with the app,")
    print(f"  except {len(changed)} whose email opt-out a 'data load' ticked: {', '.join(changed)}")
    path = write_ascend_file()
    print(f"  Ascend opt-out file: {path} (two contacts differ)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
