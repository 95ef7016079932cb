"""Celery tasks of the sync core: thin adapters that own the retry policy.

Every task is safe to run twice or concurrently: rows are claimed with SKIP LOCKED and a
lease, pushes carry absolute values, notes are upserted on their change id.
"""

from __future__ import annotations

import logging

from celery import shared_task

from integrations import core, reconcile

logger = logging.getLogger(__name__)

SWEEP_TASK = "integrations.tasks.sweep"
RECONCILE_TASK = "integrations.tasks.reconcile_nightly"


@shared_task(name=core.PUSH_TASK, acks_late=True, ignore_result=True)
def push(target: str) -> dict[str, int]:
    """Push one batch of a target's contacts that are behind."""
    found = core.target(target)
    if found.push is None or not found.enabled:
        return {}  # the rows stay pending until the target is configured
    outcome = found.push()
    if outcome.claimed == found.batch_size:
        push.delay(target)  # a full batch: more may be waiting
    if outcome.next_attempt_at is not None:
        push.apply_async(args=[target], eta=outcome.next_attempt_at)
    return outcome.counts()


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    """Re-send whatever is behind: a lost message, a dead worker, a retry that is due."""
    return core.sweep()


@shared_task(name=RECONCILE_TASK, acks_late=True, ignore_result=True)
def reconcile_nightly() -> dict[str, int]:
    """Compare every system with the app (integrations/reconcile.py)."""
    try:
        runs = reconcile.run()
    except reconcile.ReconcileBusy:  # a redelivery, or a run by hand: that one is enough
        logger.info("A reconciliation is running already")
        return {}
    return {run.system: run.total_found for run in runs}
