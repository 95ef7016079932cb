"""Writing the audit log, and marking a risky action reviewed (itself an audit entry).

record() is the one writer: every feature hands it what happened and it derives who did it
the same way each time. audit imports no feature; a feature passes its own rows as links.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models, transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, PendingReview, Source

DEFAULT_REVIEW_NOTE = "Reviewed"
# The relations an entry may carry besides its contact: the consent, bulk run, re-subscribe
# request or reviewed entry it is about.
LINKS = frozenset({"contact", "consent", "bulk_run", "resubscribe_request", "reviews"})


def record(
    action: str,
    *,
    note: str,
    actor: User | None = None,
    system: str = "",
    source: str | None = None,
    contact_id: int | None = None,
    contact_version: int | None = None,
    channels: Iterable[str] = (),
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    **links: models.Model | None,
) -> AuditEntry:
    """Write one entry, in the caller's transaction (it commits or rolls back with the thing
    it records).

    Who did it reads as the staff member's username, else `system` (the part of the app that
    acted, such as "Ascend export"), else the source's label. The source defaults to staff
    when there is an actor, to the system otherwise.
    """
    if unknown := set(links) - LINKS:
        raise TypeError(f"not an audit entry link: {', '.join(sorted(unknown))}")
    if source is None:
        source = Source.STAFF if actor is not None else Source.SYSTEM
    label = actor.get_username() if actor is not None else system or Source(source).label
    extra: dict[str, Any] = dict(links)
    if contact_id is not None:
        extra["contact_id"] = contact_id
    return AuditEntry.objects.create(
        created_at=created_at or timezone.now(),
        actor=actor,
        actor_label=label,
        source=source,
        action=action,
        contact_version=contact_version,
        channels=list(channels),
        before=before or {},
        after=after or {},
        note=note,
        **extra,
    )


def record_many(
    action: str, *, source: str, system: str = "", entries: Iterable[dict[str, Any]]
) -> int:
    """Write one entry per dict (its contact_id, note and the other fields record() takes,
    but no actor), in one INSERT per thousand: for a load of contacts the app has just learnt
    of, where an INSERT each would take longer than the load itself."""
    label = system or Source(source).label
    now = timezone.now()
    rows = [
        AuditEntry(
            created_at=entry.get("created_at") or now,
            actor_label=label,
            source=source,
            action=action,
            contact_id=entry["contact_id"],
            contact_version=entry.get("contact_version"),
            channels=list(entry.get("channels", ())),
            before=entry.get("before") or {},
            after=entry.get("after") or {},
            note=entry["note"],
        )
        for entry in entries
    ]
    AuditEntry.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


class ReviewRefused(Exception):
    """The entry cannot be reviewed; nothing was written. The message is for staff."""


class AlreadyReviewed(ReviewRefused):
    pass


def may_review_own(actor: User) -> bool:
    """A manager named as the one manager of their office (SELF_REVIEW_ALLOWED_FOR)."""
    return actor.get_username().lower() in settings.SELF_REVIEW_ALLOWED_FOR


def review_entry(*, entry_id: int, actor: User, comment: str = "") -> AuditEntry:
    """Record that a manager looked at a risky entry, with an optional comment.

    The review entry takes its subject off the review queue (the review_queue trigger
    deletes the PendingReview row in the same transaction).
    """
    comment = comment.strip()
    if "\x00" in comment:
        raise ReviewRefused("The comment contains a character that cannot be stored (NUL).")
    with transaction.atomic():
        # Locking the queue row makes two managers reviewing at once take turns: the second
        # finds the row gone when the first commits, and is refused below.
        pending = PendingReview.objects.select_for_update().filter(entry_id=entry_id).first()
        entry = AuditEntry.objects.get(pk=entry_id)
        if pending is None:
            if not entry.risky:
                raise ReviewRefused(
                    f"{entry.get_action_display()} entries are not risky actions; only "
                    "re-enrolments, bulk changes and manual overrides are reviewed."
                )
            earlier = entry.reviewed_by.order_by("id").first()
            raise AlreadyReviewed(
                "This action was already reviewed"
                + (
                    f" by {earlier.actor_label} on "
                    f"{timezone.localtime(earlier.created_at):%d %b %Y, %H:%M}"
                    if earlier
                    else ""
                )
                + ". Nothing was changed."
            )
        note = comment or DEFAULT_REVIEW_NOTE
        if entry.actor_id is not None and entry.actor_id == actor.pk:
            # Four eyes: a risky action is looked at by someone other than who did it,
            # except for a manager named as the one manager of their office.
            if not may_review_own(actor):
                raise ReviewRefused(
                    "You made this change: someone else must review it. Nothing was changed."
                )
            note += (
                "\n(Reviewed by the person who made the change: the one-manager office "
                "exception, SELF_REVIEW_ALLOWED_FOR.)"
            )
        return record(
            AuditAction.REVIEW,
            actor=actor,
            contact_id=entry.contact_id,
            channels=entry.channels,
            note=note,
            reviews=entry,
        )
