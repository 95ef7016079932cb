"""Reading and setting a subscriber's status in Marketing Cloud while staff wait: the system
team's "Resubscribe in Marketing Cloud" and the contact page's "Refresh statuses".

Network calls are never made inside a database transaction: read (or write) Marketing
Cloud first, then record what it said.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.models import AuditAction
from integrations.base import ConnectorError, describe
from integrations.marketing_cloud.client import MarketingCloudClient, MarketingCloudSettings
from preferences.models import (
    BusinessUnit,
    Contact,
    ResubscribeRequest,
    ResubscribeState,
    SubscriberStatus,
    SubscriberStatusValue,
)
from preferences.resubscribe.requests import (
    close,
    locked,
    log_step,
    opted_out_of_email,
    refuse_unless_open,
    required,
    save_statuses,
)
from preferences.services import ChangeRefused


@dataclass(frozen=True)
class ResubscribeResult:
    request: ResubscribeRequest
    status: str | None  # what Marketing Cloud said after the change; None: not re-read
    problem: str = ""  # for staff, when the change may not have taken


def resubscribe_in_marketing_cloud(
    *, request_id: int, actor: User, note: str, confirmed: bool
) -> ResubscribeResult:
    """Set the subscriber Active in the request's business unit through the connector, read
    the status back to prove it, and close the request as done if it reads Active."""
    note = required(note, "Write a note: why is the contact resubscribed?")
    if not confirmed:
        raise ChangeRefused("Confirm the change in Marketing Cloud: tick the box.")
    if not settings.MARKETING_CLOUD_ENABLED:
        raise ChangeRefused("Marketing Cloud is not connected: resubscribe there by hand.")
    request = ResubscribeRequest.objects.select_related("business_unit", "contact").get(
        pk=request_id
    )
    refuse_unless_open(request)
    if opted_out_of_email([request.contact_id]):
        raise ChangeRefused("The contact is opted out of email again: do not resubscribe them.")
    unit, key = request.business_unit, request.contact.salesforce_id

    status: str | None = None
    problem = ""
    try:
        with MarketingCloudClient() as client:
            client.resubscribe(key, unit.mid)
            try:
                status = client.subscriber_status(key, unit.mid)
            except ConnectorError as error:
                problem = (
                    "The change was sent, but the status could not be read back "
                    f"({describe(error)})."
                )
    except ConnectorError as error:
        raise ChangeRefused(
            f"Marketing Cloud did not make the change ({describe(error)}). Nothing was changed; "
            "try again later."
        ) from error
    read_at = timezone.now()

    with transaction.atomic():
        request = locked(request_id)
        contact = request.contact
        if status is not None:
            save_statuses(contact, {unit: status}, read_at)
            if status != SubscriberStatusValue.ACTIVE:
                label = SubscriberStatusValue(status).label
                problem = f"Marketing Cloud still reads {label} after the change."
        if opted_out_of_email([contact.pk]):
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
        log_step(request, actor, entry_note, action=AuditAction.RESUBSCRIBE)
        if request.is_open:
            if status == SubscriberStatusValue.ACTIVE and not problem:
                close(
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


def refresh_statuses(*, contact: Contact) -> list[SubscriberStatus]:
    """Read the contact's status in every active business unit now and record it."""
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
    except (ConnectorError, ValueError) as error:
        raise ChangeRefused(
            f"Marketing Cloud could not be read ({describe(error)}); the statuses shown are the "
            "last ones read."
        ) from error
    read_at = timezone.now()
    with transaction.atomic():
        save_statuses(
            contact,
            {u: statuses.get(u.mid, SubscriberStatusValue.NOT_FOUND) for u in units},
            read_at,
        )
    return list(SubscriberStatus.objects.filter(contact=contact).select_related("business_unit"))
