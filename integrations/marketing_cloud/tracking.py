"""The pull of Marketing Cloud's tracking events for commercial sends (docs/design.md,
"Events from email platforms").

Event notifications cover transactional sends only; what commercial sends cause (a
subscriber unsubscribing in a business unit, a bounce) is read here, every
MARKETING_CLOUD_TRACKING_SECONDS: ``UnsubEvent`` and ``BounceEvent`` in every active business
unit, each from its own watermark (the latest EventDate stored), and handed to the intake,
which stores them durably, once per event id, and has a worker apply them.

- An UnsubEvent is a sender-level opt-out for that business unit only (rule 9): scope
  ``business_unit:<MID>``, never the global opt-out.
- A BounceEvent in the "Hard bounce" category makes the address Bounced (rule 10); any other
  category (soft, block, technical, unknown) is a soft bounce, which only counts towards
  SOFT_BOUNCE_LIMIT.

The event id is built from what identifies the event (object, MID, SendID, SubscriberKey,
EventDate), so reading an event again is a duplicate the intake ignores. That is what makes
the watermark safe to move late: each page is stored in a transaction of its own, and the
watermark moves, in the same transaction as the last page, only once the whole read is
stored (Marketing Cloud does not promise the pages in EventDate order). A read that fails
half-way leaves the watermark where it was; the next pull reads those events again, stores
what it had not, and catches up. Each read starts a second before the watermark, so events
in the same second as the last one are not missed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.base import ConnectorError
from integrations.marketing_cloud.client import TRACKING_OBJECTS, MarketingCloudClient
from preferences.events import intake
from preferences.events.intake import ParsedEvent
from preferences.models import BusinessUnit, EventKind, SyncWatermark

logger = logging.getLogger(__name__)

PLATFORM = "marketing_cloud"
CHANNEL = "tracking"
WATERMARK = "mc-tracking:{object_type}:{mid}"
# Re-read the last second: EventDate has milliseconds at best, and duplicates are harmless.
OVERLAP = timedelta(seconds=1)
HARD_BOUNCE_CATEGORIES = frozenset({"hard bounce", "hard"})


@dataclass
class PullOutcome:
    """What one pull did: events stored, events already known, reads that failed."""

    stored: int = 0
    known: int = 0
    failed: list[str] = field(default_factory=list)


def pull_tracking_events() -> PullOutcome:
    """Read new UnsubEvents and BounceEvents in every active business unit and store them.
    A read that fails is logged and left for the next pull; the others go on."""
    outcome = PullOutcome()
    if not settings.MARKETING_CLOUD_ENABLED:
        return outcome
    mids = list(
        BusinessUnit.objects.filter(is_active=True)
        .exclude(mid="")
        .order_by("position", "mid")
        .values_list("mid", flat=True)
    )
    if not mids:
        return outcome
    with MarketingCloudClient() as client:
        for mid in mids:
            for object_type in TRACKING_OBJECTS:
                try:
                    _pull(client, object_type, mid, outcome)
                except ConnectorError as exc:
                    level = logging.WARNING if exc.transient else logging.ERROR
                    logger.log(
                        level,
                        "Marketing Cloud %s in business unit %s not read (the next pull "
                        "tries again): %s",
                        object_type,
                        mid,
                        exc,
                    )
                    outcome.failed.append(f"{object_type}:{mid}")
    if outcome.stored:
        logger.info("Stored %d Marketing Cloud tracking events", outcome.stored)
    return outcome


def _pull(client: MarketingCloudClient, object_type: str, mid: str, outcome: PullOutcome) -> None:
    """One object in one business unit, from its watermark; counts what it stores in
    `outcome` page by page (a later page may fail)."""
    name = WATERMARK.format(object_type=object_type, mid=mid)
    start = timezone.now() - timedelta(days=settings.MARKETING_CLOUD_TRACKING_START_DAYS)
    watermark, _ = SyncWatermark.objects.get_or_create(name=name, defaults={"value": start})
    latest = watermark.value
    for page in client.tracking_pages(object_type, mid, watermark.value - OVERLAP):
        events = [to_event(object_type, mid, found) for found in page.events]
        latest = max([latest, *(event.occurred_at for event in events)])
        done = not page.more  # the whole read is stored: move the watermark with it
        if not events and not (done and latest > watermark.value):
            continue
        with transaction.atomic():
            new, old = intake.receive(PLATFORM, CHANNEL, events) if events else (0, 0)
            if done and latest > watermark.value:
                SyncWatermark.objects.filter(pk=watermark.pk).update(value=latest)
        outcome.stored += new
        outcome.known += old


def to_event(object_type: str, mid: str, found: dict[str, Any]) -> ParsedEvent:
    """A tracking event as the intake takes it."""
    occurred_at: datetime = found["EventDate"]
    key = str(found.get("SubscriberKey", ""))
    event_id = ":".join(
        (object_type, mid, str(found.get("SendID", "")), key, occurred_at.isoformat())
    )
    payload = {
        name: (value.isoformat() if isinstance(value, datetime) else value)
        for name, value in found.items()
    }
    if object_type == "UnsubEvent":
        # An unsubscribe from a business unit's mail is that sender only (rule 9).
        return ParsedEvent(
            event_id=event_id,
            kind=EventKind.SENDER_OPT_OUT,
            occurred_at=occurred_at,
            subscriber_key=key,
            email=str(found.get("EmailAddress", "")),
            scope=f"business_unit:{mid}",
            reason=f"Unsubscribed in business unit {mid}",
            payload=payload,
        )
    category = str(found.get("BounceCategory", "")).strip()
    hard = category.lower() in HARD_BOUNCE_CATEGORIES
    details = " ".join(
        part for part in (str(found.get("SMTPCode", "")), str(found.get("SMTPReason", ""))) if part
    )
    reason = category or "Bounce"
    return ParsedEvent(
        event_id=event_id,
        kind=EventKind.HARD_BOUNCE if hard else EventKind.SOFT_BOUNCE,
        occurred_at=occurred_at,
        subscriber_key=key,
        email=str(found.get("EmailAddress", "")),
        reason=f"{reason} ({details})" if details else reason,
        payload=payload,
    )
