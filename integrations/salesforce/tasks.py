"""The inbound pull, every SYNC_PULL_SECONDS, and the read-back of pushes that got no answer,
every SYNC_VERIFY_SECONDS (the push itself is the sync core's task)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from integrations.salesforce import inbound, sync

PULL_TASK = "integrations.salesforce.tasks.pull_from_salesforce"
VERIFY_TASK = "integrations.salesforce.tasks.verify_uncertain"


@shared_task(name=PULL_TASK, ignore_result=True)
def pull_from_salesforce() -> int:
    if not settings.SALESFORCE_ENABLED:
        return 0
    return inbound.pull_from_salesforce()


@shared_task(name=VERIFY_TASK, ignore_result=True)
def verify_uncertain() -> dict[str, int]:
    if not settings.SALESFORCE_ENABLED:
        return {}
    outcome = sync.verify_uncertain()
    if outcome.read == sync.MAX_RECORDS:
        verify_uncertain.delay()  # a full batch: more may be due
    return vars(outcome)
