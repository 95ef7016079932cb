"""The nightly file, at ASCEND_HOUR_UTC (config/settings.py, CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from integrations.ascend import sync

NIGHTLY_TASK = "integrations.ascend.tasks.ascend_nightly"


@shared_task(name=NIGHTLY_TASK, acks_late=True, ignore_result=True)
def ascend_nightly() -> str:
    return str(sync.export())
