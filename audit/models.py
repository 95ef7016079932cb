from __future__ import annotations

import pgtrigger
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import models
from django.db.models import Q
from django.utils import timezone

from lib.channels import Channel
from lib.locks import AdvisoryLock


class Source(models.TextChoices):
    """Who or what made a change: staff, or a system the app heard it from."""

    STAFF = "staff", "Staff"
    SALESFORCE = "salesforce", "Salesforce"
    EMAIL_PLATFORM = "email_platform", "Email platform"
    BULK = "bulk", "Bulk change"
    SYSTEM = "system", "System"


class ConsentMethod(models.TextChoices):
    """How a contact asked to be opted back in: part of the evidence an entry carries."""

    PHONE_CALL = "phone_call", "Phone call"
    EMAIL = "email", "Email"
    IN_PERSON = "in_person", "In person"
    WRITTEN_FORM = "written_form", "Written form"


class AuditAction(models.TextChoices):
    OPT_OUT = "opt_out", "Opt-out"
    RE_ENROLMENT = "re_enrolment", "Re-enrolment"
    CATEGORY_CHANGE = "category_change", "Category change"
    BOUNCE = "bounce", "Bounce"
    ESCALATION = "escalation", "Escalation"
    ESCALATION_RESOLVED = "escalation_resolved", "Escalation resolved"
    SYNC_FAILED = "sync_failed", "Sync failure"
    SYNC_RETRY = "sync_retry", "Sync retry"
    ASCEND_FILE = "ascend_file", "Ascend change file"
    BULK = "bulk", "Bulk change"
    # The run's later milestones; only the confirmation (BULK) asks for a manager's review.
    BULK_CANCELLED = "bulk_cancelled", "Bulk change cancelled"
    BULK_FINISHED = "bulk_finished", "Bulk change finished"
    REVIEW = "review", "Review"
    RESUBSCRIBE_REQUEST = "resubscribe_request", "Re-subscribe request"
    RESUBSCRIBE = "resubscribe", "Resubscribed in Marketing Cloud"
    DISCREPANCY_RESOLVED = "discrepancy_resolved", "Discrepancy resolved"
    # What Salesforce, which owns the records, did to them (docs/design.md, "Contacts come
    # from Salesforce"): a new contact's starting state, a deletion, a merge or conversion.
    STARTING_STATE = "starting_state", "Starting state from Salesforce"
    DELETED = "deleted", "Deleted in Salesforce"
    RESTORED = "restored", "Restored in Salesforce"
    MERGED = "merged", "Merged in Salesforce"
    MERGED_AWAY = "merged_away", "Merged into another contact"
    # From email platforms (docs/design.md, "Events from email platforms").
    SPAM_REPORT = "spam_report", "Spam report"
    SENDER_OPT_OUT = "sender_opt_out", "Opted out of one sender"
    SOFT_BOUNCE = "soft_bounce", "Soft bounce"


# Actions a manager must look at again (issue: risky actions to review): re-enrolments,
# bulk runs, and manual overrides (a failed sync replayed by hand, a subscriber set back to
# Active in Marketing Cloud).
RISKY_ACTIONS = [
    AuditAction.RE_ENROLMENT,
    AuditAction.BULK,
    AuditAction.SYNC_RETRY,
    AuditAction.RESUBSCRIBE,
]

# The hash chain: at commit, a deferred trigger seals each new entry with the SHA-256 of the
# previous seal's hash and the entry's canonical text (AUDIT_CANONICAL_SQL, defined in the
# migration as audit_entry_canonical()). verify_audit recomputes the chain.
SEAL_LOCK = AdvisoryLock.AUDIT_SEAL


