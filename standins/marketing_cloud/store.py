"""The account's data: one status per business unit and subscriber key, the tracking events
of commercial sends (UnsubEvent, BounceEvent) per business unit, the counters a reset clears,
and what the state file keeps.

Methods that read or write records assume the caller holds ``lock``, except
``set_subscribers``, ``subscriber`` and ``subscribers``, which take it themselves.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

# The demo's business units (seed_demo creates BusinessUnit rows with these MIDs).
PARENT_MID = "510000001"
CHILD_MIDS = ("510000002", "510000003")

STATUSES = ("Active", "Bounced", "Held", "Unsubscribed", "Deleted")
# The API may set these; Bounced and Held are Marketing Cloud's own verdicts.
SETTABLE_STATUSES = ("Active", "Unsubscribed")

_MID = re.compile(r"\d{1,20}")

TRACKING_OBJECTS = ("UnsubEvent", "BounceEvent")
# BounceEvent's BounceCategory values as Marketing Cloud's bounce reports name them.
BOUNCE_CATEGORIES = (
    "Hard bounce",
    "Soft bounce",
    "Block bounce",
    "Technical bounce",
    "Unknown bounce",
)
# Answers a ContinueRequest can still ask for; older ones are forgotten.
_MAX_CONTINUATIONS = 100


def status_name(value: str) -> str:
    """Marketing Cloud's spelling of a status given in any case."""
    for status in STATUSES:
        if value.lower() == status.lower():
            return status
    raise ValueError(f"unknown subscriber status {value!r}; one of {', '.join(STATUSES)}")


