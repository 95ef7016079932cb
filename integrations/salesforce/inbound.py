"""Reading Salesforce, which owns the records: the pull every few minutes, and the nightly
read for reconciliation (docs/design.md, "Inbound changes" and "Contacts come from
Salesforce").

The pull reads every Contact, Lead and Person Account changed since a watermark, deleted and
merged ones included (queryAll), and:

- creates the contacts the app has not seen, with their starting state;
- takes names, email, phone and Ascend ID as Salesforce has them (identity is not a
  preference: no change entry, but the contact shows when it was last read);
- applies opt-outs and categories that differ through apply_change(), with the conflict
  rule: the most protective value (opted out) wins, unless the local change is a
  consent-backed re-enrolment that is newer;
- marks a deleted record's contact inactive, history kept; and joins a merged record, or a
  converted Lead, to the surviving contact: its history goes with it and the most
  protective values win.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, Source
from audit.services import record
from integrations import core
from integrations.salesforce import objects
from integrations.salesforce.client import SalesforceClient
from integrations.salesforce.objects import SalesforceObject
from lib.channels import Channel
from preferences.models import (
    Contact,
    ContactKind,
    ContactSync,
    EmailCategory,
    SyncStatus,
    SyncWatermark,
)
from preferences.services import (
    ChangeRefused,
    StartingState,
    apply_change,
    current_state,
    record_starting_states,
)

logger = logging.getLogger(__name__)

TARGET = "salesforce"
WATERMARK = "salesforce_contacts"
_LEAD_FIELDS = ["IsConverted", "ConvertedContactId"]


def active_category_fields() -> dict[str, str]:
    """Category key -> its Contact field, for the categories still offered."""
    return dict(EmailCategory.objects.filter(is_active=True).values_list("key", "salesforce_field"))


# --- reading a record --------------------------------------------------------------------------


def remote_state(
    found: SalesforceObject, record: dict[str, Any], category_fields: dict[str, str]
) -> tuple[dict[str, bool], set[str] | None]:
    """A record's opt-outs, and its categories (None for an object that has none)."""
    opted_out = {c: _true(record.get(found.opt_out_fields[c])) for c in Channel.values}
    if not found.has_categories:
        return opted_out, None
    fields = found.category_fields(category_fields)
    return opted_out, {key for key, name in fields.items() if _true(record.get(name))}