class AuditEntry(models.Model):
    """One thing that happened, written in the same transaction as the thing itself.

    Append-only: PostgreSQL refuses UPDATE, DELETE and TRUNCATE on this table.
    """

    created_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Kept as written, so the entry reads the same after the account is renamed.
    actor_label = models.CharField(max_length=254)
    source = models.CharField(max_length=20, choices=Source.choices)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    contact = models.ForeignKey(
        "preferences.Contact",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_entries",
    )
    contact_version = models.PositiveIntegerField(null=True, blank=True)
    channels = ArrayField(models.CharField(max_length=16), default=list, blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    note = models.TextField()
    consent = models.ForeignKey(
        "preferences.Consent", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # A review entry points at the entry it reviews.
    reviews = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reviewed_by"
    )
    bulk_run = models.ForeignKey(
        "preferences.BulkRun",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_entries",
    )
    resubscribe_request = models.ForeignKey(
        "preferences.ResubscribeRequest",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_entries",
    )
    # Derived in PostgreSQL from the action, so no writer can forget it (or COPY past it).
    risky = models.GeneratedField(
        expression=Q(action__in=RISKY_ACTIONS),  # type: ignore[arg-type]
        output_field=models.BooleanField(),
        db_persist=True,
    )

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        permissions = [
            ("view_audit_log", "Can review the audit log"),
            ("review_audit_entry", "Can mark risky actions reviewed"),
            ("run_bulk_change", "Can run bulk changes"),
            ("view_reports", "Can see and export reports"),
        ]
        # The log is read newest first under one filter at a time; each filter has an index
        # that yields rows in id order, so keyset pages stay fast deep into the log.
        indexes = [
            models.Index(fields=["contact", "-id"], name="audit_contact_newest"),
            models.Index(fields=["actor", "-id"], name="audit_actor_newest"),
            models.Index(fields=["action", "-id"], name="audit_action_newest"),
            models.Index(fields=["source", "-id"], name="audit_source_newest"),
            models.Index(fields=["created_at"], name="audit_created_at"),
            models.Index(
                fields=["reviews"], condition=Q(reviews__isnull=False), name="audit_reviews"
            ),
            models.Index(
                fields=["bulk_run", "-id"],
                condition=Q(bulk_run__isnull=False),
                name="audit_bulk_run",
            ),
            models.Index(
                fields=["resubscribe_request", "-id"],
                condition=Q(resubscribe_request__isnull=False),
                name="audit_resubscribe_request",
            ),
            GinIndex(OpClass("note", name="gin_trgm_ops"), name="audit_note_trgm"),
        ]
        triggers = [
            pgtrigger.Trigger(
                name="append_only",
                when=pgtrigger.Before,
                operation=pgtrigger.Update | pgtrigger.Delete,
                func="RAISE EXCEPTION 'audit entries are append-only: % refused', TG_OP;",
            ),
            pgtrigger.Trigger(
                name="no_truncate",
                when=pgtrigger.Before,
                operation=pgtrigger.Truncate,
                level=pgtrigger.Statement,
                func="RAISE EXCEPTION 'audit entries are append-only: % refused', TG_OP;",
            ),
            # Sealed at commit, not at insert: the chain lock is then held for an instant
            # and never while the transaction waits for other locks (no deadlocks).
            pgtrigger.Trigger(
                name="seal",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                timing=pgtrigger.Deferred,
                func=f"""
                    PERFORM pg_advisory_xact_lock({SEAL_LOCK:d});
                    INSERT INTO audit_auditseal (entry_id, seq, hash)
                    SELECT NEW.id, COALESCE(last.seq, 0) + 1,
                           encode(sha256(convert_to(
                               COALESCE(last.hash, '') || audit_entry_canonical(NEW), 'UTF8'
                           )), 'hex')
                    FROM (SELECT 1) AS one
                    LEFT JOIN LATERAL (
                        SELECT seq, hash FROM audit_auditseal ORDER BY seq DESC LIMIT 1
                    ) AS last ON true;
                    RETURN NULL;
                """,
            ),
            # Risky entries wait for a manager; a review entry takes its subject off the list.
            pgtrigger.Trigger(
                name="review_queue",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                func="""
                    IF NEW.risky THEN
                        INSERT INTO audit_pendingreview (entry_id) VALUES (NEW.id);
                    END IF;
                    IF NEW.reviews_id IS NOT NULL THEN
                        DELETE FROM audit_pendingreview WHERE entry_id = NEW.reviews_id;
                    END IF;
                    RETURN NULL;
                """,
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_action_display()} by {self.actor_label}"

    def describe_changes(self, names: dict[str, str]) -> list[str]:
        """What changed, in staff words; names maps category keys to names in display order."""
        before, after = self.before, self.after
        if not before or not after:
            return []
        lines = []
        for channel in Channel.values:
            was = before["opted_out"].get(channel, False)
            now = after["opted_out"].get(channel, False)
            if was != now:
                label = Channel(channel).label
                lines.append(f"{label}: opted out" if now else f"{label}: opted back in")
        # A snapshot may hold the opt-outs only (a correction for Ascend, which has no
        # categories): then no category changed.
        added = sorted(set(after.get("categories", [])) - set(before.get("categories", [])))
        removed = sorted(set(before.get("categories", [])) - set(after.get("categories", [])))
        # names is in the categories' display order; keys no longer configured go last.
        order = {key: position for position, key in enumerate(names)}
        added.sort(key=lambda k: order.get(k, len(order)))
        removed.sort(key=lambda k: order.get(k, len(order)))
        if added:
            lines.append("Subscribed: " + ", ".join(names.get(k, k) for k in added))
        if removed:
            lines.append("Unsubscribed: " + ", ".join(names.get(k, k) for k in removed))
        if before.get("bounced") != after.get("bounced"):
            lines.append("Email bounced" if after.get("bounced") else "Bounce cleared")
        if after.get("spam_reported") and not before.get("spam_reported"):
            lines.append("Reported our mail as spam")
        was_for = set(before.get("suppressed_for", []))
        now_for = set(after.get("suppressed_for", []))
        for scope in sorted(now_for - was_for):
            lines.append(f"Opted out of one sender: {scope}")
        for scope in sorted(was_for - now_for):
            lines.append(f"Opted back in to one sender: {scope}")
        return lines


class AuditSeal(models.Model):
    """An entry's place in the hash chain, written by the seal trigger at commit.

    hash = SHA-256(previous seal's hash + audit_entry_canonical(entry)), so altering,
    removing or inserting an entry breaks every later link (manage.py verify_audit).
    """

    entry = models.OneToOneField(
        AuditEntry, primary_key=True, on_delete=models.PROTECT, related_name="seal"
    )
    seq = models.BigIntegerField(unique=True)
    hash = models.CharField(max_length=64)

    class Meta:
        triggers = [
            pgtrigger.Trigger(
                name="append_only",
                when=pgtrigger.Before,
                operation=pgtrigger.Update | pgtrigger.Delete,
                func="RAISE EXCEPTION 'audit seals are append-only: % refused', TG_OP;",
            ),
            pgtrigger.Trigger(
                name="no_truncate",
                when=pgtrigger.Before,
                operation=pgtrigger.Truncate,
                level=pgtrigger.Statement,
                func="RAISE EXCEPTION 'audit seals are append-only: % refused', TG_OP;",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.entry_id} seq {self.seq}"


class PendingReview(models.Model):
    """A risky entry no manager has reviewed yet; kept by the review_queue trigger."""

    entry = models.OneToOneField(
        AuditEntry, primary_key=True, on_delete=models.DO_NOTHING, related_name="pending_review"
    )

    def __str__(self) -> str:
        return f"#{self.entry_id} awaits review"
