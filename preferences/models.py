from __future__ import annotations

import re

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import models
from django.db.models import Exists, OuterRef, Q, Value
from django.db.models.functions import Concat, Lower

from audit.models import ConsentMethod, Source
from lib.channels import Channel
from lib.salesforce_ids import TYPED_SALESFORCE_ID, salesforce_id_18

SEARCH_LIMIT = 50


class ContactQuerySet(models.QuerySet["Contact"]):
    def search(self, query: str) -> ContactQuerySet:
        """Contacts matching what staff type: an email, an ID, a phone number or a name.

        Each kind of lookup has its own index (see Contact.Meta.indexes).
        """
        query = " ".join(query.split())
        if not query:
            return self.none()
        if "@" in query:
            return self.filter(email__startswith=query.lower())
        if TYPED_SALESFORCE_ID.match(query):
            return self.filter(salesforce_id=salesforce_id_18(query))
        digits = re.sub(r"\D", "", query)
        if digits and not re.search(r"[^\d\s()+.-]", query):
            return self.filter(
                Q(ascend_id=query) | Q(phone_digits=digits) | Q(phone_digits=f"1{digits}")
            )
        words = query.lower().split()
        if max(len(word) for word in words) < 3:
            return self.none()
        if len(words) == 1:
            # One word may be a name fragment or the start of an email address.
            return self.filter(Q(search_name__contains=words[0]) | Q(email__startswith=words[0]))
        result = self
        for word in words:
            result = result.filter(search_name__contains=word)
        return result

    def opted_out(self, channel: str | None = None) -> ContactQuerySet:
        prefs = ChannelPreference.objects.filter(contact=OuterRef("pk"), opted_out=True)
        if channel is not None:
            prefs = prefs.filter(channel=channel)
        return self.filter(Exists(prefs))

    def suppressed(self) -> ContactQuerySet:
        """On the global email suppression list: opted out of email, bounced or reported
        our mail as spam (docs/design.md, rule 10)."""
        opted_out = ChannelPreference.objects.filter(
            contact=OuterRef("pk"), channel=Channel.EMAIL, opted_out=True
        )
        return self.filter(
            Q(Exists(opted_out)) | Q(email_bounced=True) | Q(spam_reported_at__isnull=False)
        )


class ContactKind(models.TextChoices):
    """The Salesforce object a contact is (docs/design.md, "Contacts come from Salesforce"):
    the same rules for each, through that object's opt-out fields."""

    CONTACT = "contact", "Contact"
    LEAD = "lead", "Lead"
    PERSON_ACCOUNT = "person_account", "Person Account"


