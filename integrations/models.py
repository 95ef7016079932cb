"""What the nightly reconciliation finds: the runs, and each discrepancy between the app and
what Salesforce, Ascend or the app's own data hold (docs/design.md, "Reconciliation")."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class DiscrepancyKind(models.TextChoices):
    DIFFERS = "differs", "Values differ"
    UNKNOWN_TO_US = "unknown_to_us", "Contact unknown to the app"
    UNKNOWN_TO_THEM = "unknown_to_them", "Contact missing there"
    DUPLICATE_EMAIL = "duplicate_email", "Email shared by several contacts"


class Resolution(models.TextChoices):
    PUSHED = "pushed", "App's values pushed"
    ACCEPTED = "accepted", "System's values accepted"
    DISMISSED = "dismissed", "Dismissed with a note"
    DISAPPEARED = "disappeared", "Disappeared by itself"


APP = "app"  # the system of a discrepancy within the app's own data (a shared email)


class ReconcileRun(models.Model):
    """One system compared with the app, one night (or by hand)."""

    system = models.CharField(max_length=20)  # a sync target's name, or "app"
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # The moment the external data describes (Bulk API job created, Ascend file exported).
    snapshot_at = models.DateTimeField(null=True, blank=True)
    compared = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)  # changes in flight: not judged tonight
    found = models.JSONField(default=dict, blank=True)  # kind -> discrepancies seen
    opened = models.PositiveIntegerField(default=0)
    closed = models.PositiveIntegerField(default=0)  # disappeared since the last run
    detail = models.TextField(blank=True)  # what was read (a file name), or why it failed
    failed = models.BooleanField(default=False)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["system", "-started_at"], name="reconcile_run_newest")]

    def __str__(self) -> str:
        return f"Reconciliation of {self.system} at {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def total_found(self) -> int:
        return sum(self.found.values())


class DiscrepancyQuerySet(models.QuerySet["Discrepancy"]):
    def open(self) -> DiscrepancyQuerySet:
        return self.filter(resolved_at__isnull=True)


class Discrepancy(models.Model):
    """Something the app and another system disagree on, from first seen until resolved."""

    system = models.CharField(max_length=20)
    kind = models.CharField(max_length=20, choices=DiscrepancyKind.choices)
    # What identifies it there: a Salesforce Id, an Ascend ID, a shared email address.
    key = models.CharField(max_length=254)
    contact = models.ForeignKey(
        "preferences.Contact",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="discrepancies",
    )
    # {"app": {...}, "remote": {...}, "fields": [...]} or, for a shared email, the contacts.
    details = models.JSONField(default=dict)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    run = models.ForeignKey(ReconcileRun, on_delete=models.PROTECT, related_name="+")
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=12, choices=Resolution.choices, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolution_entry = models.ForeignKey(
        "audit.AuditEntry", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    objects = DiscrepancyQuerySet.as_manager()

    class Meta:
        ordering = ["-last_seen", "pk"]
        permissions = [("resolve_discrepancy", "Can see and resolve discrepancies")]
        constraints = [
            # A nightly run updates the one open row of what it sees again.
            models.UniqueConstraint(
                fields=["system", "kind", "key"],
                condition=Q(resolved_at__isnull=True),
                name="one_open_discrepancy",
            )
        ]
        indexes = [
            models.Index(
                fields=["system", "kind", "-last_seen"],
                condition=Q(resolved_at__isnull=True),
                name="discrepancy_open",
            ),
            models.Index(
                fields=["contact"],
                condition=Q(resolved_at__isnull=True),
                name="discrepancy_open_contact",
            ),
        ]
        verbose_name_plural = "discrepancies"

    def __str__(self) -> str:
        return f"{self.get_kind_display()} in {self.system}: {self.key}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class ContactLoad(models.Model):
    """One run of the initial load from Salesforce (manage.py load_contacts; docs/design.md,
    "Initial load").

    ``progress`` holds, per Salesforce object in load order, where its Bulk API 2.0 query
    job stands: {"job_id", "locator" (the next page's; empty for the first), "pages",
    "rows", "total" (records the job found), "finished"}. Each page's contacts and the
    progress past it are committed together, so a run killed at any instant carries on from
    the page it was reading, and never reads a committed page again.
    """

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # Left unfinished for a fresh run (--restart): never resumed.
    abandoned_at = models.DateTimeField(null=True, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    created = models.PositiveIntegerField(default=0)  # contacts the app did not have
    updated = models.PositiveIntegerField(default=0)  # known contacts whose identity changed
    unchanged = models.PositiveIntegerField(default=0)  # known contacts read as they were
    with_opt_outs = models.PositiveIntegerField(default=0)  # created opted out of a channel
    # Created without their Ascend ID (or kept their old one): another contact has it.
    ascend_collisions = models.PositiveIntegerField(default=0)
    api_calls = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0.0)  # working time, over every process that ran it

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        state = "finished" if self.finished_at else "abandoned" if self.abandoned_at else "open"
        return f"Contact load of {self.started_at:%Y-%m-%d %H:%M} ({state})"

    @property
    def pages(self) -> int:
        return sum(int(entry.get("pages", 0)) for entry in self.progress.values())

    @property
    def rows(self) -> int:
        return sum(int(entry.get("rows", 0)) for entry in self.progress.values())
