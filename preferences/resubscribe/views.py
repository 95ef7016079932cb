"""The re-subscribe request queue (system team) and the contact page's Marketing Cloud card."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import datetime
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from integrations.marketing_cloud.sync import TARGET as MARKETING_CLOUD
from lib.access import HtmxHttpRequest, staff_view
from lib.spreadsheet import safe_row
from preferences.forms import NoteForm
from preferences.models import (
    Contact,
    ResubscribeRequest,
    SubscriberStatus,
    SyncStatus,
)
from preferences.resubscribe import requests as resubscribe
from preferences.resubscribe import subscribers
from preferences.resubscribe.forms import ResubscribeFilterForm, ResubscribeForm, UrgentForm
from preferences.services import ChangeRefused

QUEUE_TEMPLATE = "preferences/resubscribe_queue.html"
REQUEST_TEMPLATE = "preferences/resubscribe_request.html"
CONTACT_TEMPLATE = "preferences/contact_detail.html"
PAGE_SIZE = 100
SHEET_HEADER = [
    "Contact",
    "Salesforce ID",
    "Email",
    "Business unit",
    "Status seen",
    "Requested by",
    "Requested at",
    "Consent reference",
    "Urgent",
]
WORK = "preferences.work_resubscribe_queue"
FILTERS = ("business_unit", "status", "state")


# --- the queue -----------------------------------------------------------------------------


def _queue_rows() -> QuerySet[ResubscribeRequest]:
    # Urgent first, then oldest: the order of the partial index resubscribe_queue.
    return ResubscribeRequest.objects.select_related(
        "contact", "business_unit", "re_enrolment"
    ).order_by("-urgent", "requested_at", "pk")


@require_GET
@staff_view(WORK)
def queue(request: HtmxHttpRequest) -> HttpResponse:
    form = ResubscribeFilterForm(request.GET)
    page = Paginator(form.requests(_queue_rows()), PAGE_SIZE).get_page(request.GET.get("page"))
    chosen = {k: v for k, v in request.GET.items() if k in FILTERS and v}
    context = {
        "form": form,
        "page": page,
        "filter_query": urlencode(chosen),
        "sheet_query": urlencode({k: v for k, v in chosen.items() if k != "state"}),
    }
    template = QUEUE_TEMPLATE
    if request.htmx and not request.htmx.boosted:
        template += "#queue"
    return render(request, template, context)


class _Echo:
    """csv.writer writes into this and gets the line back, so rows can be streamed."""

    def write(self, value: str) -> str:
        return value


def _local(moment: datetime) -> str:
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M}"


def sheet_lines(requests: QuerySet[ResubscribeRequest]) -> Iterator[str]:
    """The Re-subscribe Request Sheet, line by line; cells that a spreadsheet would run as a
    formula (a name or email starting with "=") are neutralised."""
    writer = csv.writer(_Echo())
    # The byte-order mark makes Excel read the file as UTF-8 (names with accents).
    yield "\ufeff" + writer.writerow(SHEET_HEADER)
    for item in requests.select_related("consent").iterator(chunk_size=2000):
        consent = item.consent
        reference = f"PD-{item.re_enrolment_id}"
        if consent is not None:
            reference += f" ({consent.get_method_display()}, {_local(consent.obtained_at)})"
        yield writer.writerow(
            safe_row(
                [
                    str(item.contact),
                    item.contact.salesforce_id,
                    item.contact.email,
                    f"{item.business_unit} ({item.business_unit.mid})",
                    item.get_status_seen_display(),
                    item.re_enrolment.actor_label,
                    _local(item.requested_at),
                    reference,
                    "yes" if item.urgent else "no",
                ]
            )
        )


@require_GET
@staff_view(WORK)
def sheet(request: HtmxHttpRequest) -> StreamingHttpResponse:
    """The weekly batch: every open request (business unit and status filters apply)."""
    # Always the open requests, whatever state the queue was showing.
    form = ResubscribeFilterForm({k: v for k, v in request.GET.items() if k in FILTERS[:2]})
    response = StreamingHttpResponse(
        sheet_lines(form.requests(_queue_rows())), content_type="text/csv; charset=utf-8"
    )
    name = f"resubscribe-requests-{timezone.localdate():%Y-%m-%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


# --- one request --------------------------------------------------------------------------


def _request(pk: int) -> ResubscribeRequest:
    return get_object_or_404(
        ResubscribeRequest.objects.select_related(
            "contact", "business_unit", "re_enrolment", "consent", "consent__recorded_by"
        ),
        pk=pk,
    )


def _forms(**given: forms.Form) -> dict[str, forms.Form]:
    # Several note forms on one page: auto_id keeps their element ids apart.
    made: dict[str, forms.Form] = {
        "start_form": NoteForm(auto_id="start_%s"),
        "done_form": NoteForm(auto_id="done_%s"),
        "reject_form": NoteForm(auto_id="reject_%s"),
        "resubscribe_form": ResubscribeForm(auto_id="mc_%s"),
    }
    made.update(given)
    return made


def _render_request(
    request: HtmxHttpRequest, item: ResubscribeRequest, status: int = 200, **given: forms.Form
) -> HttpResponse:
    context = {
        "item": item,
        "trail": item.audit_entries.order_by("id"),
        "last_read": SubscriberStatus.objects.filter(
            contact_id=item.contact_id, business_unit_id=item.business_unit_id
        ).first(),
        "marketing_cloud_enabled": settings.MARKETING_CLOUD_ENABLED,
        **_forms(**given),
    }
    template = REQUEST_TEMPLATE
    if request.htmx and not request.htmx.boosted:
        template += "#request"
    return render(request, template, context, status=status)


@require_GET
@staff_view(WORK)
def detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _render_request(request, _request(pk))


def _step(
    request: HtmxHttpRequest,
    pk: int,
    form_name: str,
    form: forms.Form,
    do: Callable[[ResubscribeRequest, forms.Form], str],
) -> HttpResponse:
    """Validate the step's form, run it, and answer with the request (or its errors)."""
    item = _request(pk)
    if not form.is_valid():
        return _render_request(request, item, status=422, **{form_name: form})
    try:
        message = do(item, form)
    except ChangeRefused as refused:
        # Shown at the top: a closed request has no forms left to show it under.
        messages.error(request, str(refused))
        return _render_request(request, _request(pk), status=422, **{form_name: form})
    messages.success(request, message)
    if request.htmx:
        return _render_request(request, _request(pk))
    return redirect("preferences:resubscribe_request", pk=pk)


