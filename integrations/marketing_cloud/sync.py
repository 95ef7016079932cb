"""The Marketing Cloud target: after an email re-enrolment, look the contact's subscriber up in
every active business unit and open the re-subscribe requests needed (docs/design.md,
docs/design.md, rule 8).

The lookup rides on the state-based sync (integrations/core.py): every change marks the
contact's Marketing Cloud row pending; check_batch() claims due rows with a lease and, for
the email re-enrolments in (synced_version, version], reads the statuses and opens
requests. Changes that are not email re-enrolments are marked done without a call. A
repeated lookup is harmless: one open request may exist per contact and business unit.

Network calls are never made inside a database transaction: read first, then write.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations import core
from integrations.base import ConnectorError, TransientError, describe
from integrations.marketing_cloud.client import MarketingCloudClient
from preferences.models import (
    NEEDS_RESUBSCRIBE,
    RESUBSCRIBE_OPEN_STATES,
    BusinessUnit,
    Contact,
    ContactSync,
    ResubscribeRequest,
    SubscriberStatusValue,
)
from preferences.resubscribe.requests import (
    LOOKUP_ACTOR,
    close_found_active,
    open_request,
    opted_out_of_email,
    save_statuses,
)

logger = logging.getLogger(__name__)

TARGET = "marketing_cloud"
# Contacts per task run. Most rows need no call at all (no re-enrolment); one that does
# costs a call per business unit, so a run stays well inside the claim lease.
BATCH = 50


@dataclass
class CheckOutcome(core.BatchOutcome):
    looked_up: int = 0
    opened: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "claimed": self.claimed,
            "looked_up": self.looked_up,
            "opened": self.opened,
            "retry": self.retry,
            "failed": self.failed,
        }


def _email_re_enrolments(
    rows: list[ContactSync], versions: dict[int, int]
) -> dict[int, AuditEntry]:
    """The newest email re-enrolment each contact has not been checked for."""
    window = Q(pk__in=[])
    for row in rows:
        window |= Q(
            contact_id=row.contact_id,
            contact_version__gt=row.synced_version,
            contact_version__lte=versions[row.contact_id],
        )
    newest: dict[int, AuditEntry] = {}
    entries = AuditEntry.objects.filter(
        window,
        action=AuditAction.RE_ENROLMENT,
        # A phone re-enrolment that also ticks categories lists email among its channels:
        # the snapshots say whether the email opt-out itself was cleared.
        before__opted_out__email=True,
        after__opted_out__email=False,
    ).order_by("id")
    for entry in entries:
        newest[entry.contact_id] = entry  # type: ignore[index]
    return newest


def check_batch(limit: int = BATCH) -> CheckOutcome:
    """Claim up to `limit` contacts behind in Marketing Cloud, look up the re-enrolled ones
    in every active business unit, open the requests needed and record each result."""
    now = timezone.now()
    token, rows = core.claim(TARGET, limit, now)
    outcome = CheckOutcome(claimed=len(rows))
    if not rows:
        return outcome
    # Versions before entries (as in the Salesforce push): a change committing in between
    # is then simply checked next time, never marked checked unseen.
    versions = dict(
        Contact.objects.filter(pk__in=[r.contact_id for r in rows]).values_list("pk", "version")
    )
    re_enrolments = _email_re_enrolments(rows, versions)
    units = list(BusinessUnit.objects.filter(is_active=True))
    opted_out = opted_out_of_email(list(re_enrolments))
    to_look_up = [
        row
        for row in rows
        if units and row.contact_id in re_enrolments and row.contact_id not in opted_out
    ]
    # Nothing to look up (no email re-enrolment, opted out again since): checked, no call.
    quiet = [(row, versions[row.contact_id]) for row in rows if row not in to_look_up]
    core.record_successes(quiet, token, now)
    outcome.synced += len(quiet)
    if not to_look_up:
        return outcome

    keys = dict(
        Contact.objects.filter(pk__in=[r.contact_id for r in to_look_up]).values_list(
            "pk", "salesforce_id"
        )
    )
    mids = [unit.mid for unit in units]
    pending = list(to_look_up)
    try:
        with MarketingCloudClient() as client:
            while pending:
                row = pending[0]
                try:
                    statuses = client.subscriber_statuses(keys[row.contact_id], mids)
                except TransientError:
                    raise
                except (ConnectorError, ValueError) as error:  # this contact only
                    pending.pop(0)
                    _record_failure(row, token, error)
                    outcome.failed += 1
                    continue
                pending.pop(0)
                outcome.looked_up += 1
                seen = {u: statuses.get(u.mid, SubscriberStatusValue.NOT_FOUND) for u in units}
                opened = _record_lookup(
                    row, token, versions[row.contact_id], re_enrolments[row.contact_id], seen
                )
                if opened is not None:
                    outcome.synced += 1
                    outcome.opened += opened
    except ConnectorError as error:
        # A passing failure (timeout, 5xx, a token that would not renew): the service is
        # likely down for the rest of the batch too, so all of it waits and is retried.
        message = describe(error)
        done = timezone.now()
        for row in pending:
            retry_at = done + timedelta(seconds=core.retry_delay(row.attempts + 1))
            core.record_transient(row, token, message, done, retry_at)
            outcome.retry += 1
            if outcome.next_attempt_at is None or retry_at < outcome.next_attempt_at:
                outcome.next_attempt_at = retry_at
        logger.warning("Marketing Cloud lookup of %d contacts deferred: %s", len(pending), message)
    return outcome


def _record_failure(row: ContactSync, token: uuid.UUID, error: Exception) -> None:
    core.record_permanent(
        row,
        token,
        describe(error),
        timezone.now(),
        system=LOOKUP_ACTOR,
        refused="Marketing Cloud refused the subscriber lookup",
    )


def _record_lookup(
    row: ContactSync,
    token: uuid.UUID,
    version: int,
    re_enrolment: AuditEntry,
    statuses: dict[BusinessUnit, str],
) -> int | None:
    """Record what was read and open the requests needed, in one transaction; returns how
    many were opened, or None when the claim was lost (another worker took the row after
    the lease ran out, and records its own reading)."""
    read_at = timezone.now()
    with transaction.atomic():
        # The contact's row lock orders this with apply_change: an opt-out that commits
        # first is seen below, one that commits after closes what is opened here.
        contact = Contact.objects.select_for_update().get(pk=row.contact_id)
        if not core.record_successes([(row, version)], token, read_at):
            return None
        save_statuses(contact, statuses, read_at)
        if opted_out_of_email([contact.pk]):
            return 0  # opted out again since the re-enrolment: nothing to resubscribe
        opened = [
            open_request(
                contact=contact, business_unit=unit, status_seen=status, re_enrolment=re_enrolment
            )
            for unit, status in statuses.items()
            if status in NEEDS_RESUBSCRIBE
        ]
    return sum(request is not None for request in opened)


# --- the nightly refresh -----------------------------------------------------------------------

STALE_AFTER = timedelta(days=7)
REFRESH_LIMIT = 1_000  # requests read again a night: a call each


def refresh_stale_requests() -> str:
    """Open re-subscribe requests older than a week: read the subscriber's status in that
    business unit again, so the queue shows what Marketing Cloud says now. One found Active
    is closed as done (someone resubscribed them in Marketing Cloud itself)."""
    cutoff = timezone.now() - STALE_AFTER
    stale = (
        ResubscribeRequest.objects.filter(
            state__in=RESUBSCRIBE_OPEN_STATES, requested_at__lt=cutoff
        )
        .select_related("contact", "business_unit")
        .order_by("requested_at")[:REFRESH_LIMIT]
    )
    read = closed = 0
    with MarketingCloudClient() as client:
        for request in stale:
            status = client.subscriber_status(
                request.contact.salesforce_id, request.business_unit.mid
            )
            read_at = timezone.now()
            save_statuses(request.contact, {request.business_unit: status}, read_at)
            read += 1
            if status == SubscriberStatusValue.ACTIVE:
                closed += close_found_active(request_id=request.pk, read_at=read_at)
    return f"{read} open requests older than a week read again; {closed} found Active and closed"


# Registered when the sync core discovers this module (integrations/core.py).
core.register(
    core.Target(
        name=TARGET,
        label="Marketing Cloud",
        enabled_setting="MARKETING_CLOUD_ENABLED",
        push=check_batch,
        batch_size=BATCH,
        pending_hint="subscriber lookup if re-enrolled",
        disabled_hint="Marketing Cloud is not connected: checks wait",
        refresh=refresh_stale_requests,
    )
)
