"""The audit log's filters and the reports' date ranges, parsed strictly from the URL.

The log is read newest first with keyset paging (?after=<id> for older, ?before=<id> for
newer), so page 200 costs what page 1 costs. Each filter maps to a predicate that one of
AuditEntry's indexes serves in id order; a kind made of several actions (escalation = raised
or resolved) is read as one ordered index scan per action, merged (log_page below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import BooleanField, Exists, F, Func, Max, OuterRef, Q, QuerySet, Value
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, PendingReview, Source
from lib.channels import Channel
from lib.dates import StaffDateField
from lib.salesforce_ids import TYPED_SALESFORCE_ID, salesforce_id_18

# kind: (label, branches). An entry is of the kind when it matches any branch; each branch
# is served by one index, (action, -id) or (source, -id), in id order.
KINDS: dict[str, tuple[str, list[Q]]] = {
    "opt_out": ("Opt-out", [Q(action=AuditAction.OPT_OUT)]),
    "re_enrolment": ("Re-enrolment", [Q(action=AuditAction.RE_ENROLMENT)]),
    "category_change": ("Category change", [Q(action=AuditAction.CATEGORY_CHANGE)]),
    # The run itself, and the per-contact changes it made (apply_change with source bulk).
    "bulk": ("Bulk change", [Q(action=AuditAction.BULK), Q(source=Source.BULK)]),
    "escalation": (
        "Escalation",
        [Q(action=AuditAction.ESCALATION), Q(action=AuditAction.ESCALATION_RESOLVED)],
    ),
    "retry": ("Sync retry (manual)", [Q(action=AuditAction.SYNC_RETRY)]),
    "sync_failure": ("Sync failure", [Q(action=AuditAction.SYNC_FAILED)]),
    "resubscribe": (
        "Re-subscribe (Marketing Cloud)",
        [Q(action=AuditAction.RESUBSCRIBE_REQUEST), Q(action=AuditAction.RESUBSCRIBE)],
    ),
    "review": ("Review", [Q(action=AuditAction.REVIEW)]),
    "bounce": (
        "Bounce",
        [Q(action=AuditAction.BOUNCE), Q(action=AuditAction.SOFT_BOUNCE)],
    ),
    # A spam complaint is flagged on its own: the worst thing a recipient can tell us.
    "spam_report": ("Spam report", [Q(action=AuditAction.SPAM_REPORT)]),
    "sender_opt_out": ("Opted out of one sender", [Q(action=AuditAction.SENDER_OPT_OUT)]),
    "ascend_file": ("Ascend change file", [Q(action=AuditAction.ASCEND_FILE)]),
    "discrepancy": ("Discrepancy resolved", [Q(action=AuditAction.DISCREPANCY_RESOLVED)]),
    # What Salesforce did to its records: a new one's starting state, deletes, merges.
    "salesforce_record": (
        "Salesforce record (new, deleted, merged)",
        [
            Q(action=AuditAction.STARTING_STATE),
            Q(action=AuditAction.DELETED),
            Q(action=AuditAction.RESTORED),
            Q(action=AuditAction.MERGED),
            Q(action=AuditAction.MERGED_AWAY),
        ],
    ),
}

# Entries are written with created_at = now inside the transaction that inserts them, so id
# order and time order agree to within a transaction's length. A date range is therefore
# also an id range, found with two probes of the created_at index; the margin keeps a late
# commit inside it. The created_at condition itself stays, so the bounds only narrow the scan.
ID_BOUND_MARGIN = timedelta(hours=1)

PAGE_SIZE = 50
# A note search first reads this many of the newest ids below the cursor (a short range scan
# of the primary key); only if they hold too few matches does it use the trigram index.
# A common word is then found at once, and a rare one is few rows for the index: both fast.
# Left to itself the planner sorts every match of a common word to show fifty.
SEARCH_WINDOW = 20_000
NOTE_SEARCH_MIN = 3
DATE_INPUT = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


@dataclass
class Control:
    name: str
    label: str
    kind: str  # "select", "date", "search", "text" or "checkbox"
    value: str
    errors: list[str]
    placeholder: str = ""
    max_length: int | None = None
    options: list[tuple[str, str, bool]] = field(default_factory=list)


class NoteContains(Func):
    """note ILIKE '%text%', the form the trigram index on note serves.

    (Django's icontains writes UPPER(note) LIKE ..., which that index cannot answer.)
    """

    arg_joiner = " ILIKE "
    template = "%(expressions)s"
    output_field = BooleanField()

    def __init__(self, text: str) -> None:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        super().__init__(F("note"), Value(f"%{escaped}%"))


class StaffChoiceField(forms.ModelChoiceField[User]):
    def label_from_instance(self, obj: Any) -> str:
        return str(obj.email or obj.get_username())


def day_start(day: date) -> datetime:
    """Midnight at the start of the day, in the time zone staff see times in."""
    return timezone.make_aware(datetime.combine(day, time.min))


def find_contacts(value: str) -> list[Any]:
    """Contacts named by a Salesforce ID (15 or 18), an Ascend ID or an email address."""
    # The log knows contacts only through the relation its entries record (audit imports no
    # feature), so it asks that relation for their model.
    contacts = AuditEntry._meta.get_field("contact").related_model._default_manager
    value = value.strip()
    if "@" in value:
        return list(contacts.filter(email=value.lower())[:20])
    if TYPED_SALESFORCE_ID.match(value):
        return list(contacts.filter(salesforce_id=salesforce_id_18(value)))
    return list(contacts.filter(ascend_id=value))


class LogFilterForm(forms.Form):
    start = StaffDateField(label="From", required=False, widget=DATE_INPUT)
    end = StaffDateField(label="To", required=False, widget=DATE_INPUT)
    actor = StaffChoiceField(
        label="Staff member",
        queryset=get_user_model().objects.order_by("email", "username"),
        required=False,
        empty_label="Anyone",
    )
    contact = forms.CharField(
        label="Contact",
        required=False,
        max_length=254,
        widget=forms.TextInput(attrs={"placeholder": "Salesforce ID, Ascend ID or email"}),
    )
    channel = forms.ChoiceField(
        label="Channel", required=False, choices=[("", "Any"), *Channel.choices]
    )
    kind = forms.ChoiceField(
        label="Kind of action",
        required=False,
        choices=[("", "Any"), *((key, label) for key, (label, _) in KINDS.items())],
    )
    source = forms.ChoiceField(
        label="Source", required=False, choices=[("", "Any"), *Source.choices]
    )
    q = forms.CharField(
        label="Note contains",
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"type": "search"}),
    )
    unreviewed = forms.BooleanField(label="Only risky actions awaiting review", required=False)
    after = forms.IntegerField(min_value=1, required=False, widget=forms.HiddenInput)
    before = forms.IntegerField(min_value=1, required=False, widget=forms.HiddenInput)

    # The filters that make up a shareable view (the cursors are not part of it).
    FILTERS = ("start", "end", "actor", "contact", "channel", "kind", "source", "q", "unreviewed")

    def clean_contact(self) -> list[Any] | None:
        value: str = self.cleaned_data["contact"].strip()
        if not value:
            return None
        found = find_contacts(value)
        if not found:
            raise forms.ValidationError(
                f"No contact has the Salesforce ID, Ascend ID or email “{value}”."
            )
        return found

    def clean_q(self) -> str:
        value: str = " ".join(self.cleaned_data["q"].split())
        if value and len(value) < NOTE_SEARCH_MIN:
            raise forms.ValidationError(
                f"Search the notes with at least {NOTE_SEARCH_MIN} characters."
            )
        if "\x00" in value:
            raise forms.ValidationError("The search contains a character that is not allowed.")
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start > end:
            self.add_error("end", "The end date is before the start date.")
        if cleaned.get("after") and cleaned.get("before"):
            raise forms.ValidationError("Ask for older or for newer entries, not both.")
        return cleaned

    # ---- the query ---------------------------------------------------------------------

    def common(self) -> Q:
        """Every filter except the kind, ANDed."""
        data = self.cleaned_data
        where = Q()
        if data.get("start") or data.get("end"):
            where &= date_range_q(data.get("start"), data.get("end"))
        if data.get("actor"):
            where &= Q(actor=data["actor"])
        if data.get("contact"):
            contacts = data["contact"]
            where &= Q(contact=contacts[0]) if len(contacts) == 1 else Q(contact__in=contacts)
        if data.get("channel"):
            where &= Q(channels__contains=[data["channel"]])
        if data.get("source"):
            where &= Q(source=data["source"])
        if data.get("q"):
            where &= Q(NoteContains(data["q"]))
        if data.get("unreviewed"):
            where &= Q(pending_review__isnull=False)
        return where

    def branches(self) -> list[Q]:
        kind = self.cleaned_data.get("kind")
        return list(KINDS[kind][1]) if kind else [Q()]

    def entries(self) -> QuerySet[AuditEntry]:
        """All entries matching the filters, in no particular order (for exports)."""
        either = Q()
        for branch in self.branches():
            either |= branch
        return AuditEntry.objects.filter(self.common() & either)

    def query_string(self, **extra: object) -> str:
        """The filters as a canonical query string: only what is set, in a fixed order."""
        cleaned = getattr(self, "cleaned_data", {})
        params: list[tuple[str, object]] = []
        for name in self.FILTERS:
            value = self._raw(name) if name in cleaned else self.data.get(name, "")
            if value:
                params.append((name, value))
        params += [(key, value) for key, value in extra.items() if value is not None]
        return urlencode(params)

    def _raw(self, name: str) -> object:
        value = self.cleaned_data[name]
        if name == "actor":
            return value.pk if value else ""
        if name == "contact":
            return self.data.get("contact", "").strip() if value else ""
        if name == "unreviewed":
            return "1" if value else ""
        if isinstance(value, date):
            return value.isoformat()
        return value or ""

    def controls(self) -> list[Control]:
        """The filter fields as the log page draws them, by hand.

        Django's widget templates cost a template render per <option>, and the filters are
        drawn on every page of the log.
        """
        controls = []
        for name in self.FILTERS:
            field = self.fields[name]
            raw = self.data.get(name, "") if self.is_bound else ""
            control = Control(
                name=name,
                label=str(field.label),
                kind=field.widget.attrs.get("type") or getattr(field.widget, "input_type", ""),
                value=str(raw),
                errors=[str(error) for error in self.errors.get(name, [])],
                placeholder=field.widget.attrs.get("placeholder", ""),
                max_length=getattr(field, "max_length", None),
            )
            if name == "actor":
                staff = get_user_model().objects.order_by("email", "username")
                choices = [("", "Anyone")] + [
                    (str(pk), email or username)
                    for pk, email, username in staff.values_list("pk", "email", "username")
                ]
            else:
                choices = [(str(v), str(label)) for v, label in getattr(field, "choices", [])]
            control.options = [(v, label, v == control.value) for v, label in choices]
            controls.append(control)
        return controls


def date_range_q(start: date | None, end: date | None) -> Q:
    """created_at within [start, end] (whole local days), plus the id range it implies."""
    where = Q()
    if start:
        since = day_start(start)
        where &= Q(created_at__gte=since)
        earlier = (
            AuditEntry.objects.filter(created_at__lt=since - ID_BOUND_MARGIN)
            .order_by("-created_at")
            .values_list("id", flat=True)
            .first()
        )
        if earlier is not None:
            where &= Q(id__gt=earlier)
    if end:
        until = day_start(end + timedelta(days=1))
        where &= Q(created_at__lt=until)
        later = (
            AuditEntry.objects.filter(created_at__gte=until + ID_BOUND_MARGIN)
            .order_by("created_at")
            .values_list("id", flat=True)
            .first()
        )
        if later is not None:
            where &= Q(id__lt=later)
    return where


@dataclass
class LogPage:
    entries: list[AuditEntry]
    newer: int | None  # ?before= cursor for the "Newer" link, None when there is nothing newer
    older: int | None  # ?after= cursor for the "Older" link


def with_review_state(entries: QuerySet[AuditEntry]) -> QuerySet[AuditEntry]:
    return entries.select_related("contact", "consent").annotate(
        awaiting_review=Exists(PendingReview.objects.filter(entry_id=OuterRef("pk")))
    )


def _ids(branches: list[QuerySet[AuditEntry]], where: Q, order: str, limit: int) -> list[int]:
    """Up to limit ids in order; several branches are merged with UNION of ordered scans."""
    parts = [
        qs.filter(where).order_by(order).values_list("id", flat=True)[:limit] for qs in branches
    ]
    if len(parts) == 1:
        return list(parts[0])
    # UNION (not ALL): an entry matching two branches (a bulk run entry) is listed once.
    return list(parts[0].union(*parts[1:]).order_by(order)[:limit])


def log_page(form: LogFilterForm, size: int = PAGE_SIZE) -> LogPage:
    """One page of the filtered log, newest first, around the form's cursor."""
    common = form.common()
    branches = [AuditEntry.objects.filter(common & branch) for branch in form.branches()]
    after, before = form.cleaned_data.get("after"), form.cleaned_data.get("before")

    def exists(where: Q) -> bool:
        return any(qs.filter(where).exists() for qs in branches)

    window_from: int | None = None
    if form.cleaned_data.get("q"):
        if before is not None:
            window_from = before
        else:
            window_from = after or (AuditEntry.objects.aggregate(top=Max("id"))["top"] or 0) + 1

    def fetch(cursor: Q, order: str) -> list[int]:
        if window_from is not None:
            window = (
                Q(id__lte=window_from + SEARCH_WINDOW)
                if order == "id"
                else Q(id__gte=window_from - SEARCH_WINDOW)
            )
            ids = _ids(branches, cursor & window, order, size + 1)
            if len(ids) > size:
                return ids
        return _ids(branches, cursor, order, size + 1)

    if before is not None:
        ids = fetch(Q(id__gt=before), "id")
        more_newer = len(ids) > size
        ids = sorted(ids[:size], reverse=True)
        newer = ids[0] if ids and more_newer else None
        older = ids[-1] if ids and exists(Q(id__lt=ids[-1])) else None
    else:
        ids = fetch(Q(id__lt=after) if after else Q(), "-id")
        older = ids[size - 1] if len(ids) > size else None
        ids = ids[:size]
        newer = ids[0] if ids and after is not None and exists(Q(id__gt=ids[0])) else None
    entries = list(with_review_state(AuditEntry.objects.filter(id__in=ids)).order_by("-id"))
    return LogPage(entries, newer, older)


class ReportForm(forms.Form):
    """The weekly change report's date range, and how many weeks the chart shows."""

    start = StaffDateField(label="From", required=False, widget=DATE_INPUT)
    end = StaffDateField(label="To", required=False, widget=DATE_INPUT)
    weeks = forms.IntegerField(
        label="Chart: weeks up to “To”", required=False, min_value=1, max_value=104
    )

    DEFAULT_WEEKS = 12

    def __init__(self, data: Any = None, **kwargs: Any) -> None:
        # Empty or missing fields take their defaults, so the form shows what is reported:
        # the seven days up to "To" (today unless given), and twelve weeks of chart.
        wanted = {"weeks": str(self.DEFAULT_WEEKS)}
        if data is not None:
            wanted.update({k: v for k, v in data.items() if k in self.base_fields and v})
        wanted.setdefault("end", timezone.localdate().isoformat())
        if "start" not in wanted:
            try:
                end = date.fromisoformat(wanted["end"])
                wanted["start"] = (end - timedelta(days=6)).isoformat()
            except (ValueError, OverflowError):
                # The "To" field itself will say what is wrong with it.
                wanted["start"] = (timezone.localdate() - timedelta(days=6)).isoformat()
        kwargs.setdefault("label_suffix", "")
        super().__init__(wanted, **kwargs)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        today = timezone.localdate()
        end = cleaned.get("end") or today
        start = cleaned.get("start") or end - timedelta(days=6)
        if "start" not in self.errors and "end" not in self.errors and start > end:
            self.add_error("end", "The end date is before the start date.")
        if start and end and (end - start).days > 366 * 3:
            self.add_error("start", "Choose a range of at most three years.")
        cleaned["start"], cleaned["end"] = start, end
        cleaned["weeks"] = cleaned.get("weeks") or self.DEFAULT_WEEKS
        return cleaned

    def query_string(self) -> str:
        if not self.is_valid():
            return ""
        data = self.cleaned_data
        return urlencode(
            {
                "start": data["start"].isoformat(),
                "end": data["end"].isoformat(),
                "weeks": data["weeks"],
            }
        )


class ReviewForm(forms.Form):
    comment = forms.CharField(
        label="Comment (optional)",
        required=False,
        max_length=4000,
        widget=forms.Textarea(
            attrs={"rows": 2, "placeholder": "What you checked, or what should happen next"}
        ),
    )
