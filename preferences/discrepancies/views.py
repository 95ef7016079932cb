"""The discrepancies page (system team): what the nightly reconciliation found, per night and
one by one, and resolving each (push the app's values, accept the system's, or dismiss)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from integrations import core, reconcile
from integrations.models import APP, Discrepancy, DiscrepancyKind
from lib.access import HtmxHttpRequest, staff_view
from lib.channels import OPT_OUT_LABELS, Channel
from lib.charts import Series, stacked_panel
from preferences.discrepancies import services
from preferences.discrepancies.forms import AcceptForm, DiscrepancyFilterForm
from preferences.forms import NoteForm
from preferences.models import EmailCategory
from preferences.services import ChangeRefused, ConsentRequired

RESOLVE = "integrations.resolve_discrepancy"
LIST_TEMPLATE = "preferences/discrepancy_list.html"
DETAIL_TEMPLATE = "preferences/discrepancy_detail.html"
PAGE_SIZE = 100
FILTERS = ("kind", "system", "state")
KIND_SERIES = [
    Series(kind, label, f"kind-{kind.replace('_', '-')}") for kind, label in DiscrepancyKind.choices
]


@require_GET
@staff_view(RESOLVE)
def discrepancy_list(request: HtmxHttpRequest) -> HttpResponse:
    form = DiscrepancyFilterForm(request.GET)
    rows = form.discrepancies(Discrepancy.objects.select_related("contact"))
    page = Paginator(rows.order_by("-last_seen", "pk"), PAGE_SIZE).get_page(request.GET.get("page"))
    for found in page.object_list:
        found.system_label = system_label(found.system)  # type: ignore[attr-defined]
    runs = reconcile.latest_runs()
    for run in runs:
        run.system_label = system_label(run.system)  # type: ignore[attr-defined]
    nights = reconcile.nightly_counts()
    chart = stacked_panel(
        "Discrepancies found per night",
        [(f"{night:%-d %b}", counts) for night, counts in nights],
        KIND_SERIES,
        lambda index, series, count: (
            f"{nights[index][0]:%-d %b %Y}: {count:,} {series.label.lower()}"
        ),
        id="discrepancies-chart",
    )
    chart.summary = f"Discrepancies found per night, last {len(nights)} nights: {chart.total}"
    nights_shown = len(nights)
    chosen = {k: v for k, v in request.GET.items() if k in FILTERS and v}
    context = {
        "form": form,
        "page": page,
        "filter_query": urlencode(chosen),
        "panel": chart,
        "nights": nights_shown,
        "legend": [(series.css, series.label) for series in KIND_SERIES],
        "runs": runs,
    }
    template = LIST_TEMPLATE
    if request.htmx and not request.htmx.boosted:
        template += "#discrepancies"
    return render(request, template, context)


def system_label(name: str) -> str:
    return "The app's own data" if name == APP else core.label(name)


@dataclass(frozen=True)
class Row:
    """One value of the contact as the app and the other system hold it."""

    label: str
    app: str
    remote: str

    @property
    def differs(self) -> bool:
        # A side that holds no such contact ("—") is the discrepancy itself, not a value.
        return "—" not in (self.app, self.remote) and self.app != self.remote


def comparison(found: Discrepancy) -> list[Row]:
    app = found.details.get("app") or {}
    remote = found.details.get("remote") or {}

    def yes(values: dict[str, object], key: str, item: str) -> str:
        if not values or values.get(key) is None:
            return "—"
        listed = values[key]
        return "Yes" if isinstance(listed, list) and item in listed else "No"

    rows = [
        Row(
            OPT_OUT_LABELS[channel],
            yes(app, "opted_out", channel),
            yes(remote, "opted_out", channel),
        )
        for channel in Channel.values
    ]
    if remote.get("categories") is not None or not remote:
        for key, name in EmailCategory.objects.filter(is_active=True).values_list("key", "name"):
            rows.append(Row(name, yes(app, "categories", key), yes(remote, "categories", key)))
    return rows


def _found(pk: int) -> Discrepancy:
    return get_object_or_404(
        Discrepancy.objects.select_related("contact", "resolved_by", "resolution_entry", "run"),
        pk=pk,
    )


def _render_detail(
    request: HtmxHttpRequest, found: Discrepancy, status: int = 200, **given: forms.Form
) -> HttpResponse:
    context = {
        "found": found,
        "system_label": system_label(found.system),
        "rows": comparison(found),
        "contacts": found.details.get("contacts", []),
        "can_push": found.kind == DiscrepancyKind.DIFFERS,
        "needs_consent": services.clears_an_opt_out(found),
        "push_form": NoteForm(auto_id="push_%s"),
        "accept_form": AcceptForm(auto_id="accept_%s"),
        "dismiss_form": NoteForm(auto_id="dismiss_%s"),
        **given,
    }
    return render(request, DETAIL_TEMPLATE, context, status=status)


@require_GET
@staff_view(RESOLVE)
def discrepancy_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _render_detail(request, _found(pk))


@require_POST
@staff_view(RESOLVE)
def discrepancy_push(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    found = _found(pk)
    form = NoteForm(request.POST, auto_id="push_%s")
    if not form.is_valid():
        return _render_detail(request, found, status=422, push_form=form)
    try:
        services.push_app_values(
            discrepancy_id=found.pk,
            actor=request.user,  # type: ignore[arg-type]
            note=form.cleaned_data["note"],
        )
    except ChangeRefused as refused:
        form.add_error(None, str(refused))
        return _render_detail(request, _found(pk), status=422, push_form=form)
    if core.target(found.system).push is None:
        messages.success(
            request, f"The app's values go in {core.label(found.system)}'s next change file."
        )
    else:
        messages.success(request, f"The app's values go to {core.label(found.system)} again.")
    return redirect("preferences:discrepancy", pk=pk)


@require_POST
@staff_view(RESOLVE)
def discrepancy_accept(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    found = _found(pk)
    form = AcceptForm(request.POST, auto_id="accept_%s")
    if not form.is_valid():
        return _render_detail(request, found, status=422, accept_form=form)
    try:
        services.accept_external_values(
            discrepancy_id=found.pk,
            actor=request.user,  # type: ignore[arg-type]
            note=form.cleaned_data["note"],
            consent=form.consent(),
        )
    except ConsentRequired as refused:
        form.add_error(None, str(refused))
        for name in ("consent_method", "consent_obtained_at", "consent_attested"):
            if not form.cleaned_data.get(name):
                form.add_error(name, "Required to opt the contact back in.")
        return _render_detail(request, _found(pk), status=422, accept_form=form)
    except ChangeRefused as refused:
        form.add_error(None, str(refused))
        return _render_detail(request, _found(pk), status=422, accept_form=form)
    messages.success(
        request, f"{core.label(found.system)}'s values are the contact's now, everywhere."
    )
    return redirect("preferences:discrepancy", pk=pk)


@require_POST
@staff_view(RESOLVE)
def discrepancy_dismiss(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    found = _found(pk)
    form = NoteForm(request.POST, auto_id="dismiss_%s")
    if not form.is_valid():
        return _render_detail(request, found, status=422, dismiss_form=form)
    try:
        services.dismiss(
            discrepancy_id=found.pk,
            actor=request.user,  # type: ignore[arg-type]
            note=form.cleaned_data["note"],
        )
    except ChangeRefused as refused:
        form.add_error(None, str(refused))
        return _render_detail(request, _found(pk), status=422, dismiss_form=form)
    messages.success(request, "Dismissed.")
    return redirect("preferences:discrepancy", pk=pk)
