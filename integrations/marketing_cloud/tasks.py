"""The pull of Marketing Cloud's tracking events, every MARKETING_CLOUD_TRACKING_SECONDS
(docs/design.md, "Events from email platforms")."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from integrations.marketing_cloud import tracking

PULL_TRACKING_TASK = "integrations.marketing_cloud.tasks.pull_tracking_events"


@shared_task(name=PULL_TRACKING_TASK, ignore_result=True)
def pull_tracking_events() -> dict[str, int]:
    if not settings.MARKETING_CLOUD_ENABLED:
        return {}
    outcome = tracking.pull_tracking_events()
    return {"stored": outcome.stored, "known": outcome.known, "failed": len(outcome.failed)}
