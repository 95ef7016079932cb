"""Audit entries for the log, review and report tests.

Preference changes go through apply_change, as in the app. Entries other code paths write
(escalations, sync retries, bulk runs, Marketing Cloud resubscribes) are written directly:
they change no preference, and their writers are tested elsewhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from preferences.models import Contact, Source
from preferences.services import apply_change
from tests import factories

HTMX = {"HX-Request": "true"}


def entry(**fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "actor_label": "System",
        "source": Source.SYSTEM,
        "action": AuditAction.ESCALATION,
        "note": "Something happened.",
    }
    actor = fields.get("actor")
    if actor is not None:
        values["actor_label"] = actor.get_username()
        values["source"] = Source.STAFF
    values.update(fields)
    return AuditEntry.objects.create(**values)


def opt_out(contact: Contact, actor: User | None, channel: str = "email", **kw: Any) -> AuditEntry:
    kw.setdefault("source", Source.STAFF if actor else Source.EMAIL_PLATFORM)
    kw.setdefault("note", f"Asked to stop {channel}.")
    return apply_change(contact=contact, actor=actor, opt_out={channel: True}, **kw)


def re_enrol(
    contact: Contact, actor: User, channel: str = "email", *, obtained_at: datetime | None = None
) -> AuditEntry:
    return apply_change(
        contact=contact,
        actor=actor,
        source=Source.STAFF,
        note=f"Called back: wants {channel} again.",
        opt_out={channel: False},
        consent=factories.consent(obtained_at=obtained_at or timezone.now()),
    )


def opted_out_and_back(contact: Contact, actor: User, channel: str = "email") -> AuditEntry:
    """An opt-out, then a consent-backed re-enrolment (a risky entry); returns the latter."""
    opt_out(contact, actor, channel)
    return re_enrol(contact, actor, channel)


def seal_now() -> None:
    """Run the deferred seal trigger now: a `db` test never commits, so it would not fire."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def ids_on_page(html: str) -> list[int]:
    import re

    return [int(n) for n in re.findall(r'<tr data-action="[a-z_]+" data-entry="(\d+)"', html)]
