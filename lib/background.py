"""The one seam through which the domain asks for work "soon, after commit".

A change asks for a push, a lookup or a bulk run by the task's *name*: the domain never
imports the tasks that call back into it. The message is sent only once the transaction
commits (a worker must find the rows it is told about), and a broker that is down is
logged and left to the periodic sweeper, which finds whatever is behind: a lost message
delays work but never loses it, and never fails a change that has already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)


def after_commit(name: str, args: Sequence[Any] = (), *, countdown: float | None = None) -> None:
    """Queue task `name` once the current transaction commits (at once outside one)."""
    transaction.on_commit(partial(send, name, args, countdown=countdown))


def send(name: str, args: Sequence[Any] = (), *, countdown: float | None = None) -> bool:
    """Queue task `name` now; False (logged) if the broker could not take it."""
    try:
        current_app.send_task(name, args=list(args), countdown=countdown)
    except Exception:  # the broker is down or unreachable: the sweeper will catch up
        logger.warning(
            "Could not queue %s%s; the sweeper will run it", name, tuple(args), exc_info=True
        )
        return False
    return True
