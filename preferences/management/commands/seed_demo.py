"""Demo data: staff users, email categories and N contacts with a realistic mix of states.

Contacts, their preferences and their histories are written with COPY, so a million
contacts take minutes, not hours. Every seeded history is consistent with the seeded
state: replaying a contact's audit entries gives its current preferences.
"""

import json
import os
import random
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from lib.channels import Channel
from lib.salesforce_ids import salesforce_id_18
from preferences.management.commands.create_staff_user import create_staff_user
from preferences.models import BusinessUnit, Contact, EmailCategory

CATEGORIES = [
    ("newsletter", "Alumni newsletter", "Newsletter__c"),
    ("events", "Events and reunions", "Events__c"),
    ("giving", "Giving and appeals", "Giving__c"),
    ("athletics", "Athletics", "Athletics__c"),
    ("research", "Research news", "Research_News__c"),
]
# Marketing Cloud: the parent account and two child business units (MID, name, parent).
BUSINESS_UNITS = [
    ("510000001", "University", True),
    ("510000002", "Alumni Association", False),
    ("510000003", "Athletics", False),
]
DEMO_USERS = [
    ("specialist@demo.test", "specialist"),
    ("manager@demo.test", "manager"),
    ("system@demo.test", "system"),
]
FIRST = (
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy "
    "Matthew Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew "
    "Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Dorothy George Melissa Timothy "
    "Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia Jacob "
    "Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen Brenda Larry Pamela "
    "Justin Emma Scott Nicole Brandon Helen Benjamin Samantha Samuel Katherine Gregory Christine "
    "Alexander Debra Frank Rachel Patrick Carolyn Raymond Janet Jack Catherine Dennis Maria "
    "Jerry Heather Tyler Diane Aaron Ruth Jose Julie Adam Olivia Nathan Joyce Henry Virginia "
    "Wei Priya Aiko Mateo Sofia Omar Fatima Lars Ingrid Chidi Amara Diego Lucia Hiroshi Mei"
).split()
LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
    "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook "
    "Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward "
    "Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez "
    "Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan "
    "Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan "
    "Patterson Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant "
    "Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison "
    "Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker "
    "Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason "
    "Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox "
    "Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan "
    "Gardner Payne Grant Dunn Kelley Spencer Hawkins Arnold Pierce Vazquez Hansen Peters Santos "
    "Hart Bradley Knight Elliott Cunningham Duncan Armstrong Hudson Carroll Lane Riley Andrews "
    "Alvarado Ray Delgado Berry Perkins Hoffman Johnston Matthews Pena Richards Contreras Willis "
    "Carpenter Lawrence Sandoval Okafor Yamamoto Nakamura Larsen Novak Kowalski Haddad Singh"
).split()
COUNTRIES = ["US"] * 85 + ["CA"] * 4 + ["GB"] * 3 + ["DE", "DE", "CN", "IN", "IN", "MX", "AU", "FR"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "alumni.example.edu", "aol.com"]
NOTES_OUT = [
    "Called and asked to stop all email.",
    "Replied to the spring appeal asking to be removed from our lists.",
    "Unsubscribed through the email footer link.",
    "Spam complaint reported by the email platform.",
    "Asked by email to be taken off every list.",
]
NOTES_PHONE = ["Asked not to be called for phonathon.", "Requested no phone calls, prefers mail."]
NOTES_IN = ["Called to be added back to the newsletter; confirmed by phone."]
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(number: int, width: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = BASE62[rest] + digits
    return digits.rjust(width, "0")


def _snapshot(opted_out: dict[str, bool], categories: set[str], bounced: bool) -> str:
    return json.dumps(
        {
            "opted_out": {c: opted_out[c] for c in Channel.values},
            "categories": sorted(categories),
            "bounced": bounced,
        }
    )


class Seeder:
    """Builds rows for one contact at a time and streams them to COPY."""

    def __init__(self, rng: random.Random, staff: list[tuple[int, str]], now: datetime) -> None:
        self.rng = rng
        self.staff = staff
        self.now = now
        self.keys = [key for key, _, _ in CATEGORIES]
        self.category_ids: dict[str, int] = dict(EmailCategory.objects.values_list("key", "pk"))
        self.preferences: list[tuple[Any, ...]] = []
        self.subscriptions: list[tuple[Any, ...]] = []
        self.audit: list[tuple[Any, ...]] = []
        self.consents: list[tuple[Any, ...]] = []
        self.syncs: list[tuple[Any, ...]] = []

    def contact(self, pk: int, audit_id: int, consent_id: int) -> tuple[tuple[Any, ...], int, int]:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}{pk}@{rng.choice(DOMAINS)}".lower()
        phone = (
            f"+1 ({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}"
            if rng.random() < 0.8
            else ""
        )
        sf15 = "003" + "Dn" + _base62(pk, 10)
        created = self.now - timedelta(days=rng.randint(400, 3000))

        opted_out = dict.fromkeys(Channel.values, False)
        categories = {k for k in self.keys if rng.random() < 0.35}
        bounced = False
        version = 0
        events: list[tuple[str, str, str, set[str] | None]] = []
        moment = created + timedelta(days=rng.randint(30, 300))
        roll = rng.random()
        if roll < 0.16:
            events.append(("opt_out", Channel.EMAIL, rng.choice(NOTES_OUT), None))
            if roll < 0.04:
                keep = set(rng.sample(self.keys, 2))
                events.append(("re_enrolment", Channel.EMAIL, NOTES_IN[0], None))
                events.append(
                    ("category_change", "", "Re-checked categories the contact asked for.", keep)
                )
        if rng.random() < 0.05:
            events.append(("opt_out", Channel.PHONE, rng.choice(NOTES_PHONE), None))
        if rng.random() < 0.02:
            events.append(("bounce", "", "Hard bounce reported by the email platform.", None))

        latest: dict[str, tuple[Any, ...]] = {}
        for action, channel, note, wanted in events:
            before = _snapshot(opted_out, categories, bounced)
            if action == "opt_out":
                opted_out[channel] = True
                if channel == Channel.EMAIL:
                    categories = set()
            elif action == "re_enrolment":
                opted_out[channel] = False
            elif action == "category_change":
                categories = set(wanted or ())
            else:
                bounced = True
            version += 1
            moment += timedelta(days=rng.randint(1, 200), minutes=rng.randint(0, 1440))
            # Kept in the past and still in order: the last event at least a minute ago,
            # each earlier one at least a minute before the next.
            moment = min(moment, self.now - timedelta(minutes=len(events) - version + 1))
            # Half of email opt-outs, and every bounce, arrive from the email platform.
            from_platform = action == "opt_out" and channel == Channel.EMAIL and rng.random() < 0.5
            actor_id: int | None
            if action == "bounce" or from_platform:
                actor_id, label, source = None, "Email platform", "email_platform"
            else:
                actor_id, label = rng.choice(self.staff)
                source = "staff"
            consent = None
            if action == "re_enrolment":
                consent = consent_id
                consent_id += 1
                self.consents.append(
                    (
                        consent,
                        pk,
                        [channel],
                        "phone_call",
                        moment - timedelta(hours=1),
                        True,
                        actor_id,
                        moment,
                    )
                )
            channels = [channel] if channel else [Channel.EMAIL]
            self.audit.append(
                (
                    audit_id,
                    moment,
                    actor_id,
                    label,
                    source,
                    action,
                    pk,
                    version,
                    channels,
                    before,
                    _snapshot(opted_out, categories, bounced),
                    note,
                    consent,
                )
            )
            audit_id += 1
            if channel:
                # The contact's last change per channel is the row the banner shows.
                latest[channel] = (pk, channel, opted_out[channel], moment, actor_id, source, note)
        self.preferences.extend(latest.values())
        for key in sorted(categories):
            self.subscriptions.append((pk, self.category_ids[key], created))
        if version:
            for target in ("salesforce", "ascend"):
                self.syncs.append((pk, target, version, version, "synced", "", 0, moment, moment))
        country = rng.choice(COUNTRIES)
        row = (
            pk,
            first,
            last,
            email,
            phone,
            salesforce_id_18(sf15),
            str(1_000_000_000 + pk * 3),
            country,
            bounced,
            moment if bounced else None,
            version,
            created,
        )
        return row, audit_id, consent_id


