"""The org's data: contacts, leads, accounts and tasks, their Ids and SystemModstamps, the
API usage, and what the state file keeps of them.

Methods that read or write records assume the caller holds ``lock``, except the helpers
tests call (``add_contacts``, ``add_records``, ``contact``, ``record``, ``contacts``,
``tasks``, ``task``, ``external_update``, ``delete_contact``, ``merge_contacts``,
``convert_lead``, ``add_person_account``), which take it themselves.

A stored record is never changed in place: every write stores a new dict. The composite
journal keeps the replaced one to roll back, and a Bulk API query job's snapshot (bulk.py)
is a list of the records as they were when it completed, read without the lock.

What Salesforce does beyond storing, as its documentation says:

- merge ("merge()", SOAP API Developer Guide; "Triggers and Merge Statements", Apex
  Developer Guide): the losing record is deleted with ``MasterRecordId`` set to the winner,
  the winner is updated, and the loser's related records (its Tasks) move to the winner;
  ``queryAll`` still finds the loser;
- lead conversion ("convertLead()", SOAP API Developer Guide; "Change Events for Lead
  Conversion"): the lead gets ``IsConverted``, ``ConvertedContactId`` and ``ConvertedDate``;
  into an existing contact only its empty fields are filled;
- person accounts ("Person Account Record Types", SOAP API Developer Guide): a person
  account has a person contact (``PersonContactId``); the Person fields, the names and the
  custom ``__pc`` fields are the contact's fields, so a write to either record shows on both
  under one stamp ("Updating a Person Account", Change Data Capture Developer Guide).
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from standins.salesforce.schema import DEFAULT_TASK_EXTERNAL_ID as DEFAULT_TASK_EXTERNAL_ID
from standins.salesforce.schema import VERSION_FIELD as VERSION_FIELD
from standins.salesforce.schema import ObjectSchema, OrgSchema, person_name

DEFAULT_API_ALLOWANCE = 100_000

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_CAPITAL_FLAGS = str.maketrans({c: ("1" if "A" <= c <= "Z" else "0") for c in BASE62})
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_DATETIME_FIELDS = ("SystemModstamp", "LastModifiedDate", "CreatedDate")
OBJECTS = ("Contact", "Lead", "Account", "Task")
READ_ONLY = frozenset(
    name.lower()
    for name in (
        "Id",
        "IsDeleted",
        "SystemModstamp",
        "LastModifiedDate",
        "LastModifiedById",
        "CreatedDate",
        "CreatedById",
    )
)
STANDARD_CONTACT_FIELDS = (
    "Id",
    "IsDeleted",
    "FirstName",
    "LastName",
    "Email",
    "Phone",
    "HasOptedOutOfEmail",
    "DoNotCall",
    "SystemModstamp",
    "LastModifiedDate",
    "LastModifiedById",
    "CreatedDate",
    "CreatedById",
)
# A person account's fields that are its person contact's: (name on Account, on Contact).
_SHARED = (
    ("FirstName", "FirstName"),
    ("LastName", "LastName"),
    ("PersonEmail", "Email"),
    ("PersonHasOptedOutOfEmail", "HasOptedOutOfEmail"),
    ("PersonDoNotCall", "DoNotCall"),
)
PERSON_FIELDS = {account.lower(): contact for account, contact in _SHARED}
_ACCOUNT_NAMES = {contact.lower(): account for account, contact in _SHARED}

# How add_contacts takes a record with these keys: the keys it keeps, their org spelling,
# and whether that is every key as given (the record is then merged in whole).
LoadPlan = tuple[tuple[str, ...], tuple[str, ...], bool]

# (code, message, fields): why one record of a call was refused.
RecordError = tuple[str, str, list[str]]


# --- Ids ------------------------------------------------------------------------------------


def id18(id15: str) -> str:
    """The 18-character, case-insensitive form of a 15-character Salesforce ID."""
    if len(id15) != 15:
        return id15
    # Each 5-character chunk gives a letter: bit i set when its i-th character is a capital.
    flags = id15.translate(_CAPITAL_FLAGS)
    if not flags.isdigit():  # characters no Id has: count the capitals one by one
        flags = "".join("1" if "A" <= ch <= "Z" else "0" for ch in id15)
    return (
        id15
        + _CHECKSUM[int(flags[4::-1], 2)]
        + _CHECKSUM[int(flags[9:4:-1], 2)]
        + _CHECKSUM[int(flags[14:9:-1], 2)]
    )


def normalize_id(value: object) -> str | None:
    """The canonical 18-character form of a 15- or 18-character Id, or None if it is not one.

    An 18-character Id is case-insensitive: its suffix says which letters are capitals.
    """
    if not isinstance(value, str) or not _ID.match(value):
        return None
    if len(value) == 15:
        return id18(value)
    chars = list(value[:15])
    suffix = value[15:].upper()
    for chunk, letter in enumerate(suffix):
        bits = _CHECKSUM.find(letter)
        for offset in range(5):
            i = chunk * 5 + offset
            chars[i] = chars[i].upper() if bits >> offset & 1 else chars[i].lower()
    restored = "".join(chars)
    return restored + suffix if id18(restored) == restored + suffix else None


def make_id(prefix: str, number: int) -> str:
    """The 18-character Id of the number-th record with this key prefix: the prefix, "Sb"
    (this stand-in's pod), the number in ten base-62 digits, the checksum. By table lookups,
    as a million-contact load makes a million of them."""
    high, low = divmod(number, _CHUNK_RANGE)
    head = prefix + "Sb"
    middle, middle_check = _chunk(high)
    tail, tail_check = _chunk(low)
    return head + middle + tail + _head_checksum(head) + middle_check + tail_check


_CHUNK_RANGE = 62**5
_PAIRS = tuple(a + b for a in BASE62 for b in BASE62)
_CAPITALS = tuple(int("A" <= c <= "Z") for c in BASE62)
_PAIR_CAPITALS = tuple(_CAPITALS[i] | _CAPITALS[j] << 1 for i in range(62) for j in range(62))


def _chunk(number: int) -> tuple[str, str]:
    """Five base-62 digits of ``number`` (below 62**5) and their checksum letter."""
    first, rest = divmod(number, 62**4)
    pair, last = divmod(rest, 62**2)
    bits = _CAPITALS[first] | _PAIR_CAPITALS[pair] << 1 | _PAIR_CAPITALS[last] << 3
    return BASE62[first] + _PAIRS[pair] + _PAIRS[last], _CHECKSUM[bits]


@cache
def _head_checksum(head: str) -> str:
    return id18(head + "0000000000")[15]


def serial_ids(prefix: str, start: int) -> Iterator[str]:
    """``make_id(prefix, n)`` for n = start, start + 1, ...: the digits counted up in place,
    so each Id costs a few string joins (a data load's Ids)."""
    head = prefix + "Sb"
    head_check = _head_checksum(head)
    high, low = divmod(start, _CHUNK_RANGE)
    first, rest = divmod(low, 62**4)
    pair, last = divmod(rest, 62**2)
    while True:
        middle, middle_check = _chunk(high)
        checks = head_check + middle_check
        for digit in range(first, 62):
            for stem_pair in range(pair, 62**2):
                stem = head + middle + BASE62[digit] + _PAIRS[stem_pair]
                bits = _CAPITALS[digit] | _PAIR_CAPITALS[stem_pair] << 1
                for end in range(last, 62**2):
                    yield stem + _PAIRS[end] + checks + _CHECKSUM[bits | _PAIR_CAPITALS[end] << 3]
                last = 0
            pair = 0
        first = 0
        high += 1


ORG_ID = id18("00DSb0000000Org")
API_USER_ID = id18("005Sb000000ApiU")  # the connected app's run-as user: the app's writes
INTEGRATION_USER_ID = id18("005Sb000000McCn")  # Marketing Cloud Connect: external_update()
ADMIN_USER_ID = id18("005Sb000000Admn")  # whoever loaded the seed data: add_contact()


# --- timestamps -----------------------------------------------------------------------------


def format_datetime(value: datetime) -> str:
    """Salesforce's wire format: ``2024-05-01T12:00:00.000+0000``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError(f"date-time without a time zone: {text!r}")
    return value.astimezone(UTC)


def revive(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record read back from JSON, with its timestamps as datetimes again."""
    revived = dict(record)
    for name in _DATETIME_FIELDS:
        if isinstance(revived.get(name), str):
            revived[name] = parse_datetime(revived[name])
    return revived


# --- the store ------------------------------------------------------------------------------


class SalesforceStore:
    """Records by object and Id, and the counters a reset clears."""

    def __init__(
        self,
        *,
        lock: threading.RLock,
        schema: OrgSchema,
        api_allowance: int,
        whole_second_modstamps: bool,
    ) -> None:
        self.lock = lock
        self.org = schema
        self.whole_second_modstamps = whole_second_modstamps
        self.default_allowance = api_allowance
        # Field spellings seen on Contact, lower-cased to the first spelling (the declared
        # one where the schema has it): an open Contact takes any field a test writes.
        self._field_names = {
            field.name.lower(): field.name for field in self.org.objects["contact"].fields.values()
        }
        # Per set of keys given to add_contacts: which to keep, and their org spelling.
        self._load_plans: dict[tuple[str, ...], LoadPlan] = {}
        self.clear()

    @property
    def task_external_id(self) -> str:
        return self.org.task_external_id

    def clear(self) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in OBJECTS}
        self.contacts = self.records["Contact"]
        # (SystemModstamp, Id) of contacts in write order, which is stamp order: the window
        # queries bisect it instead of scanning every contact. Superseded entries are skipped.
        self._by_stamp: list[tuple[datetime, str]] = []
        # Task Ids by the value of the Task's external ID field (task_external_id).
        self._task_keys: dict[str, list[str]] = {}
        self.cursors: OrderedDict[str, tuple[list[dict[str, Any]], Any]] = OrderedDict()
        self._journal: dict[tuple[str, str], dict[str, Any] | None] | None = None
        self._serials: dict[str, int] = {}
        self._last_stamp = datetime(2000, 1, 1, tzinfo=UTC)
        self.api_used = 0
        self.api_calls = 0
        self.api_allowance = self.default_allowance
        self.log: deque[tuple[str, str]] = deque(maxlen=100_000)  # a demo runs for days

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        return self.records["Task"]

    def schema(self, object_name: str) -> ObjectSchema:
        schema = self.org.object(object_name)
        if schema is None:
            raise KeyError(object_name)
        return schema

    def object_of(self, record_id: str) -> str | None:
        """The object an Id names, by its key prefix."""
        schema = self.org.by_prefix(record_id[:3])
        return schema.name if schema is not None else None

    # -- helpers for tests and the demo -------------------------------------------------------

    def add_contacts(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create contacts as one data load: one stamp, one pass, no per-record lookups
        beyond the record itself (a million load in a few seconds)."""
        with self.lock:
            if self._journal is not None:  # never inside a composite call: nothing to undo
                raise RuntimeError("add_contacts inside an all-or-none call")
            stamp = self.next_stamp()
            template = self._new_record("Contact", "", stamp, ADMIN_USER_ID)
            contacts = self.contacts
            plans = self._load_plans
            first_serial = serial = self._serials.get("003", 0)
            new_ids = serial_ids("003", serial + 1)
            ids: list[str] = []
            for fields in records:
                keys = tuple(fields)
                plan = plans.get(keys)
                if plan is None:
                    if len(plans) > 1000:  # loads of ever-new field sets: keep it small
                        plans.clear()
                    plan = plans[keys] = self._load_plan(keys)
                given = fields.get("Id")
                if given:
                    contact_id = normalize_id(given)
                    if contact_id is None:
                        raise ValueError(f"not a Salesforce Id: {given!r}")
                else:
                    serial += 1
                    contact_id = next(new_ids)
                kept, names, as_given = plan
                if as_given:
                    record = {**template, "Id": contact_id, **fields}
                else:
                    record = template.copy()
                    record["Id"] = contact_id
                    for key, name in zip(kept, names, strict=True):
                        record[name] = fields[key]
                contacts[contact_id] = record
                ids.append(contact_id)
            if serial != first_serial:
                self._serials["003"] = serial
            # One stamp for the whole load, so its index entries are one contiguous run.
            self._by_stamp.extend((stamp, key) for key in ids)
            if len(self._by_stamp) > 2 * len(contacts) + 1000:
                self._rebuild_index()
            return ids

    def _load_plan(self, keys: tuple[str, ...]) -> LoadPlan:
        kept = tuple(key for key in keys if key.lower() not in READ_ONLY)
        # As canonical(): the first spelling seen is the org's; a later duplicate key wins.
        names = tuple(self._field_names.setdefault(key.lower(), key) for key in kept)
        return kept, names, kept == keys == names

    def add_records(
        self, object_name: str, records: Iterable[Mapping[str, Any]], user_id: str = ADMIN_USER_ID
    ) -> list[str]:
        """Create records of any object as a data load would (one stamp, no validation
        rules, read-only fields left out); returns their Ids. A field the object lacks in
        this org fails the whole load (ValueError), as it fails a Bulk API ingest job: the
        record would otherwise hold, and read back, a field the org does not have."""
        with self.lock:
            if self._journal is not None:
                raise RuntimeError("add_records inside an all-or-none call")
            schema = self.schema(object_name)
            if schema.name == "Contact":
                return self.add_contacts(records)
            loads = [
                {k: v for k, v in fields.items() if k.lower() not in READ_ONLY}
                for fields in records
            ]
            unknown = sorted({name for kept in loads for name in kept if not schema.has(name)})
            if unknown:
                raise ValueError(f"No such column {', '.join(unknown)} on entity '{schema.name}'")
            stamp = self.next_stamp()
            return [
                self.create(schema.name, self.canonical_for(schema.name, kept), stamp, user_id)
                for kept in loads
            ]

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        return self.record("Contact", contact_id)

    def record(self, object_name: str, record_id: str) -> dict[str, Any] | None:
        with self.lock:
            key = normalize_id(record_id)
            record = self.records[self.schema(object_name).name].get(key) if key else None
            return dict(record) if record is not None else None

    def copies(self, object_name: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            records = self.records[self.schema(object_name).name]
            return {key: dict(record) for key, record in records.items()}

    def contact_copies(self) -> dict[str, dict[str, Any]]:
        return self.copies("Contact")

    def task_copies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(task) for task in self.tasks.values()]

    def task(self, external_id: str) -> dict[str, Any] | None:
        """The task whose external ID field (task_external_id) holds this value."""
        with self.lock:
            found = self._task_keys.get(external_id)
            return dict(self.tasks[found[0]]) if found else None

    def external_update(self, contact_id: str, fields: Mapping[str, Any]) -> datetime:
        with self.lock:
            key = normalize_id(contact_id)
            if key is None or key not in self.contacts:
                raise KeyError(contact_id)
            stamp = self.next_stamp()
            self.write("Contact", key, self.canonical(fields), stamp, INTEGRATION_USER_ID)
            return stamp

    def delete_contact(self, contact_id: str) -> None:
        with self.lock:
            key = normalize_id(contact_id)
            if key is None or key not in self.contacts:
                raise KeyError(contact_id)
            self.write("Contact", key, {"IsDeleted": True}, self.next_stamp(), ADMIN_USER_ID)

    def undelete_contact(self, contact_id: str) -> None:
        """Restore a deleted (not merged) contact from the Recycle Bin, as a user would
        ("undelete()", SOAP API Developer Guide): a write, so its stamp moves on."""
        with self.lock:
            key = normalize_id(contact_id)
            record = self.contacts.get(key) if key else None
            if not key or record is None or not record["IsDeleted"] or record.get("MasterRecordId"):
                raise KeyError(contact_id)
            self.write("Contact", key, {"IsDeleted": False}, self.next_stamp(), ADMIN_USER_ID)

    def merge_contacts(self, survivor_id: str, loser_id: str) -> datetime:
        """Merge the loser into the survivor as Salesforce's merge does; returns the stamp."""
        with self.lock:
            survivor, loser = normalize_id(survivor_id), normalize_id(loser_id)
            for given, key in ((survivor_id, survivor), (loser_id, loser)):
                record = self.contacts.get(key) if key else None
                if record is None:
                    raise KeyError(given)
                if record["IsDeleted"]:
                    raise ValueError(f"contact {given} is deleted")
            if survivor == loser:
                raise ValueError("a contact cannot be merged into itself")
            assert survivor is not None and loser is not None
            stamp = self.next_stamp()
            merged = {"IsDeleted": True, "MasterRecordId": survivor}
            self.write("Contact", loser, merged, stamp, ADMIN_USER_ID)
            self.write("Contact", survivor, {}, stamp, ADMIN_USER_ID)
            for task in list(self.tasks.values()):
                if normalize_id(task.get("WhoId")) == loser:
                    self.write("Task", task["Id"], {"WhoId": survivor}, stamp, ADMIN_USER_ID)
            return stamp

    def convert_lead(self, lead_id: str, contact_id: str | None, fields: Mapping[str, Any]) -> str:
        """Convert a lead into a new contact (with ``fields`` on top), or into an existing
        one; returns the contact's Id."""
        with self.lock:
            key = normalize_id(lead_id)
            lead = self.records["Lead"].get(key) if key else None
            if lead is None:
                raise KeyError(lead_id)
            if lead["IsDeleted"] or lead.get("IsConverted"):
                raise ValueError(f"lead {lead_id} is deleted or converted already")
            assert key is not None
            stamp = self.next_stamp()
            contact_schema = self.schema("Contact")
            carried = {
                name: value
                for name, value in lead.items()
                if value is not None
                and name.lower() not in _NOT_CARRIED
                and contact_schema.field(name) is not None
            }
            if contact_id is None:
                target = self.create(
                    "Contact", {**carried, **self.canonical(fields)}, stamp, ADMIN_USER_ID
                )
            else:
                existing_key = normalize_id(contact_id)
                existing = self.contacts.get(existing_key) if existing_key else None
                if existing is None or existing["IsDeleted"]:
                    raise KeyError(contact_id)
                target = existing["Id"]
                empty = {k: v for k, v in carried.items() if existing.get(k) in (None, "")}
                self.write("Contact", target, {**empty, **self.canonical(fields)}, stamp,
                           ADMIN_USER_ID)  # fmt: skip
            converted = {
                "IsConverted": True,
                "ConvertedContactId": target,
                "ConvertedDate": stamp.date().isoformat(),
                "Status": "Closed - Converted",
            }
            self.write("Lead", key, converted, stamp, ADMIN_USER_ID)
            return target

    def add_person_account(self, fields: Mapping[str, Any]) -> str:
        """A person account and its person contact, as one data load; returns the account's
        Id (``PersonContactId`` names the contact)."""
        with self.lock:
            if not self.org.person_accounts:
                raise ValueError("person accounts are not enabled in this org")
            stamp = self.next_stamp()
            given = {k: v for k, v in fields.items() if k.lower() not in READ_ONLY}
            account_id = self.next_id("001")
            contact_id = self.next_id("003")
            account = self._new_record("Account", account_id, stamp, ADMIN_USER_ID)
            account.update(IsPersonAccount=True, PersonContactId=contact_id,
                           PersonHasOptedOutOfEmail=False, PersonDoNotCall=False)  # fmt: skip
            contact = self._new_record("Contact", contact_id, stamp, ADMIN_USER_ID)
            contact.update(IsPersonAccount=True, AccountId=account_id)
            self._put("Account", account)
            self._put("Contact", contact)
            self.write("Account", account_id, self.canonical_for("Account", given), stamp,
                       ADMIN_USER_ID)  # fmt: skip
            return account_id

    # -- fields ------------------------------------------------------------------------------

    def canonical(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        # Field names are case-insensitive in Salesforce; keep the first spelling seen.
        result = {}
        for name, value in fields.items():
            canonical = self._field_names.setdefault(name.lower(), name)
            result[canonical] = value
        return result

    def canonical_for(self, object_name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        if self.schema(object_name).name == "Contact":
            return self.canonical(fields)
        return {self.field_name_for(object_name, name): value for name, value in fields.items()}

    def field_name(self, name: str) -> str:
        """The spelling the org uses for a Contact field named in any case."""
        return self._field_names.get(name.lower(), name)

    def field_name_for(self, object_name: str, name: str) -> str:
        schema = self.schema(object_name)
        if schema.name == "Contact":
            return self.field_name(name)
        field = schema.field(name)
        return field.name if field is not None else name

    @staticmethod
    def read_only_error(fields: Iterable[str]) -> RecordError | None:
        read_only = [name for name in fields if name.lower() in READ_ONLY]
        if read_only:
            return _read_only(read_only)
        return None

    def field_error(
        self, object_name: str, fields: Iterable[str], *, creating: bool = False
    ) -> RecordError | None:
        """Why a record of this object cannot take these fields: one the org lacks
        (INVALID_FIELD), or one the integration user may not write
        (INVALID_FIELD_FOR_INSERT_UPDATE)."""
        schema = self.schema(object_name)
        names = list(fields)
        unknown = [name for name in names if not schema.has(name)]
        if unknown:
            message = f"No such column '{unknown[0]}' on sobject of type {schema.name}"
            return ("INVALID_FIELD", message, unknown)
        fixed = [name for name in names if name.lower() in READ_ONLY]
        for name in names:
            field = schema.field(name)
            if field is not None and not (field.createable if creating else field.updateable):
                fixed.append(field.name)
        if fixed:
            return _read_only(list(dict.fromkeys(fixed)))
        return None

    # -- writing -----------------------------------------------------------------------------

    def next_stamp(self) -> datetime:
        now = datetime.now(UTC)
        if self.whole_second_modstamps:
            stamp = max(now.replace(microsecond=0), self._last_stamp)
        else:
            stamp = now.replace(microsecond=now.microsecond // 1000 * 1000)
            if stamp <= self._last_stamp:
                stamp = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = stamp
        return stamp

    def next_id(self, prefix: str) -> str:
        self._serials[prefix] = self._serials.get(prefix, 0) + 1
        return make_id(prefix, self._serials[prefix])

    def _new_record(
        self, object_name: str, record_id: str, stamp: datetime, user_id: str
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"Id": record_id, "IsDeleted": False}
        record.update(_DEFAULTS.get(object_name, {}))
        if object_name == "Task":
            record["OwnerId"] = user_id
        record.update(
            CreatedDate=stamp,
            CreatedById=user_id,
            LastModifiedDate=stamp,
            LastModifiedById=user_id,
            SystemModstamp=stamp,
        )
        return record

    def create(
        self, object_name: str, fields: Mapping[str, Any], stamp: datetime, user_id: str
    ) -> str:
        """Store a new record of this object (fields in the org's spelling); its Id."""
        schema = self.schema(object_name)
        record_id = self.next_id(schema.key_prefix)
        record = self._new_record(schema.name, record_id, stamp, user_id)
        record.update(fields)
        self._put(schema.name, record)
        self._mirror_person(schema.name, record, fields, stamp, user_id)
        return record_id

    def write(
        self,
        object_name: str,
        record_id: str,
        fields: Mapping[str, Any],
        stamp: datetime,
        user_id: str,
    ) -> None:
        """Update (or, for an unknown Contact Id, create) a record; fields in the org's
        spelling."""
        records = self.records[object_name]
        old = records.get(record_id) or self._new_record(object_name, record_id, stamp, user_id)
        # A new dict, never a mutation: the composite journal keeps the old one to roll back.
        record = {**old, **fields}
        record.update(SystemModstamp=stamp, LastModifiedDate=stamp, LastModifiedById=user_id)
        self._put(object_name, record)
        self._mirror_person(object_name, record, fields, stamp, user_id)

    def write_contact(
        self, contact_id: str, fields: Mapping[str, Any], stamp: datetime, user_id: str
    ) -> None:
        self.write("Contact", contact_id, fields, stamp, user_id)

    def _mirror_person(
        self,
        object_name: str,
        record: Mapping[str, Any],
        fields: Mapping[str, Any],
        stamp: datetime,
        user_id: str,
    ) -> None:
        """A person account and its person contact are one person: carry the shared fields
        across, and give both the stamp."""
        if not record.get("IsPersonAccount"):
            return
        if object_name == "Account" and record.get("PersonContactId") in self.contacts:
            target, other_id = "Contact", record["PersonContactId"]
            shared = {_contact_name(name): value for name, value in fields.items()}
        elif object_name == "Contact" and record.get("AccountId") in self.records["Account"]:
            target, other_id = "Account", record["AccountId"]
            shared = {_account_name(name): value for name, value in fields.items()}
        else:
            return
        carried = {name: value for name, value in shared.items() if name is not None}
        other = {**self.records[target][other_id], **carried}
        other.update(SystemModstamp=stamp, LastModifiedDate=stamp, LastModifiedById=user_id)
        self._put(target, other)

    def _put(self, object_name: str, record: dict[str, Any]) -> None:
        key = record["Id"]
        records = self.records[object_name]
        old = records.get(key)
        if self._journal is not None:
            self._journal.setdefault((object_name, key), old)
        records[key] = record
        if object_name == "Contact":
            self._by_stamp.append((record["SystemModstamp"], key))
            if len(self._by_stamp) > 2 * len(records) + 1000:
                self._rebuild_index()
        elif object_name == "Task":
            self._index_task(old, record)

    def _index_task(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        name = self.task_external_id
        before = old.get(name) if old is not None else None
        after = new.get(name) if new is not None else None
        if before == after:
            return
        task_id = (new or old or {}).get("Id")
        if isinstance(before, str) and before in self._task_keys:
            self._task_keys[before] = [i for i in self._task_keys[before] if i != task_id]
            if not self._task_keys[before]:
                del self._task_keys[before]
        if isinstance(after, str) and after and isinstance(task_id, str):
            self._task_keys.setdefault(after, []).append(task_id)

    def task_ids_with(self, field_name: str, value: Any) -> list[str]:
        """The Tasks whose field holds this value (external IDs match exactly)."""
        if field_name.lower() == self.task_external_id.lower():
            return list(self._task_keys.get(value, ()))
        lowered = field_name.lower()
        return [
            task["Id"]
            for task in self.tasks.values()
            if any(k.lower() == lowered and v == value for k, v in task.items())
        ]

    def _rebuild_index(self) -> None:
        self._by_stamp = sorted((r["SystemModstamp"], k) for k, r in self.contacts.items())

    def _rebuild_task_index(self) -> None:
        self._task_keys = {}
        for task in self.tasks.values():
            self._index_task(None, task)

    # -- all or none -------------------------------------------------------------------------

    @contextmanager
    def journal(self, enabled: bool) -> Iterator[None]:
        """While enabled, remember what each write replaced, so rollback() can undo them."""
        self._journal = {} if enabled else None
        try:
            yield
        finally:
            self._journal = None

    def rollback(self) -> None:
        assert self._journal is not None
        for (object_name, key), previous in self._journal.items():
            records = self.records[object_name]
            if previous is None:
                records.pop(key, None)
            else:
                records[key] = previous
        self._rebuild_index()
        self._rebuild_task_index()

    # -- reading by stamp --------------------------------------------------------------------

    def in_window(
        self, since: datetime, until: datetime | None, *, inclusive_start: bool
    ) -> list[dict[str, Any]]:
        """Contacts whose SystemModstamp is in the window, by stamp then Id."""
        if inclusive_start:
            low = bisect_left(self._by_stamp, (since, ""))
        else:
            low = bisect_right(self._by_stamp, (since, "\uffff"))
        high = (
            len(self._by_stamp)
            if until is None
            else bisect_right(self._by_stamp, (until, "\uffff"))
        )
        found: dict[str, dict[str, Any]] = {}
        for stamp, key in self._by_stamp[low:high]:
            record = self.contacts.get(key)
            if record is not None and record["SystemModstamp"] == stamp:
                found[key] = record
        return sorted(found.values(), key=lambda r: (r["SystemModstamp"], r["Id"]))

    # -- the state file ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": 2,
            "records": {name: list(records.values()) for name, records in self.records.items()},
            "serials": self._serials,
            "last_stamp": self._last_stamp,
            "api_used": self.api_used,
            "api_allowance": self.api_allowance,
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        stored = data.get("records") or {
            "Contact": data.get("contacts", []),
            "Task": data.get("tasks", []),
        }
        for name in OBJECTS:
            self.records[name].clear()
            self.records[name].update((r["Id"], revive(r)) for r in stored.get(name, []))
        self._serials = {k: int(v) for k, v in data.get("serials", {}).items()}
        if data.get("last_stamp"):
            self._last_stamp = parse_datetime(data["last_stamp"])
        self.api_used = int(data.get("api_used", 0))
        self.api_allowance = int(data.get("api_allowance", self.default_allowance))
        for record in self.contacts.values():
            self.canonical(record)
        self._rebuild_index()
        self._rebuild_task_index()


# What a new record holds before its fields, besides Id, IsDeleted and the system fields.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "Contact": {"HasOptedOutOfEmail": False, "DoNotCall": False},
    "Lead": {
        "HasOptedOutOfEmail": False,
        "DoNotCall": False,
        "IsConverted": False,
        "Status": "Open - Not Contacted",
    },
    "Task": {"Status": "Not Started", "Priority": "Normal"},
}
# A lead's fields that do not become the contact's on conversion.
_NOT_CARRIED = READ_ONLY | {
    "masterrecordid",
    "name",
    "status",
    "company",
    "isconverted",
    "converteddate",
    "convertedcontactid",
    "convertedaccountid",
}


def _read_only(names: list[str]) -> RecordError:
    return (
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        f"Unable to create/update fields: {', '.join(names)}. Please check the security "
        "settings of this field and verify that it is read/write for your profile or "
        "permission set.",
        names,
    )


def _contact_name(account_field: str) -> str | None:
    """The person contact's name for a person account field it shares, else None."""
    lowered = account_field.lower()
    if lowered in PERSON_FIELDS:
        return PERSON_FIELDS[lowered]
    if lowered.endswith("__pc"):
        return account_field[: -len("__pc")] + "__c"
    return None


def _account_name(contact_field: str) -> str | None:
    """The person account's name for a contact field it shares, else None."""
    lowered = contact_field.lower()
    if lowered in _ACCOUNT_NAMES:
        return _ACCOUNT_NAMES[lowered]
    if lowered.endswith("__c"):
        return person_name(contact_field)
    return None
