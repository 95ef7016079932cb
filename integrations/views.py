"""Sync problems (system team): what failed or keeps failing, for every target, and Retry."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from integrations import core
from lib.access import HtmxHttpRequest, staff_view
from preferences.models import ContactSync, SyncStatus


@require_GET
@staff_view("preferences.manage_sync")
def sync_problems(request: HtmxHttpRequest) -> HttpResponse:
    problems = list(
        ContactSync.objects.filter(
            Q(status=SyncStatus.FAILED) | Q(status=SyncStatus.PENDING, attempts__gt=0)
        )
        .select_related("contact")
        .order_by("status", "-updated_at")[:500]
    )
    for problem in problems:
        problem.target_label = core.label(problem.target)  # type: ignore[attr-defined]
    return render(request, "integrations/sync_problems.html", {"problems": problems})


@require_POST
@staff_view("preferences.manage_sync")
def sync_retry(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    sync_row = get_object_or_404(ContactSync.objects.select_related("contact"), pk=pk)
    try:
        core.retry_failed(sync_id=sync_row.pk, actor=request.user)  # type: ignore[arg-type]
    except core.SyncRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(
            request, f"{sync_row.contact} will be sent to {core.label(sync_row.target)} again."
        )
    return redirect("preferences:sync_problems")
