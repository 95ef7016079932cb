"""The worker that applies stored email-platform events (preferences/events/intake.py)."""

from celery import shared_task

from preferences.events import intake


@shared_task(name=intake.APPLY_TASK, acks_late=True, ignore_result=True)
def apply_platform_events() -> int:
    """Apply what is stored; the beat runs it too, so an event whose message was lost is
    applied within a minute."""
    total = 0
    while applied := intake.apply_pending():
        total += applied
    return total
