"""The managers' audit log, risky-action review, reports and their CSV exports."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.db.models import Exists, OuterRef
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import push_url

from audit import charts
from audit.exports import FETCH_ROWS, stream_csv
from audit.forms import LogFilterForm, ReportForm, ReviewForm, log_page
from audit.models import AuditAction, AuditEntry, AuditSeal, ConsentMethod, PendingReview, Source
from audit.reports import (
    CHANGE_REPORT_HEADER,
    CHART_HEADER,
    DIRECTIONS,
    change_report_values,
    change_rows,
    change_summary,
    chart_values,
    flag_changes,
    weekly_counts,
)
from audit.services import AlreadyReviewed, ReviewRefused, may_review_own, review_entry
from audit.vocabulary import category_names
from lib.access import HtmxHttpRequest, staff_view
from lib.channels import OPT_OUT_LABELS, Channel

LOG_TEMPLATE = "audit/log.html"
ENTRY_TEMPLATE = "audit/entry_detail.html"
REPORTS_TEMPLATE = "audit/reports.html"
REPORT_PREVIEW = 50
ACTION_LABELS = dict(AuditAction.choices)
SOURCE_LABELS = dict(Source.choices)
CONSENT_LABELS = dict(ConsentMethod.choices)


def _fragment(request: HtmxHttpRequest) -> bool:
    """htmx asked for a region; a boosted link or a history restore needs the whole page."""
    htmx = request.htmx
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


@require_GET
@staff_view("audit.view_audit_log")
def log(request: HtmxHttpRequest) -> HttpResponse:
    form = LogFilterForm(request.GET)
    context: dict[str, Any] = {"form": form}
    status = 422
    if form.is_valid():
        status = 200
        page = log_page(form)
        _present(page.entries)
        context.update(
            page=page,
            # One reverse() per page instead of two per row: "/audit/0/" less the "0/".
            entry_base=reverse("audit:entry", args=[0]).removesuffix("0/"),
            contact_base=reverse("preferences:contact", args=[0]).removesuffix("0/"),
            query=form.query_string(),
            cursor=bool(form.cleaned_data["after"] or form.cleaned_data["before"]),
        )
    template = LOG_TEMPLATE + "#log" if _fragment(request) else LOG_TEMPLATE
    response = render(request, template, context, status=status)
    if request.htmx and form.is_valid():
        # The address bar holds the filters only as set, so the link can be shared.
        cursor = {k: form.cleaned_data[k] for k in ("after", "before")}
        query = form.query_string(**cursor)
        push_url(response, reverse("audit:log") + (f"?{query}" if query else ""))
    return response


def _when(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%-d %b %Y, %H:%M")


def _present(entries: list[AuditEntry]) -> None:
    """What each row of the log shows, worked out in Python.

    The template engine's date filter and get_FOO_display() cost tens of microseconds a
    call (translations, the choices dict rebuilt each time); at 50 rows a page that was
    most of the page's time.
    """
    names = category_names()
    for entry in entries:
        consent = entry.consent
        entry.change_lines = entry.describe_changes(names)  # type: ignore[attr-defined]
        entry.action_label = ACTION_LABELS.get(entry.action, entry.action)  # type: ignore[attr-defined]
        entry.source_label = SOURCE_LABELS.get(entry.source, entry.source)  # type: ignore[attr-defined]
        entry.when = _when(entry.created_at)  # type: ignore[attr-defined]
        entry.consent_text = (  # type: ignore[attr-defined]
            f"{CONSENT_LABELS.get(consent.method, consent.method)}, {_when(consent.obtained_at)}"
            if consent
            else ""
        )


def _state_rows(entry: AuditEntry, names: dict[str, str]) -> list[tuple[str, str, str]]:
    """(what, before, after) for a preference change, in staff words."""
    before, after = entry.before, entry.after
    if not before or not after:
        return []
    rows = []
    for channel in Channel.values:
        was = before.get("opted_out", {}).get(channel, False)
        now = after.get("opted_out", {}).get(channel, False)
        rows.append((OPT_OUT_LABELS[channel], "Yes" if was else "No", "Yes" if now else "No"))

    def listed(keys: list[str]) -> str:
        return ", ".join(names.get(key, key) for key in keys) or "none"

    rows.append(
        (
            "Email categories",
            listed(before.get("categories", [])),
            listed(after.get("categories", [])),
        )
    )
    rows.append(
        (
            "Email bounced",
            "Yes" if before.get("bounced") else "No",
            "Yes" if after.get("bounced") else "No",
        )
    )
    return rows


def _render_entry(
    request: HtmxHttpRequest,
    pk: int,
    *,
    form: ReviewForm | None = None,
    status: int = 200,
) -> HttpResponse:
    entry = get_object_or_404(
        AuditEntry.objects.select_related(
            "contact",
            "consent",
            "consent__recorded_by",
            "reviews",
            "bulk_run",
            "resubscribe_request__business_unit",
        ).annotate(awaiting_review=Exists(PendingReview.objects.filter(entry_id=OuterRef("pk")))),
        pk=pk,
    )
    names = category_names()
    context = {
        "entry": entry,
        "change_lines": entry.describe_changes(names),
        "state_rows": _state_rows(entry, names),
        "seal": AuditSeal.objects.filter(entry=entry).first(),
        "reviews": list(entry.reviewed_by.order_by("id")),
        "review_form": form or ReviewForm(),
        # Four eyes: the one who made the change is not offered the review.
        "own_change": entry.actor_id == request.user.pk and not may_review_own(request.user),  # type: ignore[arg-type]
    }
    template = ENTRY_TEMPLATE + "#review" if _fragment(request) else ENTRY_TEMPLATE
    return render(request, template, context, status=status)


@require_GET
@staff_view("audit.view_audit_log")
def entry_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _render_entry(request, pk)


@require_POST
@staff_view("audit.review_audit_entry")
def review(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    entry = get_object_or_404(AuditEntry, pk=pk)
    form = ReviewForm(request.POST)
    if not form.is_valid():
        return _render_entry(request, entry.pk, form=form, status=422)
    try:
        review_entry(
            entry_id=entry.pk,
            actor=request.user,  # type: ignore[arg-type]
            comment=form.cleaned_data["comment"],
        )
    except AlreadyReviewed as refused:
        form.add_error(None, str(refused))
        return _render_entry(request, entry.pk, form=form, status=409)
    except ReviewRefused as refused:
        form.add_error(None, str(refused))
        return _render_entry(request, entry.pk, form=form, status=422)
    messages.success(request, "Marked reviewed. The review is in the audit log.")
    if request.htmx:
        return _render_entry(request, entry.pk)
    return redirect("audit:entry", pk=entry.pk)


# ---- exports ------------------------------------------------------------------------------

LOG_EXPORT_HEADER = [
    "id",
    "created_at",
    "actor",
    "source",
    "action",
    "contact_id",
    "contact",
    "salesforce_id",
    "ascend_id",
    "channels",
    "changes",
    "note",
    "consent_method",
    "consent_obtained_at",
    "review",
    "reviews_entry",
    "bulk_run",
    "seal_hash",
]


# Read as tuples, not model instances: an export may be a million rows, and building four
# models a row (entry, contact, consent, seal) was most of its time.
LOG_EXPORT_COLUMNS = [
    "id",
    "created_at",
    "actor_label",
    "source",
    "action",
    "contact_id",
    "contact__first_name",
    "contact__last_name",
    "contact__salesforce_id",
    "contact__ascend_id",
    "channels",
    "before",
    "after",
    "note",
    "consent__method",
    "consent__obtained_at",
    "risky",
    "awaiting_review",
    "reviews_id",
    "bulk_run_id",
    "seal__hash",
]


def _log_values(row: tuple[Any, ...], names: dict[str, str], scratch: AuditEntry) -> list[object]:
    (
        pk,
        created_at,
        actor_label,
        source,
        action,
        contact_id,
        first_name,
        last_name,
        salesforce_id,
        ascend_id,
        channels,
        before,
        after,
        note,
        consent_method,
        consent_obtained_at,
        risky,
        awaiting_review,
        reviews_id,
        bulk_run_id,
        seal_hash,
    ) = row
    review_state = ""
    if risky:
        review_state = "awaiting review" if awaiting_review else "reviewed"
    scratch.before, scratch.after = before, after
    changes = scratch.describe_changes(names)
    return [
        pk,
        timezone.localtime(created_at).isoformat(timespec="seconds"),
        actor_label,
        SOURCE_LABELS.get(source, source),
        ACTION_LABELS.get(action, action),
        contact_id or "",
        # As Contact.__str__ has it.
        (f"{first_name} {last_name}".strip() or salesforce_id) if contact_id else "",
        salesforce_id or "",
        ascend_id or "",
        " ".join(channels),
        "; ".join(changes),
        note,
        CONSENT_LABELS.get(consent_method, consent_method) if consent_method else "",
        timezone.localtime(consent_obtained_at).isoformat(timespec="minutes")
        if consent_obtained_at
        else "",
        review_state,
        reviews_id or "",
        bulk_run_id or "",
        seal_hash or "",  # none yet: an entry is sealed when its transaction commits
    ]


@require_GET
@staff_view("audit.view_audit_log")
def export(request: HtmxHttpRequest) -> HttpResponseBase:
    form = LogFilterForm(request.GET)
    if not form.is_valid():
        return render(request, LOG_TEMPLATE, {"form": form}, status=422)
    entries = (
        form.entries()
        .annotate(awaiting_review=Exists(PendingReview.objects.filter(entry_id=OuterRef("pk"))))
        .order_by("-id")
        .values_list(*LOG_EXPORT_COLUMNS)
    )
    names = category_names()
    scratch = AuditEntry()  # describe_changes() reads only before/after: one model, reused
    rows = (_log_values(r, names, scratch) for r in entries.iterator(chunk_size=FETCH_ROWS))
    return stream_csv(f"audit-log-{timezone.localtime():%Y%m%d-%H%M}.csv", LOG_EXPORT_HEADER, rows)


# ---- reports ------------------------------------------------------------------------------


@require_GET
@staff_view("audit.view_reports")
def reports(request: HtmxHttpRequest) -> HttpResponse:
    form = ReportForm(request.GET)
    context: dict[str, Any] = {"form": form, "directions": DIRECTIONS}
    status = 422
    if form.is_valid():
        status = 200
        start, end, weeks = (form.cleaned_data[k] for k in ("start", "end", "weeks"))
        latest = flag_changes(start, end).select_related("contact").order_by("-id")
        weekly = weekly_counts(end, weeks)
        context.update(
            start=start,
            end=end,
            weeks=weeks,
            query=form.query_string(),
            summary=change_summary(start, end),
            latest=list(change_rows(latest[:REPORT_PREVIEW])),
            preview=REPORT_PREVIEW,
            weekly=weekly,
            panels=charts.weekly_panels(weekly),
            legend=charts.legend(),
        )
    template = REPORTS_TEMPLATE + "#report" if _fragment(request) else REPORTS_TEMPLATE
    response = render(request, template, context, status=status)
    if request.htmx and form.is_valid():
        push_url(response, reverse("audit:reports") + "?" + form.query_string())
    return response


@require_GET
@staff_view("audit.view_reports")
def change_report_export(request: HtmxHttpRequest) -> HttpResponseBase:
    form = ReportForm(request.GET)
    if not form.is_valid():
        return render(request, REPORTS_TEMPLATE, {"form": form}, status=422)
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    entries = flag_changes(start, end).select_related("contact").order_by("created_at", "id")

    def rows() -> Iterator[list[object]]:
        for row in change_rows(entries.iterator(chunk_size=FETCH_ROWS)):
            yield change_report_values(row)

    return stream_csv(f"change-report-{start}-to-{end}.csv", CHANGE_REPORT_HEADER, rows())


@require_GET
@staff_view("audit.view_reports")
def chart_export(request: HtmxHttpRequest) -> HttpResponseBase:
    form = ReportForm(request.GET)
    if not form.is_valid():
        return render(request, REPORTS_TEMPLATE, {"form": form}, status=422)
    end, weeks = form.cleaned_data["end"], form.cleaned_data["weeks"]
    weekly = weekly_counts(end, weeks)
    return stream_csv(
        f"opt-outs-per-week-{weekly[0].week}-to-{end}.csv", CHART_HEADER, chart_values(weekly)
    )