@require_POST
@staff_view(WORK)
def start(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def do(item: ResubscribeRequest, form: forms.Form) -> str:
        resubscribe.start(request_id=item.pk, actor=request.user, note=form.cleaned_data["note"])  # type: ignore[arg-type]
        return "Request in progress: you are working it."

    return _step(request, pk, "start_form", NoteForm(request.POST, auto_id="start_%s"), do)


@require_POST
@staff_view(WORK)
def complete(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def do(item: ResubscribeRequest, form: forms.Form) -> str:
        resubscribe.complete(
            request_id=item.pk,
            actor=request.user,  # type: ignore[arg-type]
            note=form.cleaned_data["note"],
        )
        return "Request closed as done."

    return _step(request, pk, "done_form", NoteForm(request.POST, auto_id="done_%s"), do)


@require_POST
@staff_view(WORK)
def reject(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def do(item: ResubscribeRequest, form: forms.Form) -> str:
        resubscribe.reject(request_id=item.pk, actor=request.user, note=form.cleaned_data["note"])  # type: ignore[arg-type]
        return "Request rejected."

    return _step(request, pk, "reject_form", NoteForm(request.POST, auto_id="reject_%s"), do)


@require_POST
@staff_view(WORK)
def resubscribe_in_marketing_cloud(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def do(item: ResubscribeRequest, form: forms.Form) -> str:
        result = subscribers.resubscribe_in_marketing_cloud(
            request_id=item.pk,
            actor=request.user,  # type: ignore[arg-type]
            note=form.cleaned_data["note"],
            confirmed=form.cleaned_data["confirm"],
        )
        if result.problem:
            raise ChangeRefused(f"{result.problem} The request stays in progress.")
        return f"Resubscribed in Marketing Cloud: {item.business_unit} reads Active. Request done."

    form = ResubscribeForm(request.POST, auto_id="mc_%s")
    return _step(request, pk, "resubscribe_form", form, do)


# --- the contact page's Marketing Cloud card ---------------------------------------------


def marketing_cloud_context(
    contact: Contact,
    *,
    urgent_form: UrgentForm | None = None,
    urgent_for: int | None = None,
    notice: str = "",
    error: str = "",
) -> dict[str, object]:
    """What the contact page shows of Marketing Cloud: one query (requests.overview); the
    sync row is prefetched with the contact."""
    enabled = bool(settings.MARKETING_CLOUD_ENABLED)
    syncs = contact.syncs.all()
    sync_row = next((s for s in syncs if s.target == MARKETING_CLOUD), None)
    units = resubscribe.overview(contact.pk)
    return {
        "mc": {
            "enabled": enabled,
            "checking": enabled and sync_row is not None and sync_row.status == SyncStatus.PENDING,
            "sync": sync_row,
            "units": [unit for unit in units if unit.is_active],
            "requests": [unit for unit in units if unit.request_id is not None],
            "urgent_form": urgent_form,
            "urgent_for": urgent_for,
            "notice": notice,
            "error": error,
        }
    }


def _contact(pk: int) -> Contact:
    return get_object_or_404(Contact.objects.prefetch_related("syncs"), pk=pk)


def _card(
    request: HtmxHttpRequest, contact: Contact, status: int = 200, **options: object
) -> HttpResponse:
    """The card for htmx; a plain form post goes back to the contact page with a message."""
    if request.htmx or request.method == "GET":
        context = {"contact": contact, **marketing_cloud_context(contact, **options)}  # type: ignore[arg-type]
        return render(request, f"{CONTACT_TEMPLATE}#marketing-cloud", context, status=status)
    if options.get("error"):
        messages.error(request, str(options["error"]))
    elif options.get("urgent_form") is not None:
        form = options["urgent_form"]
        for errors in form.errors.values():  # type: ignore[attr-defined]
            for message in errors:
                messages.error(request, message)
    elif options.get("notice"):
        messages.success(request, str(options["notice"]))
    return redirect("preferences:contact", pk=contact.pk)


@require_GET
@staff_view("preferences.view_contact")
def contact_card(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The card alone; the page polls it while a lookup is pending."""
    return _card(request, _contact(pk))


@require_POST
@staff_view("preferences.change_preferences")
def contact_refresh(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Read the statuses now, while the specialist waits (see README: a few seconds at most)."""
    contact = _contact(pk)
    try:
        subscribers.refresh_statuses(contact=contact)
    except ChangeRefused as refused:
        return _card(request, contact, error=str(refused))
    return _card(request, contact, notice="Statuses read from Marketing Cloud just now.")


@require_POST
@staff_view("preferences.change_preferences")
def urgent(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(ResubscribeRequest, pk=pk)
    contact = _contact(item.contact_id)
    form = UrgentForm(request.POST, auto_id=f"urgent-{item.pk}-%s")
    if not form.is_valid():
        return _card(request, contact, status=422, urgent_form=form, urgent_for=item.pk)
    link = request.build_absolute_uri(reverse("preferences:resubscribe_request", args=[item.pk]))
    try:
        resubscribe.mark_urgent(
            request_id=item.pk,
            actor=request.user,  # type: ignore[arg-type]
            reason=form.cleaned_data["reason"],
            link=link,
        )
    except ChangeRefused as refused:
        return _card(request, contact, status=422, error=str(refused))
    return _card(
        request,
        contact,
        notice=f"Marked urgent: the system team was emailed ({settings.RESUBSCRIBE_NOTIFY_EMAIL}).",
    )
