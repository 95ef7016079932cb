"""Celery tasks: thin adapters that call the sync functions and own the retry policy.

Every task is safe to run twice or concurrently: rows are claimed with SKIP LOCKED and a
lease, pushes carry absolute values, notes are upserted on their change id.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from preferences import ascend, bulk, resubscribe, sync
from preferences.models import SyncTarget

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


@shared_task(acks_late=True, ignore_result=True)
def check_marketing_cloud() -> dict[str, int]:
    """Look up re-enrolled contacts in Marketing Cloud and open re-subscribe requests."""
    if not settings.MARKETING_CLOUD_ENABLED:
        return {}  # the rows stay pending until Marketing Cloud is configured
    outcome = resubscribe.check_batch()
    if outcome.claimed == resubscribe.BATCH:
        check_marketing_cloud.delay()  # a full batch: more may be waiting
    if outcome.next_attempt_at is not None:
        check_marketing_cloud.apply_async(eta=outcome.next_attempt_at)
    return {
        "claimed": outcome.claimed,
        "looked_up": outcome.looked_up,
        "opened": outcome.opened,
        "retry": outcome.retry,
        "failed": outcome.failed,
    }


@shared_task(ignore_result=True)
def sweep() -> int:
    """Re-send whatever is behind: a lost message, a dead worker, a retry that is due."""
    due = 0
    # One task per batch, so several workers can share a backlog.
    if settings.SALESFORCE_ENABLED:
        behind = sync.due_count(SyncTarget.SALESFORCE)
        for _ in range(min(-(-behind // sync.MAX_RECORDS), 20)):
            push_to_salesforce.delay()
        due += behind
    if settings.MARKETING_CLOUD_ENABLED:
        behind = sync.due_count(SyncTarget.MARKETING_CLOUD)
        for _ in range(min(-(-behind // resubscribe.BATCH), 20)):
            check_marketing_cloud.delay()
        due += behind
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


@shared_task(acks_late=True, ignore_result=True)
def run_bulk_change(run_id: int) -> str:
    """Work a confirmed bulk run for one time slice, then queue the rest.

    A duplicate message (a redelivery, resume_bulk_runs) finds the run held and returns.
    """
    outcome = bulk.process(run_id, max_seconds=bulk.SLICE_SECONDS)
    if outcome == bulk.MORE:
        run_bulk_change.delay(run_id)
    return outcome


@shared_task(ignore_result=True)
def resume_bulk_runs() -> int:
    """Queue confirmed runs no worker holds: a lost message, or a worker that died."""
    run_ids = bulk.runs_to_resume()
    for run_id in run_ids:
        run_bulk_change.delay(run_id)
    return len(run_ids)
