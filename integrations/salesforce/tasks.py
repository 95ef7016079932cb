"""The inbound pull, every SYNC_PULL_SECONDS (the push is the sync core's task)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from integrations.salesforce import sync

PULL_TASK = "integrations.salesforce.tasks.pull_from_salesforce"


@shared_task(name=PULL_TASK, ignore_result=True)
def pull_from_salesforce() -> int:
    if not settings.SALESFORCE_ENABLED:
        return 0
    return sync.pull_from_salesforce()
