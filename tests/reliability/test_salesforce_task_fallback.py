"""Notes as Tasks in an org whose Task field cannot be an External ID
(SALESFORCE_TASK_MATCH "query"), with real processes: Celery workers and beat on a private
Redis, against the HTTPS Salesforce stand-in, as tests/reliability/test_salesforce_sync.py.

Without an upsert nothing in Salesforce stops a second Task for the same change: the app
looks for the change's Task before creating it. A worker killed while its request is still
on its way leaves that request to land later than the query of the worker that takes its
rows over; exactly one Task per change must still come out of it (docs/design.md, "Sent is
not held").
"""

from __future__ import annotations

import time
from typing import Any

from preferences.models import ContactSync, SyncStatus
from tests.reliability.conftest import (
    CeleryProcesses,
    RecordingStandIn,
    make_contacts,
    wait_for,
)
from tests.reliability.test_salesforce_sync import (
    SALESFORCE,
    TASK_EXTERNAL_ID,
    apply_varied_changes,
    assert_one_task_per_change,
    assert_standin_equals_database,
    wait_until_synced,
)

# Salesforce answers the pushes in flight when the worker dies after LATENCY seconds: later
# than the claim lease (SYNC_CLAIM_LEASE_SECONDS, 5 s here) runs out, so another worker
# takes those rows while the dead one's request has yet to land. No request outlives
# MAX_REQUEST seconds here, as none outlives Salesforce's 10 minutes in production.
LATENCY = 15.0
MAX_REQUEST = "25"
QUERY_MODE = {"SALESFORCE_TASK_MATCH": "query", "SALESFORCE_MAX_REQUEST_SECONDS": MAX_REQUEST}


def test_a_worker_killed_mid_push_in_query_mode_leaves_exactly_one_task_per_change(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
) -> None:
    # Not an External ID, and not unique: Salesforce itself would take a duplicate.
    standin.set_field("Task", TASK_EXTERNAL_ID, externalId=False, idLookup=False, unique=False)
    contacts = make_contacts(standin, 400)
    apply_varied_changes(contacts, specialist)

    standin.fail("latency", seconds=LATENCY, path_contains="/composite")
    worker = celery.worker(concurrency=2, wait=False, **QUERY_MODE)
    celery.beat(wait=False, **QUERY_MODE)
    celery.wait_ready()
    wait_for(lambda: standin.received_composites() >= 1, 30, "the first composite call")
    sent = standin.received_composites()
    in_flight = sent - len(standin.composite_calls())
    killed_at = time.monotonic()
    worker.kill()
    assert in_flight >= 1, "the worker was killed between batches, not inside one"
    # Marked before it was sent: the next push knows that request may still land.
    assert ContactSync.objects.filter(target=SALESFORCE, uncertain_since__isnull=False).exists()

    standin.clear_faults()  # the requests already held still land LATENCY s after arriving
    celery.restart(worker)
    wait_until_synced(contacts, timeout=120)
    # Judged once the dead worker's requests have landed too: a Task they create after
    # the app's query would be the duplicate.
    wait_for(
        lambda: sum(call.at < killed_at for call in standin.composite_calls()) >= sent,
        LATENCY + 10,
        "the dead worker's requests to land",
    )

    assert_standin_equals_database(standin, contacts)
    assert_one_task_per_change(standin, contacts)
    calls = standin.composite_calls()
    dead = [call for call in calls if call.at < killed_at]
    assert all(call.status == 200 for call in dead)  # landed, answered to no one
    landed_at = max(call.done for call in dead)
    carried = {change for call in dead for change in call.task_ids}
    held_back = [call for call in calls if killed_at < call.at < landed_at]
    # The rows were taken over while the dead worker's request was still on its way: their
    # values went again, their notes waited, and once that request could no longer be
    # running the query found its Tasks, so none of them was ever sent a second time.
    assert held_back, "no push took the rows over before the dead worker's request landed"
    assert {i for call in held_back for i in call.contact_ids} & {
        i for call in dead for i in call.contact_ids
    }
    assert carried and not carried & {
        change for call in calls if call.at > killed_at for change in call.task_ids
    }
    assert ContactSync.objects.filter(target=SALESFORCE, status=SyncStatus.SYNCED).count() == 400
    assert not ContactSync.objects.filter(target=SALESFORCE, uncertain_since__isnull=False).exists()
