"""Marking a risky action reviewed: the review is itself an audit entry."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, PendingReview
from preferences.models import Source

DEFAULT_REVIEW_NOTE = "Reviewed"


class ReviewRefused(Exception):
    """The entry cannot be reviewed; nothing was written. The message is for staff."""


class AlreadyReviewed(ReviewRefused):
    pass


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
        return AuditEntry.objects.create(
            actor=actor,
            actor_label=actor.get_username(),
            source=Source.STAFF,
            action=AuditAction.REVIEW,
            contact_id=entry.contact_id,
            channels=entry.channels,
            note=comment or DEFAULT_REVIEW_NOTE,
            reviews=entry,
        )
