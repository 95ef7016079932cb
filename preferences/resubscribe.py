"""The re-subscribe request queue (rule 8).

After an email re-enrolment the contact's Marketing Cloud subscriber (key: the 18-character
Salesforce Contact ID) is looked up in every active business unit. Active or not found:
nothing to do, the status is recorded. Bounced, Held or Unsubscribed: a request is opened
for the system team, who work it open -> in progress -> done (in Marketing Cloud through
the connector, or by hand) or rejected; a specialist can mark it urgent.

The lookup rides on the state-based sync (preferences/sync.py): every change marks the
contact's Marketing Cloud row pending; check_batch() claims due rows with a lease and, for
the email re-enrolments in (synced_version, version], reads the statuses and opens
requests. A repeated lookup is harmless: the partial unique constraint
one_open_request_per_business_unit lets one open request exist per business unit.

Network calls are never made inside a database transaction: read first, then write.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from preferences import sync
from preferences.models import (
    NEEDS_RESUBSCRIBE,
    RESUBSCRIBE_OPEN_STATES,
    BusinessUnit,
    Channel,
    ChannelPreference,
    Contact,
    ContactSync,
    ResubscribeRequest,
    ResubscribeState,
    Source,
    SubscriberStatus,
    SubscriberStatusValue,
    SyncStatus,
    SyncTarget,
)
from preferences.services import ChangeRefused

logger = logging.getLogger(__name__)

LOOKUP_ACTOR = "Marketing Cloud check"
QUEUE_ACTOR = "Re-subscribe queue"
# Contacts per task run. Most rows need no call at all (no re-enrolment); one that does
# costs a call per business unit, so a run stays well inside the claim lease.
BATCH = 50
_ONE_OPEN = "one_open_request_per_business_unit"


@dataclass
class CheckOutcome:
    claimed: int = 0
    looked_up: int = 0
    synced: int = 0
    opened: int = 0
    retry: int = 0
    failed: int = 0
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class ResubscribeResult:
    request: ResubscribeRequest
    status: str | None  # what Marketing Cloud said after the change; None: not re-read
    problem: str = ""  # for staff, when the change may not have taken


# --- the lookup after a re-enrolment ----------------------------------------------------------


def enqueue_check() -> None:
    """Ask a worker to look up soon. Losing the message only delays it: the sweeper finds
    rows that are behind."""
    if not settings.MARKETING_CLOUD_ENABLED:
        return
    from preferences.tasks import check_marketing_cloud

    try:
        check_marketing_cloud.apply_async(countdown=settings.SYNC_PUSH_DELAY_SECONDS)
    except Exception:  # the broker is down or unreachable
        logger.warning(
            "Could not queue the Marketing Cloud check; the sweeper will run it", exc_info=True
        )


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


def _opted_out_of_email(contact_ids: Sequence[int]) -> set[int]:
    return set(
        ChannelPreference.objects.filter(
            contact_id__in=contact_ids, channel=Channel.EMAIL, opted_out=True
        ).values_list("contact_id", flat=True)
    )


def check_batch(limit: int = BATCH) -> CheckOutcome:
    """Claim up to `limit` contacts behind in Marketing Cloud, look up the re-enrolled ones
    in every active business unit, open the requests needed and record each result."""
    from preferences.marketing_cloud import (
        MarketingCloudClient,
        MarketingCloudError,
        TransientError,
    )

    now = timezone.now()
    token, rows = sync.claim(SyncTarget.MARKETING_CLOUD, limit, now)
    outcome = CheckOutcome(claimed=len(rows))
    if not rows:
        return outcome
    # Versions before entries (as in sync._build_pushes): a change committing in between
    # is then simply checked next time, never marked checked unseen.
    versions = dict(
        Contact.objects.filter(pk__in=[r.contact_id for r in rows]).values_list("pk", "version")
    )
    re_enrolments = _email_re_enrolments(rows, versions)
    units = list(BusinessUnit.objects.filter(is_active=True))
    opted_out = _opted_out_of_email(list(re_enrolments))
    to_look_up = [
        row
        for row in rows
        if units and row.contact_id in re_enrolments and row.contact_id not in opted_out
    ]
    # Nothing to look up (no email re-enrolment, opted out again since): checked, no call.
    quiet = [(row, versions[row.contact_id]) for row in rows if row not in to_look_up]
    sync.record_successes(quiet, token, now)
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
                except (MarketingCloudError, ValueError) as error:  # this contact only
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
    except MarketingCloudError as error:
        # A passing failure (timeout, 5xx, a token that would not renew): the service is
        # likely down for the rest of the batch too, so all of it waits and is retried.
        message = _message(error)
        done = timezone.now()
        for row in pending:
            retry_at = done + timedelta(seconds=sync.retry_delay(row.attempts + 1))
            sync.record_transient(row, token, message, done, retry_at)
            outcome.retry += 1
            if outcome.next_attempt_at is None or retry_at < outcome.next_attempt_at:
                outcome.next_attempt_at = retry_at
        logger.warning("Marketing Cloud lookup of %d contacts deferred: %s", len(pending), message)
    return outcome


def _message(error: Exception) -> str:
    code = getattr(error, "code", type(error).__name__)
    detail = getattr(error, "message", str(error))
    return f"{code}: {detail}"


def _record_failure(row: ContactSync, token: uuid.UUID, error: Exception) -> None:
    sync.record_permanent(
        row,
        token,
        _message(error),
        timezone.now(),
        actor_label=LOOKUP_ACTOR,
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
        claimed = ContactSync.objects.filter(pk=row.pk, claim=token).update(
            synced_version=max(row.synced_version, version),
            status=SyncStatus.SYNCED if version >= contact.version else SyncStatus.PENDING,
            synced_at=read_at,
            last_error="",
            attempts=0,
            next_attempt_at=None,
            claim=None,
            claimed_until=None,
            updated_at=read_at,
        )
        if not claimed:
            return None
        _save_statuses(contact, statuses, read_at)
        if _opted_out_of_email([contact.pk]):
            return 0  # opted out again since the re-enrolment: nothing to resubscribe
        opened = [
            open_request(
                contact=contact, business_unit=unit, status_seen=status, re_enrolment=re_enrolment
            )
            for unit, status in statuses.items()
            if status in NEEDS_RESUBSCRIBE
        ]
    return sum(request is not None for request in opened)


def _save_statuses(contact: Contact, statuses: dict[BusinessUnit, str], read_at: datetime) -> None:
    SubscriberStatus.objects.bulk_create(
        [
            SubscriberStatus(contact=contact, business_unit=unit, status=status, read_at=read_at)
            for unit, status in statuses.items()
        ],
        update_conflicts=True,
        unique_fields=["contact", "business_unit"],
        update_fields=["status", "read_at"],
    )


def open_request(
    *,
    contact: Contact,
    business_unit: BusinessUnit,
    status_seen: str,
    re_enrolment: AuditEntry,
) -> ResubscribeRequest | None:
    """Open a request with its audit entry; None if one is open for that business unit
    already. Call inside a transaction."""
    if status_seen not in NEEDS_RESUBSCRIBE:
        raise ValueError(f"{status_seen} needs no re-subscribe request")
    try:
        with transaction.atomic():  # a savepoint: a conflict must not end the caller's work
            request = ResubscribeRequest.objects.create(
                contact=contact,
                business_unit=business_unit,
                status_seen=status_seen,
                requested_by=re_enrolment.actor,
                requested_at=re_enrolment.created_at,
                re_enrolment=re_enrolment,
                consent=re_enrolment.consent,
            )
    except IntegrityError as error:
        if getattr(getattr(error.__cause__, "diag", None), "constraint_name", "") != _ONE_OPEN:
            raise
        return None
    status = SubscriberStatusValue(status_seen).label
    AuditEntry.objects.create(
        actor=None,
        actor_label=LOOKUP_ACTOR,
        source=Source.SYSTEM,
        action=AuditAction.RESUBSCRIBE_REQUEST,
        contact=contact,
        channels=[Channel.EMAIL],
        note=(
            f"Re-subscribe request opened for {business_unit} (MID {business_unit.mid}): the "
            f"subscriber is {status} there. Re-enrolled by {re_enrolment.actor_label} on "
            f"{timezone.localtime(re_enrolment.created_at):%d %b %Y, %H:%M} "
            f"(change PD-{re_enrolment.pk})."
        ),
        resubscribe_request=request,
    )
    return request


# --- called by apply_change -----------------------------------------------------------------


def after_change(*, contact: Contact, entry: AuditEntry, queue_check: bool = True) -> None:
    """apply_change calls this inside its transaction, after writing the entry: an email
    opt-out closes the contact's open requests, and the change is checked after commit
    (a bulk run queues one check per chunk instead)."""
    was_out = entry.before.get("opted_out", {}).get(Channel.EMAIL, False)
    now_out = entry.after.get("opted_out", {}).get(Channel.EMAIL, False)
    if now_out and not was_out:
        _close_for_opt_out(contact, entry)
    if queue_check:
        transaction.on_commit(enqueue_check)


def _close_for_opt_out(contact: Contact, entry: AuditEntry) -> None:
    requests = ResubscribeRequest.objects.select_for_update(of=("self",)).select_related(
        "business_unit"
    )
    for request in requests.filter(contact=contact, state__in=RESUBSCRIBE_OPEN_STATES):
        reason = (
            f"the contact opted out of email again (change PD-{entry.pk} by {entry.actor_label})"
        )
        request.state = ResubscribeState.CLOSED
        request.closed_at = entry.created_at
        request.outcome = f"Closed automatically: {reason}."
        request.save(update_fields=["state", "closed_at", "outcome", "updated_at"])
        AuditEntry.objects.create(
            actor=None,
            actor_label=QUEUE_ACTOR,
            source=Source.SYSTEM,
            action=AuditAction.RESUBSCRIBE_REQUEST,
            contact=contact,
            channels=[Channel.EMAIL],
            note=f"Re-subscribe request for {request.business_unit} closed automatically: "
            f"{reason}.",
            resubscribe_request=request,
        )


# --- working a request ----------------------------------------------------------------------


def _required(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ChangeRefused(what)
    return text


def _locked(request_id: int) -> ResubscribeRequest:
    return (
        ResubscribeRequest.objects.select_for_update(of=("self",))
        .select_related("business_unit", "contact")
        .get(pk=request_id)
    )


def _refuse_unless_open(request: ResubscribeRequest) -> None:
    if not request.is_open:
        raise ChangeRefused(
            f"This request is {request.get_state_display().lower()} already: nothing was changed."
        )


def _subject(request: ResubscribeRequest) -> str:
    return f"Re-subscribe request for {request.business_unit}"


def _log_step(
    request: ResubscribeRequest, actor: User, note: str, *, action: str = ""
) -> AuditEntry:
    return AuditEntry.objects.create(
        actor=actor,
        actor_label=actor.get_username(),
        source=Source.STAFF,
        action=action or AuditAction.RESUBSCRIBE_REQUEST,
        contact_id=request.contact_id,
        channels=[Channel.EMAIL],
        note=note,
        resubscribe_request=request,
    )


def start(*, request_id: int, actor: User, note: str) -> ResubscribeRequest:
    """A system team member takes the request: open -> in progress."""
    note = _required(note, "Write a note: what are you about to do?")
    with transaction.atomic():
        request = _locked(request_id)
        if request.state != ResubscribeState.OPEN:
            _refuse_unless_open(request)
            raise ChangeRefused("This request is in progress already.")
        request.state = ResubscribeState.IN_PROGRESS
        request.worked_by = actor
        request.save(update_fields=["state", "worked_by", "updated_at"])
        _log_step(request, actor, f"{_subject(request)} in progress: {note}")
    return request


def complete(*, request_id: int, actor: User, note: str) -> ResubscribeRequest:
    """Closed as done by hand (resubscribed in Marketing Cloud's own screens, say)."""
    note = _required(note, "Write a note: what was done?")
    with transaction.atomic():
        request = _locked(request_id)
        _refuse_unless_open(request)
        _close(request, actor, ResubscribeState.DONE, f"Done by hand: {note}")
        _log_step(request, actor, f"{_subject(request)} done by hand: {note}")
    return request


def reject(*, request_id: int, actor: User, note: str) -> ResubscribeRequest:
    note = _required(note, "Write a note: why is the request rejected?")
    with transaction.atomic():
        request = _locked(request_id)
        _refuse_unless_open(request)
        _close(request, actor, ResubscribeState.REJECTED, f"Rejected: {note}")
        _log_step(request, actor, f"{_subject(request)} rejected: {note}")
    return request


def _close(request: ResubscribeRequest, actor: User, state: str, outcome: str) -> None:
    request.state = state
    request.worked_by = actor
    request.outcome = outcome
    request.closed_at = timezone.now()
    request.save(update_fields=["state", "worked_by", "outcome", "closed_at", "updated_at"])


def mark_urgent(*, request_id: int, actor: User, reason: str, link: str = "") -> ResubscribeRequest:
    """A specialist flags the request (it goes to the top of the queue) and the system team
    is emailed at RESUBSCRIBE_NOTIFY_EMAIL once the flag is committed."""
    reason = _required(reason, "Say why the request is urgent.")
    with transaction.atomic():
        request = _locked(request_id)
        _refuse_unless_open(request)
        if request.urgent:
            raise ChangeRefused("This request is marked urgent already.")
        request.urgent = True
        request.urgent_reason = reason
        request.save(update_fields=["urgent", "urgent_reason", "updated_at"])
        _log_step(request, actor, f"{_subject(request)} marked urgent: {reason}")
        transaction.on_commit(lambda: _email_urgent(request, actor, link))
    return request


def _email_urgent(request: ResubscribeRequest, actor: User, link: str) -> None:
    recipient = settings.RESUBSCRIBE_NOTIFY_EMAIL
    if not recipient:
        return
    contact = request.contact
    lines = [
        f"{actor.get_username()} marked a re-subscribe request urgent.",
        "",
        f"Contact: {contact} (Salesforce ID {contact.salesforce_id})",
        f"Email: {contact.email or 'none'}",
        f"Business unit: {request.business_unit} (MID {request.business_unit.mid})",
        f"Status seen: {request.get_status_seen_display()}",
        f"Reason: {request.urgent_reason}",
    ]
    if link:
        lines += ["", f"Open the request: {link}"]
    try:
        send_mail(
            subject=f"Urgent re-subscribe request: {contact} in {request.business_unit}",
            message="\n".join(lines),
            from_email=None,
            recipient_list=[recipient],
        )
    except Exception:  # the flag is committed and the queue shows it first; mail is a courtesy
        logger.exception("Could not email %s about urgent request %s", recipient, request.pk)


def resubscribe_in_marketing_cloud(
    *, request_id: int, actor: User, note: str, confirmed: bool
) -> ResubscribeResult:
    """Set the subscriber Active in the request's business unit through the connector, read
    the status back to prove it, and close the request as done if it reads Active."""
    from preferences.marketing_cloud import MarketingCloudClient, MarketingCloudError

    note = _required(note, "Write a note: why is the contact resubscribed?")
    if not confirmed:
        raise ChangeRefused("Confirm the change in Marketing Cloud: tick the box.")
    if not settings.MARKETING_CLOUD_ENABLED:
        raise ChangeRefused("Marketing Cloud is not connected: resubscribe there by hand.")
    request = ResubscribeRequest.objects.select_related("business_unit", "contact").get(
        pk=request_id
    )
    _refuse_unless_open(request)
    if _opted_out_of_email([request.contact_id]):
        raise ChangeRefused("The contact is opted out of email again: do not resubscribe them.")
    unit, key = request.business_unit, request.contact.salesforce_id

    status: str | None = None
    problem = ""
    try:
        with MarketingCloudClient() as client:
            client.resubscribe(key, unit.mid)
            try:
                status = client.subscriber_status(key, unit.mid)
            except MarketingCloudError as error:
                problem = (
                    "The change was sent, but the status could not be read back "
                    f"({_message(error)})."
                )
    except MarketingCloudError as error:
        raise ChangeRefused(
            f"Marketing Cloud did not make the change ({_message(error)}). Nothing was changed; "
            "try again later."
        ) from error
    read_at = timezone.now()

    with transaction.atomic():
        request = _locked(request_id)
        contact = request.contact
        if status is not None:
            _save_statuses(contact, {unit: status}, read_at)
            if status != SubscriberStatusValue.ACTIVE:
                label = SubscriberStatusValue(status).label
                problem = f"Marketing Cloud still reads {label} after the change."
        if _opted_out_of_email([contact.pk]):
            problem += (
                " The contact opted out of email while this was being done: unsubscribe them in "
                "Marketing Cloud."
            )
        read = SubscriberStatusValue(status).label if status else "not read"
        entry_note = (
            f"Set Active in Marketing Cloud in {unit} (MID {unit.mid}); status read back: "
            f"{read}. {note}"
        )
        if problem:
            entry_note += f" {problem.strip()}"
        _log_step(request, actor, entry_note, action=AuditAction.RESUBSCRIBE)
        if request.is_open:
            if status == SubscriberStatusValue.ACTIVE and not problem:
                _close(
                    request,
                    actor,
                    ResubscribeState.DONE,
                    f"Resubscribed in Marketing Cloud; read back Active at "
                    f"{timezone.localtime(read_at):%d %b %Y, %H:%M}. {note}",
                )
            else:
                request.state = ResubscribeState.IN_PROGRESS
                request.worked_by = actor
                request.outcome = problem.strip()
                request.save(update_fields=["state", "worked_by", "outcome", "updated_at"])
    return ResubscribeResult(request, status, problem.strip())


# --- the contact page ------------------------------------------------------------------------


def refresh_statuses(*, contact: Contact) -> list[SubscriberStatus]:
    """Read the contact's status in every active business unit now and record it."""
    from preferences.marketing_cloud import (
        MarketingCloudClient,
        MarketingCloudError,
        MarketingCloudSettings,
    )

    if not settings.MARKETING_CLOUD_ENABLED:
        raise ChangeRefused("Marketing Cloud is not connected.")
    units = list(BusinessUnit.objects.filter(is_active=True))
    if not units:
        raise ChangeRefused("No business units are configured (Settings → Business units).")
    # Someone is waiting for the page: give up sooner than a worker would.
    config = replace(
        MarketingCloudSettings.from_django(), timeout=settings.MARKETING_CLOUD_REFRESH_TIMEOUT
    )
    try:
        with MarketingCloudClient(config) as client:
            statuses = client.subscriber_statuses(contact.salesforce_id, [u.mid for u in units])
    except (MarketingCloudError, ValueError) as error:
        raise ChangeRefused(
            f"Marketing Cloud could not be read ({_message(error)}); the statuses shown are the "
            "last ones read."
        ) from error
    read_at = timezone.now()
    with transaction.atomic():
        _save_statuses(
            contact,
            {u: statuses.get(u.mid, SubscriberStatusValue.NOT_FOUND) for u in units},
            read_at,
        )
    return list(SubscriberStatus.objects.filter(contact=contact).select_related("business_unit"))


@dataclass(frozen=True)
class UnitOverview:
    """One business unit as the contact page shows it: the contact's last-known status there
    and their open request, if any (the unique constraint allows one per unit)."""

    name: str
    mid: str
    is_parent: bool
    is_active: bool
    status: str | None  # None: never read
    read_at: datetime | None
    request_id: int | None
    request_state: str | None
    request_status_seen: str | None
    urgent: bool
    urgent_reason: str

    @property
    def status_label(self) -> str:
        return SubscriberStatusValue(self.status).label if self.status else "not read yet"

    @property
    def status_seen_label(self) -> str:
        seen = self.request_status_seen
        return SubscriberStatusValue(seen).label if seen else ""

    @property
    def request_state_label(self) -> str:
        return ResubscribeState(self.request_state).label if self.request_state else ""


def overview(contact_id: int) -> list[UnitOverview]:
    """Every active business unit (and any other with an open request) with the contact's
    status and open request: one query of two index probes per unit, because the contact
    page has a 50 ms budget and the ORM's version of this costs more to build than to run."""
    sql = f"""
        SELECT bu.name, bu.mid, bu.is_parent, bu.is_active, s.status, s.read_at,
               r.id, r.state, r.status_seen, COALESCE(r.urgent, false),
               COALESCE(r.urgent_reason, '')
        FROM {BusinessUnit._meta.db_table} bu
        LEFT JOIN {SubscriberStatus._meta.db_table} s
            ON s.business_unit_id = bu.id AND s.contact_id = %(contact)s
        LEFT JOIN {ResubscribeRequest._meta.db_table} r
            ON r.business_unit_id = bu.id AND r.contact_id = %(contact)s
            AND r.state = ANY(%(open)s)
        WHERE bu.is_active OR r.id IS NOT NULL
        ORDER BY bu.position, bu.name, bu.id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"contact": contact_id, "open": list(RESUBSCRIBE_OPEN_STATES)})
        return [UnitOverview(*row) for row in cursor.fetchall()]