def _copy(
    cursor: Any, table: str, columns: str, rows: list[tuple[Any, ...]] | Iterator[tuple[Any, ...]]
) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


class Command(BaseCommand):
    help = "Create demo users, email categories and N contacts (default 1,000)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--contacts", type=int, default=int(os.environ.get("DEMO_CONTACTS", 1000))
        )
        parser.add_argument(
            "--if-empty", action="store_true", help="Add no contacts if some exist."
        )
        parser.add_argument("--seed", type=int, default=2026)
        parser.add_argument("--batch", type=int, default=50_000)

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("DEMO_PASSWORD", "demo-password-2026")
        staff = [(create_staff_user(email, role, password).pk, email) for email, role in DEMO_USERS]
        for position, (key, name, field) in enumerate(CATEGORIES):
            EmailCategory.objects.get_or_create(
                key=key, defaults={"name": name, "salesforce_field": field, "position": position}
            )
        for position, (mid, name, is_parent) in enumerate(BUSINESS_UNITS):
            BusinessUnit.objects.get_or_create(
                mid=mid, defaults={"name": name, "is_parent": is_parent, "position": position}
            )
        if options["if_empty"] and Contact.objects.exists():
            self.stdout.write("Contacts exist already; none added.")
        else:
            self.seed(options["contacts"], options["batch"], random.Random(options["seed"]), staff)
        self.stdout.write(f"Demo logins (password: {password}):")
        for email, role in DEMO_USERS:
            self.stdout.write(f"  {role:<10} {email}")

    def seed(
        self, total: int, batch: int, rng: random.Random, staff: list[tuple[int, str]]
    ) -> None:
        started = time.monotonic()
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM preferences_contact")
            first_pk = cursor.fetchone()[0] + 1
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM audit_auditentry")
            audit_id = cursor.fetchone()[0] + 1
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM preferences_consent")
            consent_id = cursor.fetchone()[0] + 1
        done = 0
        while done < total:
            size = min(batch, total - done)
            seeder = Seeder(rng, staff, now)
            contacts = []
            for pk in range(first_pk + done, first_pk + done + size):
                row, audit_id, consent_id = seeder.contact(pk, audit_id, consent_id)
                contacts.append(row)
            # A real log is written in time order, and the audit log's date filter relies on
            # it (audit/forms.py, date_range_q): number the batch's entries by time, not by
            # contact. (Seeds of more than one batch still overlap between batches.)
            first_audit_id = audit_id - len(seeder.audit)
            seeder.audit.sort(key=lambda row: row[1])
            seeder.audit = [(first_audit_id + n, *row[1:]) for n, row in enumerate(seeder.audit)]
            with transaction.atomic(), connection.cursor() as cursor:
                _copy(
                    cursor,
                    "preferences_contact",
                    "id, first_name, last_name, email, phone, salesforce_id, ascend_id, country, email_bounced, email_bounced_at, version, created_at",
                    contacts,
                )
                _copy(
                    cursor,
                    "preferences_channelpreference",
                    "contact_id, channel, opted_out, changed_at, changed_by_id, source, note",
                    seeder.preferences,
                )
                _copy(
                    cursor,
                    "preferences_subscription",
                    "contact_id, category_id, subscribed_at",
                    seeder.subscriptions,
                )
                _copy(
                    cursor,
                    "preferences_consent",
                    "id, contact_id, channels, method, obtained_at, attested, recorded_by_id, recorded_at",
                    seeder.consents,
                )
                _copy(
                    cursor,
                    "audit_auditentry",
                    "id, created_at, actor_id, actor_label, source, action, contact_id, contact_version, channels, before, after, note, consent_id",
                    seeder.audit,
                )
                _copy(
                    cursor,
                    "preferences_contactsync",
                    "contact_id, target, synced_version, notes_version, status, last_error, attempts, updated_at, synced_at",
                    seeder.syncs,
                )
            done += size
            if total > batch:
                self.stdout.write(
                    f"  {done:,} / {total:,} contacts ({time.monotonic() - started:.0f} s)"
                )
        with connection.cursor() as cursor:
            for table in ("preferences_contact", "audit_auditentry", "preferences_consent"):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
                )
            cursor.execute("ANALYZE")
        self.stdout.write(f"Added {total:,} contacts in {time.monotonic() - started:.1f} s.")
