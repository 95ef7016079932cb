"""The bulk opt-out pages (docs/design.md, rule 11), for managers: list, new, preview,
confirm, progress."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import push_url

from lib.access import HtmxHttpRequest, staff_view
from preferences.bulk import jobs as bulk
from preferences.bulk.forms import BulkConfirmForm, BulkRunForm
from preferences.models import BulkRun, BulkRunState, EmailCategory
from preferences.services import ChangeRefused

PERMISSION = "audit.run_bulk_change"
RUN_TEMPLATE = "preferences/bulk_run.html"
NEW_TEMPLATE = "preferences/bulk_new.html"


def _category_names() -> dict[str, str]:
    return dict(EmailCategory.objects.values_list("key", "name"))


@require_GET
@staff_view(PERMISSION)
def bulk_runs(request: HtmxHttpRequest) -> HttpResponse:
    names = _category_names()
    runs = [
        (run, bulk.describe(run.channel, run.summary, names))  # type: ignore[attr-defined]
        for run in bulk.runs_for_list()
    ]
    template = "preferences/bulk_list.html"
    if request.htmx and not request.htmx.boosted:
        template += "#runs"
    return render(request, template, {"runs": runs})


def _render_new(request: HtmxHttpRequest, form: BulkRunForm, status: int = 200) -> HttpResponse:
    template = NEW_TEMPLATE
    if request.htmx and not request.htmx.boosted:
        template += "#bulk-main"
    return render(request, template, {"form": form}, status=status)


@require_GET
@staff_view(PERMISSION)
def bulk_new(request: HtmxHttpRequest) -> HttpResponse:
    return _render_new(request, BulkRunForm(categories=list(EmailCategory.objects.all())))


@require_POST
@staff_view(PERMISSION)
def bulk_create(request: HtmxHttpRequest) -> HttpResponse:
    """Make a draft from the filters or the upload and show its preview; nothing is applied."""
    form = BulkRunForm(request.POST, request.FILES, categories=list(EmailCategory.objects.all()))
    if not form.is_valid():
        return _render_new(request, form, status=422)
    actor = request.user
    try:
        upload = form.cleaned_data["upload"]
        if upload:
            run = bulk.draft_from_upload(
                actor=actor,  # type: ignore[arg-type]
                channel=form.cleaned_data["channel"],
                filename=upload.name or "",
                data=upload.read(),
            )
        else:
            run = bulk.draft_from_filters(
                actor=actor,  # type: ignore[arg-type]
                channel=form.cleaned_data["channel"],
                criteria=form.criteria(),
            )
    except bulk.UploadRefused as refused:
        form.add_error("upload", str(refused))
        return _render_new(request, form, status=422)
    except ChangeRefused as refused:
        form.add_error(None, str(refused))
        return _render_new(request, form, status=422)
    url = reverse("preferences:bulk_run", args=[run.pk])
    if request.htmx:
        return push_url(_render_run(request, run), url)
    return redirect(url)


def _render_run(
    request: HtmxHttpRequest,
    run: BulkRun,
    *,
    form: BulkConfirmForm | None = None,
    note: str = "",
    status: int = 200,
) -> HttpResponse:
    context: dict[str, Any] = {
        "run": run,
        "active": run.state in bulk.ACTIVE_STATES,
        "progress": bulk.progress(run),
    }
    template = RUN_TEMPLATE
    if request.htmx and request.htmx.target == "progress":
        # The progress bar polls: only the counts, not the preview or the lists.
        return render(request, template + "#progress", context, status=status)
    context.update(
        selection=bulk.describe(run.channel, run.criteria, _category_names()),
        criteria=bulk.public_criteria(run),
        problems=run.problems,
        bad_rows=run.criteria.get("bad_rows", len(run.problems)),
    )
    if run.state == BulkRunState.DRAFT:
        preview = bulk.preview(run)
        context["preview"] = preview
        context["form"] = form or BulkConfirmForm(initial={"expected": preview.count, "note": note})
    else:
        context["skipped"] = bulk.skipped_items(run)
    if request.htmx and not request.htmx.boosted:
        template += "#bulk-main"
    return render(request, template, context, status=status)


@require_GET
@staff_view(PERMISSION)
def bulk_run(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    runs = BulkRun.objects.all()
    if request.htmx and request.htmx.target == "progress":
        runs = runs.defer("criteria", "problems")  # the poll shows counts only
    return _render_run(request, get_object_or_404(runs, pk=pk))


@require_POST
@staff_view(PERMISSION)
def bulk_confirm(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(BulkRun, pk=pk)
    form = BulkConfirmForm(request.POST)
    if not form.is_valid():
        return _render_run(request, run, form=form, status=422)
    try:
        run = bulk.confirm(
            run_id=run.pk,
            actor=request.user,  # type: ignore[arg-type]
            note=form.cleaned_data["note"],
            expected_total=form.cleaned_data["expected"],
        )
    except bulk.StaleRun as refused:
        # Show the run as it is now (a fresh preview, or its progress), with why.
        messages.error(request, str(refused))
        run = BulkRun.objects.get(pk=pk)
        return _render_run(request, run, note=form.cleaned_data["note"], status=409)
    except ChangeRefused as refused:
        form.add_error(None, str(refused))
        return _render_run(request, run, form=form, status=422)
    messages.success(
        request,
        f"Confirmed: {run.total:,} contacts will be opted out of "
        f"{run.get_channel_display().lower()}, one by one. You can leave this page.",
    )
    if request.htmx:
        return _render_run(request, run)
    return redirect("preferences:bulk_run", pk=pk)


@require_POST
@staff_view(PERMISSION)
def bulk_cancel(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(BulkRun, pk=pk)
    was_draft = run.state == BulkRunState.DRAFT
    try:
        run = bulk.cancel(run_id=run.pk, actor=request.user)  # type: ignore[arg-type]
    except ChangeRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(
            request,
            "Draft discarded: nothing was applied."
            if was_draft
            else "Cancelled. No further contact will be changed; changes already made stay.",
        )
    if request.htmx:
        return _render_run(request, BulkRun.objects.get(pk=pk))
    return redirect("preferences:bulk_run", pk=pk)
