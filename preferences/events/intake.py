"""Events from email platforms, stored as received and applied once (docs/design.md,
"Events from email platforms").

``receive()`` stores what an endpoint or the tracking pull parsed, durably and before the
platform is answered; (platform, event_id) is unique, so an event delivered twice is stored
once. A worker then applies each stored event through ``apply_change`` (source: the email
platform, the event id in the note), in a transaction of its own, exactly once: the row is
claimed with SKIP LOCKED and its state moves on in the same transaction as the change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, Source
from audit.services import record
from lib import background
from lib.channels import Channel
from preferences.models import (
    GLOBAL_OPT_OUT_KINDS,
    Contact,
    EventKind,
    EventState,
    PlatformEvent,
)
from preferences.services import ChangeRefused, apply_change

logger = logging.getLogger(__name__)

APPLY_TASK = "preferences.events.tasks.apply_platform_events"
BATCH = 500
# Events applied in one transaction.
CHUNK = 50


@dataclass(frozen=True)
class ParsedEvent:
    """An event as an endpoint or the tracking pull understood it."""

    event_id: str
    kind: str  # EventKind
    occurred_at: datetime
    subscriber_key: str = ""  # Marketing Cloud's subscriber key: the Salesforce ID
    email: str = ""
    scope: str = ""  # for EventKind.SENDER_OPT_OUT: "business_unit:<MID>", "send_account:<id>"
    reason: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


def receive(platform: str, channel: str, events: Iterable[ParsedEvent]) -> tuple[int, int]:
    """Store the events (in the caller's transaction, or one of their own) and ask a worker
    to apply them after commit. Returns (stored, already known)."""
    now = timezone.now()
    stored = known = 0
    new: list[int] = []
    with transaction.atomic():
        for event in events:
            try:
                with transaction.atomic():  # a savepoint: a duplicate leaves the rest
                    row = PlatformEvent.objects.create(
                        platform=platform,
                        channel=channel,
                        event_id=event.event_id,
                        kind=event.kind,
                        occurred_at=event.occurred_at,
                        received_at=now,
                        subscriber_key=event.subscriber_key,
                        email=event.email.strip().lower(),
                        scope=event.scope,
                        reason=event.reason,
                        payload=event.payload,
                    )
                stored += 1
                new.append(row.pk)
            except IntegrityError:
                known += 1
        if new:
            transaction.on_commit(partial(_wake_worker, new))
    return stored, known


def _wake_worker(new: list[int]) -> None:
    """Ask for the worker unless other events are waiting already: their worker (or the
    message queued for them) is still to look for waiting events, and will find these,
    committed before this check. In a burst this spares the broker a message per request;
    the beat's run catches anything else."""
    others = PlatformEvent.objects.filter(state=EventState.RECEIVED).exclude(pk__in=new)
    if not others.exists():
        background.send(APPLY_TASK)


def apply_pending(limit: int = BATCH, chunk: int = CHUNK) -> int:
    """Apply up to `limit` stored events, oldest first, each exactly once; returns how many
    were applied (in whatever state they ended).

    Events are claimed `chunk` at a time (SKIP LOCKED, so workers share the backlog) and
    applied in one transaction, each in a savepoint of its own: a refused change leaves the
    others, and one commit (and one sealing of the audit chain) serves the chunk."""
    done = 0
    while done < limit:
        with transaction.atomic():
            events = list(
                PlatformEvent.objects.select_for_update(skip_locked=True)
                .filter(state=EventState.RECEIVED)
                .order_by("received_at", "pk")[: min(chunk, limit - done)]
            )
            if not events:
                break
            for event in events:
                _apply_or_set_aside(event)
        done += len(events)
    return done


def _apply_or_set_aside(event: PlatformEvent) -> None:
    try:
        with transaction.atomic():
            apply_event(event)
    except Exception:
        # A defect must not stop every later event behind this one: it is set aside, with
        # the error in the log, for the system team.
        logger.exception("Could not apply %s", event)
        event.state = EventState.FAILED
        event.outcome = "Could not be applied (an error in the app; see its log)."
        event.applied_at = timezone.now()
        event.save(update_fields=["state", "outcome", "applied_at"])


def _contacts_for(event: PlatformEvent) -> list[Contact]:
    """Who the event is about: the subscriber key (a Salesforce ID), else every active
    contact with the address. A merged contact's events go to the survivor."""
    found: list[Contact] = []
    if event.subscriber_key:
        found = list(Contact.objects.filter(salesforce_id=event.subscriber_key))
    if not found and event.email:
        found = list(Contact.objects.filter(email=event.email, inactive_since__isnull=True))
    return [contact.surviving_contact() for contact in found]


def _note(event: PlatformEvent, what: str) -> str:
    reason = f": {event.reason}" if event.reason else ""
    return (
        f"{what} from {event.platform} (event {event.event_id}, "
        f"{timezone.localtime(event.occurred_at):%d %b %Y, %H:%M}){reason}."
    )


def apply_event(event: PlatformEvent) -> None:
    """Apply one event, in the caller's transaction, and record its state."""
    contacts = _contacts_for(event)
    outcomes: list[str] = []
    states: list[str] = []
    if not contacts:
        states.append(EventState.UNMATCHED)
        outcomes.append("No contact has this subscriber key or address.")
    for contact in contacts:
        state, outcome = _apply_to(event, contact)
        states.append(state)
        outcomes.append(f"{contact}: {outcome}" if len(contacts) > 1 else outcome)
    event.contact = contacts[0] if contacts else None
    # Applied if it changed anyone; otherwise what happened to the first.
    event.state = EventState.APPLIED if EventState.APPLIED in states else states[0]
    event.outcome = " ".join(outcomes)
    event.applied_at = timezone.now()
    event.save(update_fields=["contact", "state", "outcome", "applied_at"])


def _apply_to(event: PlatformEvent, contact: Contact) -> tuple[str, str]:
    kind = EventKind(event.kind)
    change: dict[str, Any]
    if kind in GLOBAL_OPT_OUT_KINDS:
        change = {"opt_out": {Channel.EMAIL: True}, "spam_report": kind == EventKind.SPAM_REPORT}
    elif kind == EventKind.SENDER_OPT_OUT:
        change = {"sender_opt_out": {event.scope: True}}
    elif kind == EventKind.HARD_BOUNCE:
        change = {"bounced": True}
    else:
        return _soft_bounce(event, contact)
    return _change(event, contact, kind.label, change)


def _change(
    event: PlatformEvent, contact: Contact, what: str, change: dict[str, Any]
) -> tuple[str, str]:
    try:
        # apply_change is atomic itself: a refusal has written nothing. The contact goes by
        # its id, so it is not read again afterwards.
        entry = apply_change(
            contact=contact.pk,
            actor=None,
            source=Source.EMAIL_PLATFORM,
            note=_note(event, what),
            **change,
        )
    except ChangeRefused as refused:
        nothing = str(refused).startswith("Nothing to change")
        return (EventState.NO_CHANGE if nothing else EventState.REFUSED), str(refused)
    return EventState.APPLIED, f"Applied: audit entry {entry.pk}."


def soft_bounces_in_window(contact: Contact, until: datetime) -> int:
    """The contact's soft bounces in the SOFT_BOUNCE_DAYS up to `until`, each event once.

    Those before the bounce flag last changed are spent: once staff clear Bounced (the
    address corrected), the old address's soft bounces do not count again."""
    since = until - timedelta(days=settings.SOFT_BOUNCE_DAYS)
    last_flag_change = (
        AuditEntry.objects.filter(contact=contact, action=AuditAction.BOUNCE)
        .order_by("-id")
        .values_list("created_at", flat=True)
        .first()
    )
    if last_flag_change is not None:
        since = max(since, last_flag_change)
    return (
        PlatformEvent.objects.filter(
            contact=contact,
            kind=EventKind.SOFT_BOUNCE,
            occurred_at__gt=since,
            occurred_at__lte=until,
        )
        .exclude(state=EventState.RECEIVED)
        .count()
    )


def _soft_bounce(event: PlatformEvent, contact: Contact) -> tuple[str, str]:
    """A soft bounce is retried by the platform; only SOFT_BOUNCE_LIMIT of them within
    SOFT_BOUNCE_DAYS make the address Bounced (docs/design.md, rule 10)."""
    count = soft_bounces_in_window(contact, event.occurred_at) + 1  # this one
    limit = settings.SOFT_BOUNCE_LIMIT
    days = settings.SOFT_BOUNCE_DAYS
    if count >= limit and not contact.email_bounced:
        return _change(
            event,
            contact,
            f"Soft bounce {count} in {days} days (the limit is {limit}): bounced",
            {"bounced": True},
        )
    record(
        AuditAction.SOFT_BOUNCE,
        source=Source.EMAIL_PLATFORM,
        system=event.platform,
        contact_id=contact.pk,
        channels=[Channel.EMAIL],
        note=_note(event, f"Soft bounce {count} of {limit} in {days} days"),
    )
    return EventState.RECORDED, f"Soft bounce {count} of {limit} in {days} days: recorded."
