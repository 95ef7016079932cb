"""Celery tasks of bulk changes: thin adapters that call preferences/bulk/jobs.py.

A duplicate message (a redelivery, resume_bulk_runs) finds the run held and returns.
"""

from __future__ import annotations

from celery import shared_task

from preferences.bulk import jobs


@shared_task(name=jobs.RUN_TASK, acks_late=True, ignore_result=True)
def run_bulk_change(run_id: int) -> str:
    """Work a confirmed bulk run for one time slice, then queue the rest."""
    outcome = jobs.process(run_id, max_seconds=jobs.SLICE_SECONDS)
    if outcome == jobs.MORE:
        run_bulk_change.delay(run_id)
    return outcome


@shared_task(name="preferences.tasks.resume_bulk_runs", ignore_result=True)
def resume_bulk_runs() -> int:
    """Queue confirmed runs no worker holds: a lost message, or a worker that died."""
    run_ids = jobs.runs_to_resume()
    for run_id in run_ids:
        run_bulk_change.delay(run_id)
    return len(run_ids)
