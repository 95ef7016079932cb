"""Re-subscribe requests (docs/design.md, rule 8): opening them, closing them when the contact
opts out again, and the system team's steps.

The Marketing Cloud target (integrations/marketing_cloud/sync.py) looks a re-enrolled
contact up in every active business unit and opens a request here for each unit where they
are Bounced, Held or Unsubscribed. The system team works a request open -> in progress ->
done (in Marketing Cloud through subscribers.py, or by hand) or rejected; a specialist can
mark it urgent. The partial unique constraint one_open_request_per_business_unit lets one
open request exist per contact and business unit, so a repeated lookup opens nothing twice.

Nothing here calls Marketing Cloud: it is the queue's bookkeeping, in the database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from audit.services import record
from lib.channels import Channel
from preferences.models import (
    NEEDS_RESUBSCRIBE,
    RESUBSCRIBE_OPEN_STATES,
    BusinessUnit,
    ChannelPreference,
    Contact,
    ResubscribeRequest,
    ResubscribeState,
    SubscriberStatus,
    SubscriberStatusValue,
)
from preferences.services import ChangeRefused

logger = logging.getLogger(__name__)

LOOKUP_ACTOR = "Marketing Cloud check"
QUEUE_ACTOR = "Re-subscribe queue"
_ONE_OPEN = "one_open_request_per_business_unit"


def opted_out_of_email(contact_ids: Sequence[int]) -> set[int]:
    return set(
        ChannelPreference.objects.filter(
            contact_id__in=contact_ids, channel=Channel.EMAIL, opted_out=True
        ).values_list("contact_id", flat=True)
    )


def save_statuses(contact: Contact, statuses: dict[BusinessUnit, str], read_at: datetime) -> None:
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
    record(
        AuditAction.RESUBSCRIBE_REQUEST,
        system=LOOKUP_ACTOR,
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


# --- after a change --------------------------------------------------------------------------


def after_change(*, contact: Contact, entry: AuditEntry) -> None:
    """An after-change hook of apply_change (registered in preferences/apps.py), run inside
    its transaction: an email opt-out closes the contact's open requests, so nobody is
    resubscribed after opting out again."""
    was_out = entry.before.get("opted_out", {}).get(Channel.EMAIL, False)
    now_out = entry.after.get("opted_out", {}).get(Channel.EMAIL, False)
    if now_out and not was_out:
        _close_for_opt_out(contact, entry)


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
        record(
            AuditAction.RESUBSCRIBE_REQUEST,
            system=QUEUE_ACTOR,
            contact=contact,
            channels=[Channel.EMAIL],
            note=f"Re-subscribe request for {request.business_unit} closed automatically: "
            f"{reason}.",
            resubscribe_request=request,
        )


def close_found_active(*, request_id: int, read_at: datetime) -> bool:
    """Marketing Cloud reads the subscriber Active again (someone resubscribed them there):
    the request is done. False if it was closed meanwhile."""
    with transaction.atomic():
        request = locked(request_id)
        if not request.is_open:
            return False
        request.state = ResubscribeState.DONE
        request.closed_at = read_at
        request.outcome = (
            f"Closed automatically: Marketing Cloud reads the subscriber Active in "
            f"{request.business_unit} ({timezone.localtime(read_at):%d %b %Y, %H:%M})."
        )
        request.save(update_fields=["state", "closed_at", "outcome", "updated_at"])
        record(
            AuditAction.RESUBSCRIBE_REQUEST,
            system=QUEUE_ACTOR,
            contact_id=request.contact_id,
            channels=[Channel.EMAIL],
            note=f"{_subject(request)} closed: {request.outcome}",
            resubscribe_request=request,
        )
    return True


# --- working a request ----------------------------------------------------------------------


def required(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ChangeRefused(what)
    return text


def locked(request_id: int) -> ResubscribeRequest:
    return (
        ResubscribeRequest.objects.select_for_update(of=("self",))
        .select_related("business_unit", "contact")
        .get(pk=request_id)
    )


def refuse_unless_open(request: ResubscribeRequest) -> None:
    if not request.is_open:
        raise ChangeRefused(
            f"This request is {request.get_state_display().lower()} already: nothing was changed."
        )


def _subject(request: ResubscribeRequest) -> str:
    return f"Re-subscribe request for {request.business_unit}"


def log_step(
    request: ResubscribeRequest, actor: User, note: str, *, action: str = ""
) -> AuditEntry:
    return record(
        action or AuditAction.RESUBSCRIBE_REQUEST,
        actor=actor,
        contact_id=request.contact_id,
        channels=[Channel.EMAIL],
        note=note,
        resubscribe_request=request,
    )


def start(*, request_id: int, actor: User, note: str) -> ResubscribeRequest:
    """A system team member takes the request: open -> in progress."""
    note = required(note, "Write a note: what are you about to do?")
    with transaction.atomic():
        request = locked(request_id)
        if request.state != ResubscribeState.OPEN:
            refuse_unless_open(request)
            raise ChangeRefused("This request is in progress already.")
        request.state = ResubscribeState.IN_PROGRESS
        request.worked_by = actor
        request.save(update_fields=["state", "worked_by", "updated_at"])
        log_step(request, actor, f"{_subject(request)} in progress: {note}")
    return request


def complete(*, request_id: int, actor: User, note: str) -> ResubscribeRequest:
    """Closed as done by hand (resubscribed in Marketing Cloud's own screens, say)."""
    note = required(note, "Write a note: what was done?")
    with transaction.atomic():
        request = locked(request_id)
        refuse_unless_open(request)
        close(request, actor, ResubscribeState.DONE, f"Done by hand: {note}")
        log_step(request, actor, f"{_subject(request)} done by hand: {note}")
    return request


def reject(*, request_id: int, actor: User, note: str) -> ResubscribeRequest:
    note = required(note, "Write a note: why is the request rejected?")
    with transaction.atomic():
        request = locked(request_id)
        refuse_unless_open(request)
        close(request, actor, ResubscribeState.REJECTED, f"Rejected: {note}")
        log_step(request, actor, f"{_subject(request)} rejected: {note}")
    return request


def close(request: ResubscribeRequest, actor: User, state: str, outcome: str) -> None:
    request.state = state
    request.worked_by = actor
    request.outcome = outcome
    request.closed_at = timezone.now()
    request.save(update_fields=["state", "worked_by", "outcome", "closed_at", "updated_at"])


def mark_urgent(*, request_id: int, actor: User, reason: str, link: str = "") -> ResubscribeRequest:
    """A specialist flags the request (it goes to the top of the queue) and the system team
    is emailed at RESUBSCRIBE_NOTIFY_EMAIL once the flag is committed."""
    reason = required(reason, "Say why the request is urgent.")
    with transaction.atomic():
        request = locked(request_id)
        refuse_unless_open(request)
        if request.urgent:
            raise ChangeRefused("This request is marked urgent already.")
        request.urgent = True
        request.urgent_reason = reason
        request.save(update_fields=["urgent", "urgent_reason", "updated_at"])
        log_step(request, actor, f"{_subject(request)} marked urgent: {reason}")
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


# --- the contact page ------------------------------------------------------------------------


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
