"""The org's data: contacts and tasks, their Ids and SystemModstamps, the API usage, and
what the state file keeps of them.

Methods that read or write records assume the caller holds ``lock``, except the helpers
tests call (``add_contacts``, ``contact``, ``contacts``, ``tasks``, ``task``,
``external_update``, ``delete_contact``), which take it themselves.

A stored record is never changed in place: every write stores a new dict. The composite
journal keeps the replaced one to roll back, and a Bulk API query job's snapshot (bulk.py)
is a list of the records as they were when it completed, read without the lock.
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

DEFAULT_API_ALLOWANCE = 100_000
DEFAULT_TASK_EXTERNAL_ID = "Preference_Change_Id__c"

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_CAPITAL_FLAGS = str.maketrans({c: ("1" if "A" <= c <= "Z" else "0") for c in BASE62})
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_DATETIME_FIELDS = ("SystemModstamp", "LastModifiedDate", "CreatedDate")
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
# The field every push writes (the contact's version in the app), which the org's ordering
# rule guards (rules.py). Its spelling is known, but like any custom field it is writable
# under a declared schema (contact_fields) only when listed there.
VERSION_FIELD = "Preference_Version__c"

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
    """Contacts by Id, tasks by external id, and the counters a reset clears."""

    def __init__(
        self,
        *,
        lock: threading.RLock,
        task_external_id: str,
        api_allowance: int,
        contact_fields: Iterable[str] | None,
        whole_second_modstamps: bool,
    ) -> None:
        self.lock = lock
        self.task_external_id = task_external_id
        self.whole_second_modstamps = whole_second_modstamps
        self.default_allowance = api_allowance
        # None: any field may be written. Otherwise the org's Contact fields, lower-cased.
        self.schema: set[str] | None = None
        self._field_names = {
            name.lower(): name for name in (*STANDARD_CONTACT_FIELDS, VERSION_FIELD)
        }
        # Per set of keys given to add_contacts: which to keep, and their org spelling.
        self._load_plans: dict[tuple[str, ...], LoadPlan] = {}
        if contact_fields is not None:
            names = [*STANDARD_CONTACT_FIELDS, *contact_fields]
            self.schema = {name.lower() for name in names}
            self._field_names.update({name.lower(): name for name in names})
        self.clear()

    def clear(self) -> None:
        self.contacts: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        # (SystemModstamp, Id) in write order, which is stamp order: the window queries
        # bisect it instead of scanning every contact. Superseded entries are skipped.
        self._by_stamp: list[tuple[datetime, str]] = []
        self.cursors: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._journal: dict[tuple[str, str], dict[str, Any] | None] | None = None
        self._serials: dict[str, int] = {}
        self._last_stamp = datetime(2000, 1, 1, tzinfo=UTC)
        self.api_used = 0
        self.api_calls = 0
        self.api_allowance = self.default_allowance
        self.log: deque[tuple[str, str]] = deque(maxlen=100_000)  # a demo runs for days

    # -- helpers for tests and the demo -------------------------------------------------------

    def add_contacts(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create contacts as one data load: one stamp, one pass, no per-record lookups
        beyond the record itself (a million load in a few seconds)."""
        with self.lock:
            if self._journal is not None:  # never inside a composite call: nothing to undo
                raise RuntimeError("add_contacts inside an all-or-none call")
            stamp = self.next_stamp()
            template = self._new_contact("", stamp, ADMIN_USER_ID)
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

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        with self.lock:
            key = normalize_id(contact_id)
            record = self.contacts.get(key) if key else None
            return dict(record) if record is not None else None

    def contact_copies(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {key: dict(record) for key, record in self.contacts.items()}

    def task_copies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(task) for task in self.tasks.values()]

    def task(self, external_id: str) -> dict[str, Any] | None:
        with self.lock:
            task = self.tasks.get(external_id)
            return dict(task) if task is not None else None

    def external_update(self, contact_id: str, fields: Mapping[str, Any]) -> datetime:
        with self.lock:
            key = normalize_id(contact_id)
            if key is None or key not in self.contacts:
                raise KeyError(contact_id)
            stamp = self.next_stamp()
            self.write_contact(key, self.canonical(fields), stamp, INTEGRATION_USER_ID)
            return stamp

    def delete_contact(self, contact_id: str) -> None:
        with self.lock:
            key = normalize_id(contact_id)
            if key is None or key not in self.contacts:
                raise KeyError(contact_id)
            self.write_contact(key, {"IsDeleted": True}, self.next_stamp(), ADMIN_USER_ID)

    # -- fields ------------------------------------------------------------------------------

    def canonical(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        # Field names are case-insensitive in Salesforce; keep the first spelling seen.
        result = {}
        for name, value in fields.items():
            canonical = self._field_names.setdefault(name.lower(), name)
            result[canonical] = value
        return result

    def field_name(self, name: str) -> str:
        """The spelling the org uses for a field named in any case."""
        return self._field_names.get(name.lower(), name)

    @staticmethod
    def read_only_error(fields: Iterable[str]) -> RecordError | None:
        read_only = [name for name in fields if name.lower() in READ_ONLY]
        if read_only:
            return (
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(read_only)}.",
                read_only,
            )
        return None

    def field_error(self, fields: Mapping[str, Any]) -> RecordError | None:
        """Why a contact cannot take these fields: read-only, or not in the org's schema."""
        read_only = self.read_only_error(fields)
        if read_only is not None:
            return read_only
        if self.schema is not None:
            unknown = [name for name in fields if name.lower() not in self.schema]
            if unknown:
                return (
                    "INVALID_FIELD",
                    f"No such column '{unknown[0]}' on sobject of type Contact",
                    unknown,
                )
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

    def _new_contact(self, contact_id: str, stamp: datetime, user_id: str) -> dict[str, Any]:
        return {
            "Id": contact_id,
            "IsDeleted": False,
            "HasOptedOutOfEmail": False,
            "DoNotCall": False,
            "CreatedDate": stamp,
            "CreatedById": user_id,
            "LastModifiedDate": stamp,
            "LastModifiedById": user_id,
            "SystemModstamp": stamp,
        }

    def write_contact(
        self, contact_id: str, fields: Mapping[str, Any], stamp: datetime, user_id: str
    ) -> None:
        old = self.contacts.get(contact_id) or self._new_contact(contact_id, stamp, user_id)
        # A new dict, never a mutation: the composite journal keeps the old one to roll back.
        record = {**old, **fields}
        record.update(SystemModstamp=stamp, LastModifiedDate=stamp, LastModifiedById=user_id)
        self._put_contact(record)

    def _put_contact(self, record: dict[str, Any]) -> None:
        key = record["Id"]
        if self._journal is not None:
            self._journal.setdefault(("contact", key), self.contacts.get(key))
        self.contacts[key] = record
        self._by_stamp.append((record["SystemModstamp"], key))
        if len(self._by_stamp) > 2 * len(self.contacts) + 1000:
            self._rebuild_index()

    def _rebuild_index(self) -> None:
        self._by_stamp = sorted((r["SystemModstamp"], k) for k, r in self.contacts.items())

    def write_task(
        self, external_id: str, fields: Mapping[str, Any], stamp: datetime
    ) -> tuple[str, bool]:
        """Upsert a task by its external id; returns its Id and whether it was created."""
        old = self.tasks.get(external_id)
        if self._journal is not None:
            self._journal.setdefault(("task", external_id), old)
        if old is None:
            record: dict[str, Any] = {
                "Id": self.next_id("00T"),
                "Status": "Not Started",
                "CreatedDate": stamp,
                "CreatedById": API_USER_ID,
            }
        else:
            record = dict(old)
        record.update(fields)
        record[self.task_external_id] = external_id
        record.update(SystemModstamp=stamp, LastModifiedDate=stamp, LastModifiedById=API_USER_ID)
        self.tasks[external_id] = record
        return record["Id"], old is None

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
        for (kind, key), previous in self._journal.items():
            store = self.contacts if kind == "contact" else self.tasks
            if previous is None:
                store.pop(key, None)
            else:
                store[key] = previous
        self._rebuild_index()

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
            "format": 1,
            "contacts": list(self.contacts.values()),
            "tasks": list(self.tasks.values()),
            "serials": self._serials,
            "last_stamp": self._last_stamp,
            "api_used": self.api_used,
            "api_allowance": self.api_allowance,
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.contacts = {r["Id"]: revive(r) for r in data.get("contacts", [])}
        ext = self.task_external_id
        self.tasks = {t[ext]: revive(t) for t in data.get("tasks", []) if ext in t}
        self._serials = {k: int(v) for k, v in data.get("serials", {}).items()}
        if data.get("last_stamp"):
            self._last_stamp = parse_datetime(data["last_stamp"])
        self.api_used = int(data.get("api_used", 0))
        self.api_allowance = int(data.get("api_allowance", self.default_allowance))
        for record in self.contacts.values():
            self.canonical(record)
        self._rebuild_index()
