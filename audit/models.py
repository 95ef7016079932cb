from __future__ import annotations

import pgtrigger
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from preferences.models import Channel, Source


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

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        permissions = [("view_audit_log", "Can review the audit log")]
        indexes = [models.Index(fields=["contact", "-id"], name="audit_contact_newest")]
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
        added = sorted(set(after["categories"]) - set(before["categories"]))
        removed = sorted(set(before["categories"]) - set(after["categories"]))
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
        return lines
