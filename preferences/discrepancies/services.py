"""Resolving a discrepancy the nightly reconciliation found (docs/design.md, "Reconciliation").

Three ways, each audited: push the app's values to the other system again; accept the
other system's values as the contact's, through apply_change like any change (a clearing
of an opt-out needs the contact's consent, as always); or dismiss it with a note (a test
record, a contact that is meant to be missing there).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from audit.services import record
from integrations import core
from integrations.models import APP, Discrepancy, DiscrepancyKind, Resolution
from lib.channels import Channel
from preferences.models import ContactSync, EmailCategory, SyncStatus
from preferences.services import ChangeRefused, ConsentEvidence, apply_change, current_state


def _locked(discrepancy_id: int) -> Discrepancy:
    found = (
        Discrepancy.objects.select_for_update(of=("self",))
        .select_related("contact")
        .get(pk=discrepancy_id)
    )
    if not found.is_open:
        raise ChangeRefused(
            f"This discrepancy was resolved already ({found.get_resolution_display().lower()}): "
            "nothing was changed."
        )
    return found


def _note(note: str) -> str:
    note = note.strip()
    if not note:
        raise ChangeRefused("Write a note: why is it resolved this way?")
    if "\x00" in note:
        raise ChangeRefused("The note contains a character that cannot be stored (NUL).")
    return note


def system_label(name: str) -> str:
    return "the app's own data" if name == APP else core.label(name)


def _resolve(found: Discrepancy, how: str, actor: User, entry: AuditEntry) -> Discrepancy:
    found.resolved_at = timezone.now()
    found.resolution = how
    found.resolved_by = actor
    found.resolution_entry = entry
    found.save(update_fields=["resolved_at", "resolution", "resolved_by", "resolution_entry"])
    return found


def opt_outs(values: dict[str, Any]) -> dict[str, bool]:
    """A side's opt-outs as {channel: opted out}, from the comparison's sorted list."""
    listed = set(values.get("opted_out") or [])
    return {channel: channel in listed for channel in Channel.values}


def push_app_values(*, discrepancy_id: int, actor: User, note: str) -> Discrepancy:
    """Send the app's values to the system again. A target that takes pushes is marked
    behind (its push sends the contact's current state); one that takes files (Ascend)
    gets a correction row in its next change file, written as an audit entry whose
    snapshots go from the system's values to the app's."""
    note = _note(note)
    with transaction.atomic():
        found = _locked(discrepancy_id)
        if found.kind != DiscrepancyKind.DIFFERS or found.contact is None:
            raise ChangeRefused("Only values that differ can be pushed; dismiss this one instead.")
        target = core.target(found.system)
        contact = found.contact
        app = current_state(contact)
        said = f"Pushed the app's values to {target.label} (discrepancy #{found.pk}): {note}"
        if target.push is not None:
            ContactSync.objects.update_or_create(
                contact=contact,
                target=target.name,
                defaults={"status": SyncStatus.PENDING, "next_attempt_at": None},
            )
            core.request_pushes([target.name])
            entry = record(
                AuditAction.DISCREPANCY_RESOLVED, actor=actor, contact=contact, note=said
            )
        else:
            # Its snapshots go from the system's opt-outs to the app's, so the export lists
            # it as a change row; the row pending keeps the next reconciliation from judging
            # the contact until the file has gone (the export settles it).
            theirs = opt_outs(found.details.get("remote") or {})
            ours = dict(app.opted_out)
            categories = sorted(app.categories)
            said = (
                f"Correction for {target.label}'s next change file (discrepancy #{found.pk}): "
                f"{note}"
            )
            entry = record(
                AuditAction.DISCREPANCY_RESOLVED,
                actor=actor,
                contact=contact,
                channels=[c for c in Channel.values if theirs[c] != ours[c]],
                before={"opted_out": theirs, "categories": categories},
                after={"opted_out": ours, "categories": categories},
                note=said,
            )
            ContactSync.objects.filter(contact=contact, target=target.name).update(
                status=SyncStatus.PENDING, updated_at=timezone.now()
            )
        return _resolve(found, Resolution.PUSHED, actor, entry)


def accept_external_values(
    *, discrepancy_id: int, actor: User, note: str, consent: ConsentEvidence | None = None
) -> Discrepancy:
    """Make the system's values the contact's, through apply_change: the change is audited,
    goes to every other target, and a cleared opt-out needs the contact's consent."""
    note = _note(note)
    with transaction.atomic():
        found = _locked(discrepancy_id)
        if found.kind != DiscrepancyKind.DIFFERS or found.contact is None:
            raise ChangeRefused(
                "Only values that differ can be accepted; dismiss this one instead."
            )
        target = core.target(found.system)
        remote = found.details.get("remote") or {}
        wanted = opt_outs(remote)
        categories = None
        if remote.get("categories") is not None and not wanted[Channel.EMAIL]:
            # The system holds the active categories only: retired ones stay as they are.
            active = set(EmailCategory.objects.filter(is_active=True).values_list("key", flat=True))
            kept = current_state(found.contact).categories - active
            categories = set(remote["categories"]) | kept
        try:
            change = apply_change(
                contact=found.contact,
                actor=actor,
                source="staff",
                note=f"Accepted {target.label}'s values (discrepancy #{found.pk}): {note}",
                opt_out=wanted,
                categories=categories,
                consent=consent,
                already_in=[target.name],
            )
            said = f"Accepted {target.label}'s values, change PD-{change.pk}"
        except ChangeRefused as refused:
            if "Nothing to change" not in str(refused):
                raise
            said = f"{target.label}'s values were the app's already"  # changed since the night
        # A resolution entry of its own too, so the log's "Discrepancy resolved" lists every
        # way one was resolved; the change itself is the entry above.
        entry = record(
            AuditAction.DISCREPANCY_RESOLVED,
            actor=actor,
            contact=found.contact,
            note=f"{said} (discrepancy #{found.pk}): {note}",
        )
        return _resolve(found, Resolution.ACCEPTED, actor, entry)


def dismiss(*, discrepancy_id: int, actor: User, note: str) -> Discrepancy:
    """Close it without changing anything, saying why."""
    note = _note(note)
    with transaction.atomic():
        found = _locked(discrepancy_id)
        entry = record(
            AuditAction.DISCREPANCY_RESOLVED,
            actor=actor,
            contact=found.contact,
            note=f"Dismissed (discrepancy #{found.pk}, {found.get_kind_display().lower()} in "
            f"{system_label(found.system)}): {note}",
        )
        return _resolve(found, Resolution.DISMISSED, actor, entry)


def clears_an_opt_out(found: Discrepancy) -> bool:
    """Whether accepting the system's values would clear an opt-out (a re-enrolment)."""
    if found.kind != DiscrepancyKind.DIFFERS:
        return False
    ours = opt_outs(found.details.get("app") or {})
    theirs = opt_outs(found.details.get("remote") or {})
    return any(ours[c] and not theirs[c] for c in Channel.values)
