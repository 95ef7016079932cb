"""Ascend files (system team): every nightly run, its window, checksum and delivery."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from lib.access import HtmxHttpRequest, staff_view
from preferences.models import AscendRun


@require_GET
@staff_view("preferences.manage_sync")
def ascend_runs(request: HtmxHttpRequest) -> HttpResponse:
    runs = AscendRun.objects.all()[:200]
    return render(request, "integrations/ascend_runs.html", {"runs": runs})