class Contact(models.Model):
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    # Stored lower-cased (see save()); the pattern-ops index serves exact and prefix lookups.
    email = models.CharField(max_length=254, blank=True)
    phone = models.CharField(max_length=32, blank=True)
    # Database defaults: the load and the demo seed write contacts with COPY.
    kind = models.CharField(
        max_length=16, choices=ContactKind.choices, db_default=ContactKind.CONTACT
    )
    # The Contact's, Lead's or (Person) Account's Id.
    salesforce_id = models.CharField("Salesforce ID", max_length=18, unique=True)
    # A Person Account's contact, which its Tasks name as WhoId; empty for the other kinds.
    person_contact_id = models.CharField(max_length=18, blank=True, db_default="")
    # Empty when the record has none (Leads, mostly): such a contact is not sent to Ascend.
    ascend_id = models.CharField("Ascend ID", max_length=20, blank=True)
    # Identity (names, email, phone, Ascend ID) as last read from Salesforce, which owns it.
    identity_read_at = models.DateTimeField(null=True, blank=True)
    # Deleted in Salesforce (or merged away): kept, with its history, but no longer changed.
    inactive_since = models.DateTimeField(null=True, blank=True)
    # The contact Salesforce merged this one into (or a converted Lead's Contact).
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="merged_contacts"
    )
    country = models.CharField(max_length=2, blank=True, help_text="ISO 3166 code")
    email_bounced = models.BooleanField(default=False)
    email_bounced_at = models.DateTimeField(null=True, blank=True)
    # Reported our mail as spam (docs/design.md, "Events from email platforms"): kept for
    # good, and one of the reasons a contact is on the global suppression list.
    spam_reported_at = models.DateTimeField(null=True, blank=True)
    # Bumped by every preference change: stale forms are detected with it, and each sync
    # target records the version it has received.
    version = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    search_name = models.GeneratedField(
        expression=Lower(Concat("first_name", Value(" "), "last_name")),
        output_field=models.CharField(max_length=201),
        db_persist=True,
    )
    phone_digits = models.GeneratedField(
        expression=models.Func(
            "phone", Value(r"\D"), Value(""), Value("g"), function="regexp_replace"
        ),
        output_field=models.CharField(max_length=32),
        db_persist=True,
    )

    objects = ContactQuerySet.as_manager()

    class Meta:
        permissions = [
            ("change_preferences", "Can change a contact's communication preferences"),
            ("resolve_escalation", "Can resolve escalated requests"),
            ("view_suppression_list", "Can see and export the global suppression list"),
        ]
        indexes = [
            models.Index(
                OpClass("email", name="varchar_pattern_ops"), name="contact_email_pattern"
            ),
            GinIndex(OpClass("search_name", name="gin_trgm_ops"), name="contact_name_trgm"),
            models.Index(fields=["phone_digits"], name="contact_phone_digits"),
            models.Index(fields=["country"], name="contact_country"),
            # The suppression list filtered to one reason, page by page in id order: each
            # reason is a small part of a million contacts (docs/design.md, rule 10).
            models.Index(fields=["id"], condition=Q(email_bounced=True), name="contact_bounced"),
            models.Index(
                fields=["id"], condition=Q(spam_reported_at__isnull=False), name="contact_spam"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["ascend_id"], condition=~Q(ascend_id=""), name="unique_ascend_id"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name}".strip() or self.salesforce_id

    def save(self, *args: object, **kwargs: object) -> None:
        self.email = self.email.strip().lower()
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return str(self)

    @property
    def is_active(self) -> bool:
        return self.inactive_since is None

    def surviving_contact(self) -> Contact:
        """The contact this one was merged into, following merges of merges."""
        found = self
        seen = {found.pk}
        while found.merged_into_id is not None and found.merged_into_id not in seen:
            seen.add(found.merged_into_id)
            found = Contact.objects.get(pk=found.merged_into_id)
        return found

    def history_ids(self) -> list[int]:
        """This contact and every contact merged into it, however deep: its history is
        theirs too (audit entries are never rewritten, so a merge moves them by reference)."""
        ids = [self.pk]
        frontier = [self.pk]
        while frontier:
            frontier = list(
                Contact.objects.filter(merged_into__in=frontier).values_list("pk", flat=True)
            )
            ids += frontier
        return ids


class ChannelPreference(models.Model):
    """A contact's opt-out on one channel, with who set it, when and why (for the banner).

    No row means the contact never opted out of that channel.
    """

    contact = models.ForeignKey(
        Contact, on_delete=models.PROTECT, related_name="channel_preferences"
    )
    channel = models.CharField(max_length=16, choices=Channel.choices)
    opted_out = models.BooleanField(default=False)
    changed_at = models.DateTimeField()
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    source = models.CharField(max_length=20, choices=Source.choices)
    note = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["contact", "channel"], name="one_preference_per_channel"
            )
        ]

    def __str__(self) -> str:
        state = "opted out" if self.opted_out else "opted in"
        return f"{self.contact}: {self.get_channel_display()} {state}"

    @property
    def changed_by_label(self) -> str:
        if self.changed_by is not None:
            return self.changed_by.get_username()
        return self.get_source_display()


class EmailCategory(models.Model):
    """An email category (newsletter, events, ...) and the Salesforce field it maps to.

    Categories are data, edited in the admin (docs/design.md, rule 2).
    """

    key = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    salesforce_field = models.CharField(
        max_length=80, help_text="API name of the Contact checkbox, e.g. Newsletter__c"
    )
    position = models.PositiveSmallIntegerField(default=0)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["position", "name"]
        verbose_name_plural = "email categories"

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    """The contact receives email in this category. No row means not subscribed."""

    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="subscriptions")
    category = models.ForeignKey(EmailCategory, on_delete=models.PROTECT, related_name="+")
    subscribed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["contact", "category"], name="one_subscription")
        ]

    def __str__(self) -> str:
        return f"{self.contact} → {self.category}"


