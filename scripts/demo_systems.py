"""The demo only: make the Salesforce stand-in hold the demo contacts as the app does, with a
few changed behind the app's back as a data load would, and drop an Ascend opt-out file with
two contacts different, so the first reconciliation has something to show on the
Discrepancies page; and have the Marketing Cloud stand-in hold a few tracking events of
commercial sends (a hard bounce, two soft bounces, a business-unit unsubscribe), which the
tracking pull brings in within minutes; and, once the app is up, post a few signed webhook
events as another email platform would (docs/design.md, "Events from email platforms").

Run by scripts/demo after each stand-in is up:  python scripts/demo_systems.py URL CA_PATH
(Salesforce; its client id and secret come from SALESFORCE_CLIENT_ID / _SECRET) and
python scripts/demo_systems.py --marketing-cloud URL CA_PATH (MARKETING_CLOUD_CLIENT_ID /
_SECRET), and python scripts/demo_systems.py --webhook APP_URL PLATFORM SECRET. A stand-in
that already holds contacts or tracking events (its state file from an
earlier demo) is left as it is.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
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
from standins.marketing_cloud import MarketingCloudStandInClient  # noqa: E402
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


def add_tracking_events(client: MarketingCloudStandInClient) -> list[str]:
    """A hard bounce, two soft bounces and an unsubscribe from one business unit, minutes
    old, for three demo contacts who are opted in and not bounced (not the three the
    Salesforce 'data load' changes); returns what was added, to print."""
    contacts = list(
        Contact.objects.exclude(channel_preferences__opted_out=True)
        .filter(email_bounced=False)
        .order_by("pk")[3:6]
    )
    if len(contacts) < 3:
        return []
    hard, soft, unsubscribed = contacts
    alumni = "510000002"
    now = datetime.now(UTC)
    events = [
        ("BounceEvent", alumni, hard, now - timedelta(minutes=20), "Hard bounce", "550"),
        ("BounceEvent", alumni, soft, now - timedelta(minutes=15), "Soft bounce", "452"),
        ("BounceEvent", alumni, soft, now - timedelta(minutes=10), "Block bounce", "554"),
        ("UnsubEvent", alumni, unsubscribed, now - timedelta(minutes=5), "", ""),
    ]
    client.add_tracking_events(
        {
            "object": kind,
            "mid": mid,
            "key": contact.salesforce_id,
            "email": contact.email,
            "date": when.isoformat(),
            "send_id": 90001,
            "bounce_category": category or None,
            "smtp_code": code or None,
        }
        for kind, mid, contact, when, category, code in events
    )
    return [
        f"{category or 'Unsubscribe'} in business unit {mid}: {contact.name} <{contact.email}>"
        for _, mid, contact, _, category, _ in events
    ]


def marketing_cloud(url: str, ca_path: str) -> None:
    client = MarketingCloudStandInClient(
        url,
        ca_path,
        os.environ["MARKETING_CLOUD_CLIENT_SECRET"],
        os.environ.get("MARKETING_CLOUD_CLIENT_ID", "preference-desk"),
    )
    if client.state(records=False)["tracking_event_count"]:
        print("  The Marketing Cloud stand-in holds tracking events already: left as is.")
        return
    added = add_tracking_events(client)
    print("  Marketing Cloud tracking events, brought in by the next tracking pull:")
    for line in added:
        print(f"    {line}")


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


def post_webhook_events(app_url: str, platform: str, secret: str) -> None:
    """Another email platform's signed webhook, as README "Events from email platforms"
    documents it: a spam report, a group opt-out, an opt-out of one send account and a soft
    bounce, for four opted-in demo contacts. Posted again on a later start, they are
    recognised as duplicates and change nothing."""
    contacts = list(
        Contact.objects.exclude(channel_preferences__opted_out=True)
        .filter(email_bounced=False)
        .order_by("pk")[6:10]
    )
    kinds = [
        ("spam_report", {}),
        ("group_opt_out", {}),
        ("sender_opt_out", {"send_account": "alumni-events"}),
        ("soft_bounce", {"reason": "452 mailbox full"}),
    ]
    now = datetime.now(UTC)
    events = [
        {
            "id": f"demo-{kind}-{contact.salesforce_id}",
            "type": kind,
            "email": contact.email,
            "subscriber_key": contact.salesforce_id,
            "occurred_at": (now - timedelta(minutes=2)).isoformat(timespec="seconds"),
            **extra,
        }
        for contact, (kind, extra) in zip(contacts, kinds, strict=False)
    ]
    body = json.dumps({"events": events}).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    request = urllib.request.Request(  # noqa: S310 (the demo's own app, over http)
        f"{app_url}events/webhook/{platform}/",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-PD-Timestamp": stamp,
            "X-PD-Signature": f"sha256={signature.hexdigest()}",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (our own app)
        print(f"  Signed webhook events from '{platform}': {answer.read().decode()}")
    for contact, (kind, _) in zip(contacts, kinds, strict=False):
        print(f"    {kind.replace('_', ' ')}: {contact.name} <{contact.email}>")


if __name__ == "__main__":
    if sys.argv[1] == "--marketing-cloud":
        marketing_cloud(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--webhook":
        post_webhook_events(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main(sys.argv[1], sys.argv[2])
