"""Celery tasks: thin adapters that call the sync functions and own the retry policy.

Every task is safe to run twice or concurrently: rows are claimed with SKIP LOCKED and a
lease, pushes carry absolute values, notes are upserted on their change id.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from preferences import ascend, sync

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
def push_to_salesforce() -> dict[str, int]:
    if not settings.SALESFORCE_ENABLED:
        return {}
    outcome = sync.push_salesforce_batch()
    if outcome.claimed == sync.MAX_RECORDS:
        push_to_salesforce.delay()  # a full batch: more may be waiting
    if outcome.next_attempt_at is not None:
        push_to_salesforce.apply_async(eta=outcome.next_attempt_at)
    return {
        "claimed": outcome.claimed,
        "synced": outcome.synced,
        "retry": outcome.retry,
        "failed": outcome.failed,
    }


@shared_task(ignore_result=True)
def sweep() -> int:
    """Re-send whatever is behind: a lost message, a dead worker, a retry that is due."""
    if not settings.SALESFORCE_ENABLED:
        return 0
    due = sync.due_count()
    # One task per batch, so several workers can share a backlog.
    for _ in range(min(-(-due // sync.MAX_RECORDS), 20)):
        push_to_salesforce.delay()
    return due


@shared_task(ignore_result=True)
def pull_from_salesforce() -> int:
    if not settings.SALESFORCE_ENABLED:
        return 0
    return sync.pull_from_salesforce()


@shared_task(acks_late=True, ignore_result=True)
def ascend_nightly() -> str:
    run = ascend.export()
    return str(run)