class Consent(models.Model):
    """Evidence that the contact asked to be re-enrolled on a channel (docs/design.md, rule 4)."""

    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="consents")
    channels = ArrayField(models.CharField(max_length=16, choices=Channel.choices))
    method = models.CharField("how the contact asked", max_length=20, choices=ConsentMethod.choices)
    obtained_at = models.DateTimeField("when the contact asked")
    attested = models.BooleanField()
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(attested=True), name="consent_is_attested")
        ]

    def __str__(self) -> str:
        return f"{self.get_method_display()} on {self.obtained_at:%Y-%m-%d %H:%M}"


class EscalationQuerySet(models.QuerySet["Escalation"]):
    def open(self) -> EscalationQuerySet:
        return self.filter(resolved_at__isnull=True)


class Escalation(models.Model):
    """A request a specialist handed to a manager instead of deciding (docs/design.md, rule 12)."""

    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="escalations")
    raised_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    note = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolution_note = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    objects = EscalationQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=Q(resolved_at__isnull=True),
                name="open_escalations",
            )
        ]

    def __str__(self) -> str:
        return f"Escalation for {self.contact}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class SyncStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SYNCED = "synced", "Synced"
    FAILED = "failed", "Failed"


class ContactSync(models.Model):
    """How far one target has received a contact's state (state-based sync).

    The target is behind while synced_version < contact.version; the push sends the
    contact's current state, so a repeat is harmless. A worker claims rows by setting
    claimed_until; a claim that outlives its lease (the worker died) is simply taken again.
    """

    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="syncs")
    # A registered sync target's name (integrations.core): the registry, not a list of
    # choices here, says which targets exist.
    target = models.CharField(max_length=20)
    synced_version = models.PositiveIntegerField(default=0)
    # For a target that carries each change's note (Salesforce's Tasks): the version through
    # which it holds them. Behind synced_version when a note failed where the values did not.
    notes_version = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=SyncStatus.choices, default=SyncStatus.PENDING)
    last_error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    claim = models.UUIDField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    # Since when a push whose answer never came (a timeout, a reset) may still land in the
    # target, after anything sent since; once it can no longer run, the target's values
    # are read back and pushed again if they differ (docs/design.md, "Sent is not held").
    uncertain_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["contact", "target"], name="one_sync_per_target")
        ]
        indexes = [
            # The sweeper and the sync problems page only look at what is not synced.
            models.Index(
                fields=["target", "status", "updated_at"],
                condition=~Q(status="synced"),
                name="sync_behind",
            ),
            models.Index(
                fields=["target", "uncertain_since"],
                condition=Q(uncertain_since__isnull=False),
                name="sync_uncertain",
            ),
        ]
        permissions = [("manage_sync", "Can see sync problems, retry them and list Ascend runs")]

    def __str__(self) -> str:
        return f"{self.contact} → {self.target}: {self.get_status_display()}"


class SyncWatermark(models.Model):
    """How far an inbound feed has been read (e.g. Salesforce SystemModstamp)."""

    name = models.CharField(max_length=50, unique=True)
    value = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.value:%Y-%m-%d %H:%M:%S}"


class AscendRun(models.Model):
    """One nightly change file for Ascend: the audit entries (after_id, up_to_id] it covers.

    Re-running a run writes the same window again, so the file is byte-identical; the next
    run starts where the last delivered one ended, so no change falls between two nights.
    """

    after_id = models.BigIntegerField()
    up_to_id = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    rows = models.PositiveIntegerField(default=0)
    checksum = models.CharField("SHA-256", max_length=64, blank=True)
    filename = models.CharField(max_length=200, blank=True)
    destination = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-up_to_id"]
        constraints = [
            models.UniqueConstraint(fields=["after_id", "up_to_id"], name="one_run_per_window")
        ]

    def __str__(self) -> str:
        return f"Ascend run ({self.after_id}, {self.up_to_id}]"


class BulkRunState(models.TextChoices):
    DRAFT = "draft", "Draft"  # criteria chosen, preview shown, not confirmed
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    CANCELLED = "cancelled", "Cancelled"
    DONE = "done", "Done"