def timestamp(value: datetime | None = None) -> str:
    # Marketing Cloud writes dates without a zone (they are in its server time, CST).
    if value is not None and value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None) - timedelta(hours=6)
    value = value or datetime.now(UTC) - timedelta(hours=6)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def server_date(text: str) -> datetime:
    """A date given in a request (server time unless it names a zone), naive server time."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None) - timedelta(hours=6)
    return value


class SubscriberStore:
    """Subscribers by (MID, key) in one enterprise account: a parent and its children."""

    def __init__(
        self, *, lock: threading.RLock, parent_mid: str, child_mids: Iterable[str]
    ) -> None:
        self.lock = lock
        self.parent_mid = parent_mid
        self.child_mids = tuple(child_mids)
        for mid in self.mids:
            if not _MID.fullmatch(mid):
                raise ValueError(f"a MID is a number, got {mid!r}")
        self.clear()

    @property
    def mids(self) -> tuple[str, ...]:
        return (self.parent_mid, *self.child_mids)

    def clear(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.tracking: list[dict[str, Any]] = []
        self.continuations: dict[str, tuple[str, list[dict[str, Any]], list[str]]] = {}
        self._serial = 0
        self.token_calls = 0
        self.api_calls = 0
        # Event Notification Service callbacks verified: {"callbackId", "verificationKey", "mid"}.
        self.ens_verifications: list[dict[str, str]] = []
        self.log: deque[tuple[str, str]] = deque(maxlen=100_000)  # a demo runs for days

    def set_subscribers(
        self, records: Iterable[Mapping[str, Any]], *, only_new: bool = False
    ) -> int:
        """Write ``{"key", "status", "mid"?, "email"?}`` each (all checked before any is
        written); with ``only_new``, skip subscribers that exist. Returns how many were
        written."""
        checked = []
        for record in records:
            key = record.get("key")
            if not isinstance(key, str) or not key or len(key) > 254:
                raise ValueError(f"a subscriber key is a non-empty string, got {key!r}")
            mid = str(record.get("mid") or self.parent_mid)
            if mid not in self.mids:
                raise ValueError(f"MID {mid} is not one of this account's: {', '.join(self.mids)}")
            status = status_name(str(record.get("status", "")))
            checked.append((mid, key, status, record.get("email")))
        written = 0
        with self.lock:
            for mid, key, status, email in checked:
                if only_new and (mid, key) in self.records:
                    continue
                self.write(mid, key, status, str(email) if email else None)
                written += 1
        return written

    def subscriber(self, key: str, mid: str | None = None) -> dict[str, Any] | None:
        with self.lock:
            record = self.records.get((mid or self.parent_mid, key))
            return dict(record) if record is not None else None

    def subscribers(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(record) for record in self.records.values()]

    def write(self, mid: str, key: str, status: str, email: str | None) -> None:
        old = self.records.get((mid, key))
        now = timestamp()
        if old is None:
            self._serial += 1
            record: dict[str, Any] = {
                "mid": mid,
                "key": key,
                "id": self._serial,
                "email": email or "",
                "created": now,
                "unsubscribed": None,
            }
        else:
            record = dict(old)
            if email:
                record["email"] = email
        if status == "Unsubscribed" and record.get("status") != "Unsubscribed":
            record["unsubscribed"] = now
        record["status"] = status
        record["modified"] = now
        self.records[(mid, key)] = record

    def add_tracking_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Record tracking events (all checked before any is written): ``{"object"
        (UnsubEvent, BounceEvent), "mid", "key", "email"?, "date"? (ISO, with a zone or in
        server time; default now), "send_id"?, "batch_id"?, "bounce_category"? (BounceEvent,
        default "Hard bounce"), "bounce_type"?, "smtp_code"?, "smtp_reason"?}``."""
        checked = []
        for event in events:
            kind = str(event.get("object", ""))
            if kind not in TRACKING_OBJECTS:
                raise ValueError(f"object is one of {', '.join(TRACKING_OBJECTS)}, got {kind!r}")
            mid = str(event.get("mid") or self.parent_mid)
            if mid not in self.mids:
                raise ValueError(f"MID {mid} is not one of this account's: {', '.join(self.mids)}")
            key = event.get("key")
            if not isinstance(key, str) or not key or len(key) > 254:
                raise ValueError(f"a subscriber key is a non-empty string, got {key!r}")
            date = event.get("date")
            when = timestamp(server_date(str(date))) if date else timestamp()
            record: dict[str, Any] = {
                "object": kind,
                "mid": mid,
                "key": key,
                "email": str(event.get("email") or ""),
                "date": when,
                "send_id": str(event.get("send_id") or 0),
                "batch_id": str(event.get("batch_id") or 0),
            }
            if kind == "BounceEvent":
                category = str(event.get("bounce_category") or "Hard bounce")
                if category not in BOUNCE_CATEGORIES:
                    raise ValueError(f"bounce_category is one of {', '.join(BOUNCE_CATEGORIES)}")
                record["event_type"] = "HardBounce" if category == "Hard bounce" else "SoftBounce"
                record["bounce_category"] = category
                record["bounce_type"] = str(event.get("bounce_type") or "immediate")
                record["smtp_code"] = str(event.get("smtp_code") or "")
                record["smtp_reason"] = str(event.get("smtp_reason") or "")
            else:
                record["event_type"] = "Unsubscribe"
            checked.append(record)
        with self.lock:
            self.tracking.extend(checked)
        return len(checked)

    def tracking_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(event) for event in self.tracking]

    def keep_continuation(
        self, request_id: str, object_type: str, rest: list[dict[str, Any]], properties: list[str]
    ) -> None:
        while len(self.continuations) >= _MAX_CONTINUATIONS:
            del self.continuations[next(iter(self.continuations))]
        self.continuations[request_id] = (object_type, rest, properties)

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": 1,
            "serial": self._serial,
            "subscribers": list(self.records.values()),
            "tracking": list(self.tracking),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.records = {
            (record["mid"], record["key"]): record for record in data.get("subscribers", [])
        }
        self.tracking = list(data.get("tracking", []))
        self._serial = int(data.get("serial", len(self.records)))