def _true(value: Any) -> bool:
    """A checkbox from JSON (true) or a Bulk API CSV ("true")."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def starting_state(
    found: SalesforceObject,
    contact_id: int,
    record: dict[str, Any],
    category_fields: dict[str, str],
) -> StartingState:
    opted_out, categories = remote_state(found, record, category_fields)
    return StartingState(
        contact_id,
        frozenset(c for c, value in opted_out.items() if value),
        frozenset(categories or ()),
    )


# --- the pull ----------------------------------------------------------------------------------


def pull_from_salesforce() -> int:
    """Read what changed in Salesforce since the watermark; returns how many records."""
    now = timezone.now()
    watermark, _ = SyncWatermark.objects.get_or_create(
        name=WATERMARK, defaults={"value": now - timedelta(days=1)}
    )
    # Salesforce stamps a transaction when it starts, so a write can commit with an earlier
    # stamp than one already read: stop a little in the past and read again from there.
    until = now - timedelta(seconds=settings.SYNC_PULL_LAG_SECONDS)
    # SystemModstamp is whole seconds ("Date Formats and Date Literals"): a write later in
    # the second the last pull ended in carries that second's stamp, so read it again
    # (reading a record twice is harmless: what is already held is "same").
    since = watermark.value - timedelta(seconds=1)
    seen = 0
    latest = watermark.value
    with SalesforceClient() as client:
        pull = _Pull(client)
        for found in objects.in_use():
            fields = pull.fields(found)
            for remote in client.changed_records(
                found.name,
                since,
                until,
                fields,
                where=objects.where(found),
                include_deleted=True,
            ):
                pull.read(found, remote)
                latest = max(latest, remote["SystemModstamp"])
                seen += 1
        pull.join_merged()
    SyncWatermark.objects.filter(pk=watermark.pk).update(value=max(latest, until))
    return seen


class _Pull:
    """One pull's reading: live records first; merges and conversions once every record of
    the window is in, since the surviving contact may come later in it."""

    def __init__(self, client: SalesforceClient) -> None:
        self.client = client
        self.category_fields = active_category_fields()
        self.now = timezone.now()
        self.merges: list[tuple[SalesforceObject, dict[str, Any], SalesforceObject, str]] = []

    def fields(self, found: SalesforceObject) -> list[str]:
        names = found.read_fields(self.category_fields)
        return [*names, *(_LEAD_FIELDS if found.kind == ContactKind.LEAD else [])]

    def read(self, found: SalesforceObject, remote: dict[str, Any]) -> str:
        if remote.get("IsDeleted"):
            if remote.get("MasterRecordId"):
                self.merges.append((found, remote, found, str(remote["MasterRecordId"])))
                return "merged"
            return deactivate(remote, now=self.now)
        if found.kind == ContactKind.LEAD and remote.get("ConvertedContactId"):
            self.merges.append((found, remote, objects.CONTACT, str(remote["ConvertedContactId"])))
            return "converted"
        contact = Contact.objects.filter(salesforce_id=remote["Id"]).first()
        if contact is None:
            return create(found, remote, self.category_fields, now=self.now)
        refresh_identity(contact, found, remote, now=self.now)
        if contact.merged_into_id is not None:
            return "merged earlier"  # its survivor is the one that changes now
        if contact.inactive_since is not None:
            restore(contact, remote)
        return apply_inbound(found, remote, self.category_fields, self.client.user_id)

    def join_merged(self) -> None:
        for found, remote, survivor_object, survivor_id in self.merges:
            survivor = self._known(survivor_object, survivor_id)
            if survivor is None:
                logger.warning(
                    "%s %s was merged into %s, which Salesforce does not return",
                    found.name,
                    remote["Id"],
                    survivor_id,
                )
                continue
            loser = Contact.objects.filter(salesforce_id=remote["Id"]).first()
            if loser is None:  # merged before the app ever saw it: nothing to join
                continue
            merge(loser, survivor, remote)

    def _known(self, found: SalesforceObject, salesforce_id: str) -> Contact | None:
        contact = Contact.objects.filter(salesforce_id=salesforce_id).first()
        if contact is not None:
            return contact
        # The survivor did not change in this window (a Lead converted into a Contact the app
        # has not read yet): read it now.
        fields = self.fields(found)
        for remote in self.client.get_records(found.name, [salesforce_id], fields[1:]):
            create(found, remote, self.category_fields, now=self.now)
        return Contact.objects.filter(salesforce_id=salesforce_id).first()


# --- new, changed, deleted, restored --------------------------------------------------------


def create(
    found: SalesforceObject,
    remote: dict[str, Any],
    category_fields: dict[str, str],
    *,
    now: datetime,
) -> str:
    """A record the app has not seen: a new contact with Salesforce's values as its
    starting state, which Salesforce already holds."""
    identity = found.identity(remote)
    if identity["ascend_id"] and Contact.objects.filter(ascend_id=identity["ascend_id"]).exists():
        logger.warning(
            "%s %s has Ascend ID %s, which another contact has; created without it",
            found.name,
            remote["Id"],
            identity["ascend_id"],
        )
        identity["ascend_id"] = ""
    try:
        with transaction.atomic():
            contact = Contact.objects.create(
                salesforce_id=remote["Id"], kind=found.kind, identity_read_at=now, **identity
            )
            record_starting_states(
                [starting_state(found, contact.pk, remote, category_fields)],
                source=Source.SALESFORCE,
                note=f"Read from Salesforce when the app first saw this {found.name}.",
                already_in=[TARGET],
            )
    except IntegrityError:  # created meanwhile by the initial load: the next pull updates it
        return "created elsewhere"
    return "created"


def refresh_identity(
    contact: Contact, found: SalesforceObject, remote: dict[str, Any], *, now: datetime
) -> list[str]:
    """Take names, email, phone and Ascend ID from Salesforce; returns what changed."""
    identity = found.identity(remote)
    if not identity["ascend_id"]:
        # A record without one (a Lead, a field not filled in yet) does not unlink the
        # contact from Ascend: its opt-outs must still reach it.
        identity["ascend_id"] = contact.ascend_id
    elif (
        identity["ascend_id"] != contact.ascend_id
        and Contact.objects.filter(ascend_id=identity["ascend_id"]).exclude(pk=contact.pk).exists()
    ):
        logger.warning(
            "%s %s now has Ascend ID %s, which another contact has; kept %r",
            found.name,
            contact.salesforce_id,
            identity["ascend_id"],
            contact.ascend_id,
        )
        identity["ascend_id"] = contact.ascend_id
    changed = [name for name, value in identity.items() if getattr(contact, name) != value]
    for name in changed:
        setattr(contact, name, identity[name])
    contact.identity_read_at = now
    Contact.objects.filter(pk=contact.pk).update(
        identity_read_at=now, **{name: identity[name] for name in changed}
    )
    return changed


def deactivate(remote: dict[str, Any], *, now: datetime) -> str:
    """Deleted in Salesforce: the contact stays, inactive, with its history."""
    with transaction.atomic():
        contact = Contact.objects.select_for_update().filter(salesforce_id=remote["Id"]).first()
        if contact is None or contact.inactive_since is not None:
            return "deleted"
        contact.inactive_since = now
        contact.save(update_fields=["inactive_since"])
        # Nothing more goes to a record Salesforce no longer has.
        ContactSync.objects.filter(contact=contact, target=TARGET).delete()
        who = remote.get("LastModifiedById") or "an unknown user"
        record(
            AuditAction.DELETED,
            source=Source.SALESFORCE,
            contact_id=contact.pk,
            note=f"Deleted in Salesforce by user {who} at {_stamp(remote)}. The contact and "
            "its history are kept; Ascend and Marketing Cloud still receive its changes.",
        )
    return "deactivated"


def restore(contact: Contact, remote: dict[str, Any]) -> None:
    """Undeleted in Salesforce (from the recycle bin): active again."""
    with transaction.atomic():
        updated = Contact.objects.filter(
            pk=contact.pk, inactive_since__isnull=False, merged_into__isnull=True
        ).update(inactive_since=None)
        if not updated:
            return
        contact.inactive_since = None
        record(
            AuditAction.RESTORED,
            source=Source.SALESFORCE,
            contact_id=contact.pk,
            note=f"Restored in Salesforce by user {remote.get('LastModifiedById')} at "
            f"{_stamp(remote)}.",
        )
        # What Salesforce restored may be older than what the app holds: send it again.
        core.mark_behind(contact, now=timezone.now())


def merge(loser: Contact, survivor: Contact, remote: dict[str, Any]) -> str:
    """Join a merged-away record (or a converted Lead) to the contact that survives it.

    The loser stays, inactive, pointing at the survivor: its audit entries are never
    rewritten, and the survivor's history includes them. The survivor takes the most
    protective values of the two: an opt-out on either stays, and a category only one of
    them receives is dropped (a Lead has no categories: the survivor's stay).
    """
    if loser.pk == survivor.pk:
        return "same contact"
    converted = loser.kind == ContactKind.LEAD and survivor.kind != ContactKind.LEAD
    verb = "converted into" if converted else "merged into"
    with transaction.atomic():
        first, second = sorted([loser.pk, survivor.pk])
        locked = {
            c.pk: c for c in Contact.objects.select_for_update().filter(pk__in=[first, second])
        }
        loser, survivor = locked[loser.pk], locked[survivor.pk]
        if loser.merged_into_id == survivor.pk:
            return "merged earlier"
        loser.merged_into = survivor
        loser.inactive_since = loser.inactive_since or timezone.now()
        loser.save(update_fields=["merged_into", "inactive_since"])
        ContactSync.objects.filter(contact=loser, target=TARGET).delete()
        who = remote.get("LastModifiedById") or "an unknown user"
        what = f"{loser.get_kind_display()} {loser} ({loser.salesforce_id})"
        record(
            AuditAction.MERGED,
            source=Source.SALESFORCE,
            contact_id=survivor.pk,
            note=f"{what} was {verb} this contact in Salesforce by user {who} at "
            f"{_stamp(remote)}. Its history is shown here; the most protective values of "
            "the two are kept.",
        )
        record(
            AuditAction.MERGED_AWAY,
            source=Source.SALESFORCE,
            contact_id=loser.pk,
            note=f"{verb.capitalize()} {survivor} ({survivor.salesforce_id}) in Salesforce by "
            f"user {who} at {_stamp(remote)}. Its preferences live on there now.",
        )
        kept, taken = current_state(survivor), current_state(loser)
        opt_out = {c: True for c in Channel.values if taken.opted_out[c] and not kept.opted_out[c]}
        categories: set[str] | None = None
        email_out = kept.opted_out[Channel.EMAIL] or taken.opted_out[Channel.EMAIL]
        if not email_out and loser.kind != ContactKind.LEAD:
            common = kept.categories & taken.categories
            if common != kept.categories:
                categories = set(common)
        if opt_out or categories is not None:
            apply_change(
                contact=survivor,
                actor=None,
                source=Source.SALESFORCE,
                note=f"{what} was {verb} this contact in Salesforce: the most protective "
                "values of the two are kept.",
                opt_out=opt_out or None,
                categories=categories,
            )
    return verb


def _stamp(remote: dict[str, Any]) -> str:
    stamp = remote.get("SystemModstamp")
    return stamp.isoformat() if isinstance(stamp, datetime) else str(stamp or "an unknown time")


# --- changed preferences -------------------------------------------------------------------------


def _newer_consented_reenrolment(contact: Contact, channel: str, remote_stamp: datetime) -> bool:
    """A local re-enrolment, with consent, made after Salesforce's change and not yet sent."""
    sync = ContactSync.objects.filter(contact=contact, target=TARGET).first()
    synced_version = sync.synced_version if sync else 0
    return AuditEntry.objects.filter(
        contact=contact,
        action=AuditAction.RE_ENROLMENT,
        channels__contains=[channel],
        consent__isnull=False,
        contact_version__gt=synced_version,
        created_at__gt=remote_stamp,
    ).exists()


def apply_inbound(
    found: SalesforceObject,
    remote: dict[str, Any],
    category_fields: dict[str, str],
    own_user_id: str = "",
) -> str:
    """Apply one Salesforce record's opt-outs and categories; returns what was done (for
    the log)."""
    if own_user_id and remote.get("LastModifiedById") == own_user_id:
        # Our own write read back: possibly an older version than ours now, which the
        # pending push will correct. Applying it would undo a newer local change.
        return "own write"
    contact = Contact.objects.filter(salesforce_id=remote["Id"]).first()
    if contact is None:
        return "unknown contact"
    remote_out, remote_categories = remote_state(found, remote, category_fields)
    local = current_state(contact)
    local_active = {k for k in local.categories if k in category_fields}
    same_categories = remote_categories is None or local_active == remote_categories
    if dict(local.opted_out) == remote_out and same_categories:
        return "same"  # includes our own writes read back: nothing echoes

    stamp: datetime = remote["SystemModstamp"]
    opt_out: dict[str, bool] = {}
    for channel in Channel.values:
        remote_opted_out = remote_out[channel] and not local.opted_out[channel]
        if remote_opted_out and not _newer_consented_reenrolment(contact, channel, stamp):
            opt_out[channel] = True
        # Salesforce clearing an opt-out is not consent: the opted-out value stays and is
        # pushed back below.
    sync = ContactSync.objects.filter(contact=contact, target=TARGET).first()
    local_pending = sync is not None and sync.synced_version < contact.version
    email_out = opt_out.get(Channel.EMAIL, local.opted_out[Channel.EMAIL])
    categories: set[str] | None = None
    if (
        remote_categories is not None
        and not email_out
        and not local_pending
        and local_active != remote_categories
    ):
        # Retired categories are not in Salesforce's picture: keep them as they are.
        categories = remote_categories | (local.categories - set(category_fields))

    applied = "kept local values"
    if opt_out or categories is not None:
        new_out = {**local.opted_out, **opt_out}
        new_categories = (
            set()
            if email_out
            else (categories if categories is not None else set(local.categories))
        )
        matches_remote = new_out == remote_out and (
            remote_categories is None
            or {k for k in new_categories if k in category_fields} == remote_categories
        )
        who = remote.get("LastModifiedById", "an unknown user")
        try:
            apply_change(
                contact=contact,
                actor=None,
                source=Source.SALESFORCE,
                note=f"Changed in Salesforce by user {who} at {stamp.isoformat()}.",
                opt_out=opt_out or None,
                categories=categories,
                already_in=[TARGET] if matches_remote else [],
            )
            applied = "applied"
        except ChangeRefused as refused:
            logger.info("Inbound change for %s not applied: %s", contact.salesforce_id, refused)
            applied = "refused"
        contact.refresh_from_db()
        if matches_remote:
            return applied
    # Salesforce disagrees with what we keep: send our values back (no new change).
    ContactSync.objects.filter(contact=contact, target=TARGET).update(
        status=SyncStatus.PENDING, next_attempt_at=None
    )
    if not ContactSync.objects.filter(contact=contact, target=TARGET).exists():
        ContactSync.objects.create(
            contact=contact,
            target=TARGET,
            synced_version=contact.version,
            notes_version=contact.version,
        )
    core.request_pushes([TARGET])
    return applied + ", pushed back"


# --- reconciliation ------------------------------------------------------------------------------


def read_for_reconciliation(rows: core.RemoteRows) -> core.RemoteRead:
    """Every contact's opt-outs and categories as Salesforce holds them, through a Bulk API
    2.0 query per object, one result page at a time (integrations/reconcile.py compares
    them). A Lead has no categories: the app's are taken as its."""
    category_fields = active_category_fields()
    started = timezone.now()
    counts: list[str] = []
    with SalesforceClient() as client:
        for found in objects.in_use():
            version_field = found.version_field
            names = ["Id", *found.opt_out_fields.values()]
            names += found.category_fields(category_fields).values()
            if version_field:
                names.append(version_field)
            read = 0
            for page in client.bulk_query(found.name, names, where=objects.where(found)):
                for remote in csv.DictReader(io.StringIO(page)):
                    opted_out, categories = remote_state(found, remote, category_fields)
                    version = remote.get(version_field) if version_field else None
                    rows.add(
                        remote["Id"],
                        opted_out=[c for c, value in opted_out.items() if value],
                        categories=None if categories is None else sorted(categories),
                        version=int(float(version)) if version else None,
                    )
                    read += 1
                rows.flush()
            label = str(ContactKind(found.kind).label).lower()
            counts.append(f"{read:,} {label}{'' if read == 1 else 's'}")
    return core.RemoteRead(started, "Bulk API 2.0 query: " + ", ".join(counts))