class BulkRun(models.Model):
    """A manager's bulk opt-out (docs/design.md, rule 11): contacts chosen by filter or
    upload, one note.

    On confirmation the matching contacts are fixed as BulkItems; a worker applies them one
    by one through apply_change, marking each item in the same transaction as its change, so
    a crash and a restart never apply a contact twice.
    """

    channel = models.CharField(max_length=16, choices=Channel.choices)
    # What selected the contacts: {"country": ..., "category": ..., "opted_out": ...} or
    # {"upload": filename}; shown with the run.
    criteria = models.JSONField(default=dict, blank=True)
    # Upload rows that could not be used: [{"row": n, "value": ..., "reason": ...}].
    problems = models.JSONField(default=list, blank=True)
    note = models.TextField(blank=True)
    state = models.CharField(
        max_length=10, choices=BulkRunState.choices, default=BulkRunState.DRAFT
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # The worker holds the run while claimed_until is in the future; a run whose worker
    # died is taken again once the lease runs out.
    claimed_until = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Bulk run {self.pk} ({self.get_state_display()})"


class BulkItemState(models.TextChoices):
    PENDING = "pending", "Pending"
    APPLIED = "applied", "Applied"
    SKIPPED = "skipped", "Skipped"  # nothing to change, or refused by a rule


class BulkItem(models.Model):
    run = models.ForeignKey(BulkRun, on_delete=models.PROTECT, related_name="items")
    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(
        max_length=10, choices=BulkItemState.choices, default=BulkItemState.PENDING
    )
    detail = models.TextField(blank=True)
    audit_entry = models.OneToOneField(
        "audit.AuditEntry", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "contact"], name="one_item_per_contact")
        ]
        indexes = [
            models.Index(
                fields=["run", "id"],
                condition=Q(state="pending"),
                name="bulk_items_pending",
            )
        ]

    def __str__(self) -> str:
        return f"{self.run}: {self.contact_id} {self.state}"


class BusinessUnit(models.Model):
    """A Marketing Cloud business unit a contact may receive mail from (data, in the admin).

    The parent account and its children each keep their own subscriber status.
    """

    mid = models.CharField("MID (Client ID)", max_length=20, unique=True)
    name = models.CharField(max_length=100)
    is_parent = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name


class SubscriberStatusValue(models.TextChoices):
    # The "shirt" colours staff know from Marketing Cloud's subscriber screen
    # (docs/design.md, rule 8).
    ACTIVE = "active", "Active (green)"
    BOUNCED = "bounced", "Bounced (yellow)"
    HELD = "held", "Held (gray)"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed (red)"
    NOT_FOUND = "not_found", "Not found"


# Statuses that need the system team to resubscribe the contact (docs/design.md, rule 8).
NEEDS_RESUBSCRIBE = [
    SubscriberStatusValue.BOUNCED,
    SubscriberStatusValue.HELD,
    SubscriberStatusValue.UNSUBSCRIBED,
]


class SubscriberStatus(models.Model):
    """The last status read from Marketing Cloud for a contact in one business unit."""

    contact = models.ForeignKey(
        Contact, on_delete=models.PROTECT, related_name="subscriber_statuses"
    )
    business_unit = models.ForeignKey(BusinessUnit, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=SubscriberStatusValue.choices)
    read_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["contact", "business_unit"], name="one_status_per_business_unit"
            )
        ]
        verbose_name_plural = "subscriber statuses"

    def __str__(self) -> str:
        return f"{self.contact} in {self.business_unit}: {self.get_status_display()}"


class ResubscribeState(models.TextChoices):
    OPEN = "open", "Open"
    IN_PROGRESS = "in_progress", "In progress"
    DONE = "done", "Done"
    REJECTED = "rejected", "Rejected"
    # Closed without work: the contact opted out again before the request was worked.
    CLOSED = "closed", "Closed (opted out again)"


RESUBSCRIBE_OPEN_STATES = [ResubscribeState.OPEN, ResubscribeState.IN_PROGRESS]


class ResubscribeRequest(models.Model):
    """A re-enrolled contact who is not Active in a business unit (docs/design.md, rule 8),
    for the queue."""

    contact = models.ForeignKey(
        Contact, on_delete=models.PROTECT, related_name="resubscribe_requests"
    )
    business_unit = models.ForeignKey(BusinessUnit, on_delete=models.PROTECT, related_name="+")
    status_seen = models.CharField(max_length=16, choices=SubscriberStatusValue.choices)
    state = models.CharField(
        max_length=12, choices=ResubscribeState.choices, default=ResubscribeState.OPEN
    )
    # Who re-enrolled the contact, and the evidence.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField()
    re_enrolment = models.ForeignKey("audit.AuditEntry", on_delete=models.PROTECT, related_name="+")
    consent = models.ForeignKey(
        Consent, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    urgent = models.BooleanField(default=False)
    urgent_reason = models.TextField(blank=True)
    worked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    outcome = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [("work_resubscribe_queue", "Can work the re-subscribe request queue")]
        constraints = [
            # A repeated lookup (retry, second worker) must not open a second request.
            models.UniqueConstraint(
                fields=["contact", "business_unit"],
                condition=Q(state__in=RESUBSCRIBE_OPEN_STATES),
                name="one_open_request_per_business_unit",
            )
        ]
        indexes = [
            models.Index(
                fields=["-urgent", "requested_at"],
                condition=Q(state__in=RESUBSCRIBE_OPEN_STATES),
                name="resubscribe_queue",
            )
        ]

    def __str__(self) -> str:
        return f"Re-subscribe {self.contact} in {self.business_unit} ({self.get_state_display()})"

    @property
    def is_open(self) -> bool:
        return self.state in RESUBSCRIBE_OPEN_STATES


class EventKind(models.TextChoices):
    """What an email platform tells us about a person (docs/design.md, "Events from email
    platforms")."""

    UNSUBSCRIBE = "unsubscribe", "Unsubscribed from all mail"
    SPAM_REPORT = "spam_report", "Spam report"
    GROUP_OPT_OUT = "group_opt_out", "Group opt-out"
    CLIENT_OPT_OUT = "client_opt_out", "Client opt-out"
    # From one sender only: a business unit, or a send account (a user-level opt-out).
    SENDER_OPT_OUT = "sender_opt_out", "Opted out of one sender"
    HARD_BOUNCE = "hard_bounce", "Hard bounce"
    SOFT_BOUNCE = "soft_bounce", "Soft bounce"


# The kinds that opt the person out of email everywhere.
GLOBAL_OPT_OUT_KINDS = (
    EventKind.UNSUBSCRIBE,
    EventKind.SPAM_REPORT,
    EventKind.GROUP_OPT_OUT,
    EventKind.CLIENT_OPT_OUT,
)


class EventState(models.TextChoices):
    RECEIVED = "received", "Received, not applied yet"
    APPLIED = "applied", "Applied"
    NO_CHANGE = "no_change", "Nothing to change"
    RECORDED = "recorded", "Recorded (a soft bounce below the limit)"
    UNMATCHED = "unmatched", "No contact matches"
    REFUSED = "refused", "Refused"
    FAILED = "failed", "Failed: an error in the app"


class PlatformEvent(models.Model):
    """One event from an email platform, stored as received before it is answered, then
    applied once by a worker. (platform, event_id) is unique: a platform that delivers at
    least once sends the same event again, and it is recognised."""

    platform = models.CharField(max_length=40)  # "marketing_cloud" or a webhook's name
    channel = models.CharField(max_length=16)  # how it came: "ens", "tracking", "webhook"
    event_id = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=EventKind.choices)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()
    # Who it is about: a Salesforce ID (Marketing Cloud's subscriber key) or an email.
    subscriber_key = models.CharField(max_length=254, blank=True)
    email = models.CharField(max_length=254, blank=True)
    # The sender a SENDER_OPT_OUT is from ("business_unit:510000002", "send_account:…").
    scope = models.CharField(max_length=120, blank=True)
    reason = models.TextField(blank=True)
    payload = models.JSONField(default=dict)
    state = models.CharField(max_length=12, choices=EventState.choices, default=EventState.RECEIVED)
    contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    applied_at = models.DateTimeField(null=True, blank=True)
    outcome = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["platform", "event_id"], name="one_event_per_id")
        ]
        indexes = [
            models.Index(
                fields=["received_at"],
                condition=Q(state="received"),
                name="platform_events_to_apply",
            ),
            models.Index(fields=["contact", "kind", "occurred_at"], name="contact_events"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} from {self.platform} ({self.event_id})"


class SenderSuppression(models.Model):
    """A person opted out of one sender only (a Marketing Cloud business unit, or a send
    account): it stops that sender's mail, not the global opt-out (docs/design.md, rule 9).
    Written only by apply_change."""

    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="sender_suppressions"
    )
    scope = models.CharField(max_length=120)  # "business_unit:510000002", "send_account:…"
    since = models.DateTimeField()
    source = models.CharField(max_length=20)
    note = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["contact", "scope"], name="one_suppression_per_sender")
        ]

    def __str__(self) -> str:
        return f"{self.contact} suppressed for {self.scope}"
