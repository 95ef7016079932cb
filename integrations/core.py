"""The sync core: the target registry, claims with leases, result recording, backoff and
the sweeper, the same for every system a contact's state goes to.

Sync is state-based (docs/design.md, "Sync"): each contact has a version, and each target
has a ContactSync row saying up to which version it holds the contact. A change marks every
target behind (mark_behind, called by apply_change in the change's transaction); a target's
push function claims rows that are behind, sends each contact's *current* state and records
the outcome here. Repeats are harmless and order cannot invert, so a worker that dies
mid-batch only leaves its claim to expire, and the sweeper re-queues whatever is behind: a
lost message delays a change but never loses it.

Each outside system is an app under integrations/ whose sync.py registers its target once;
autodiscover() imports those modules when the app is ready, as Django's admin imports each
app's admin.py. Views, the sweeper, retry and the contact page read the registry instead of
naming targets.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any, Protocol

from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Case, F, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Greatest
from django.db.models.lookups import GreaterThanOrEqual
from django.utils import timezone
from django.utils.module_loading import module_has_submodule

from audit.models import AuditAction
from audit.services import record
from lib import background
from preferences.models import Contact, ContactSync, SyncStatus

logger = logging.getLogger(__name__)

PUSH_TASK = "integrations.tasks.push"
# The sweeper queues at most this many batches of a target per run: a backlog of millions
# is worked off over several runs instead of flooding the broker.
MAX_BATCHES_PER_SWEEP = 20


class SyncRefused(Exception):
    """The sync action is not possible; nothing was written. The message is for staff."""


@dataclass
class BatchOutcome:
    """What one push of a batch did; a target may add counts of its own."""

    claimed: int = 0
    synced: int = 0
    retry: int = 0
    failed: int = 0
    next_attempt_at: datetime | None = None

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class RemoteRows(Protocol):
    """Where a target's reconcile function puts what its system holds, contact by contact
    (integrations/reconcile.py streams it into the database)."""

    def add(
        self,
        key: str,
        *,
        opted_out: Iterable[str],
        categories: Iterable[str] | None = None,
        version: int | None = None,
    ) -> None:
        """One contact there: key is what matches it here (Target.match_on); categories None
        when the system does not hold them."""
        ...

    def flush(self) -> None:
        """Write what was added so far (a target calls it after each page it read)."""
        ...


@dataclass(frozen=True)
class RemoteRead:
    """What a reconcile function read: the moment its data describes, and from where."""

    snapshot_at: datetime
    detail: str = ""


@dataclass(frozen=True)
class Target:
    """A system that must come to hold each contact's state.

    push claims up to batch_size contacts that are behind, sends them and records each
    result; None means the target is delivered on a schedule of its own (Ascend's nightly
    file) and only its marks live here. reconcile reads everything the system holds, for
    the nightly comparison; refresh renews what the app last read from it.
    """

    name: str  # ContactSync.target
    label: str
    enabled_setting: str = ""  # the boolean setting that turns it on; empty: always on
    push: Callable[[], BatchOutcome] | None = None
    batch_size: int = 0
    # Shown on the contact page after "pending", and instead of it while not enabled (the
    # page stops polling for a target that waits for configuration).
    pending_hint: str = ""
    disabled_hint: str = ""
    reconcile: Callable[[RemoteRows], RemoteRead] | None = None
    # The Contact field that names the contact there (a reconcile row's key): a contact
    # without one (a Lead with no Ascend ID) is not in this system, so nothing is sent.
    match_on: str = "salesforce_id"
    # The system drops its record when Salesforce deletes or merges the contact (Salesforce
    # itself): an inactive contact is neither sent there nor looked for there.
    active_only: bool = False
    refresh: Callable[[], str] | None = None

    @property
    def enabled(self) -> bool:
        return not self.enabled_setting or bool(getattr(settings, self.enabled_setting, False))

    @property
    def waiting(self) -> bool:
        """Not enabled, and says so on the contact page: its rows wait for configuration."""
        return bool(self.disabled_hint) and not self.enabled


_registry: dict[str, Target] = {}


def autodiscover() -> None:
    """Import the sync module of every installed integration (integrations.<name>), in
    INSTALLED_APPS order, which registers its target."""
    for config in apps.get_app_configs():
        if config.name.startswith(f"{__package__}.") and module_has_submodule(
            config.module, "sync"
        ):
            import_module(f"{config.name}.sync")


def register(target: Target) -> None:
    if target.name in _registry and _registry[target.name] != target:
        raise ValueError(f"a different sync target is registered as {target.name!r}")
    if target.push is not None and target.batch_size < 1:
        raise ValueError(f"{target.name}: a pushed target needs a batch size")
    _registry[target.name] = target


def targets() -> list[Target]:
    """Every registered target, in registration (INSTALLED_APPS) order."""
    return list(_registry.values())


def target(name: str) -> Target:
    return _registry[name]


def label(name: str) -> str:
    found = _registry.get(name)
    return found.label if found else name


# --- marking a change -------------------------------------------------------------------------


def mark_behind(
    contact: Contact, *, already_in: Iterable[str] = (), now: datetime, notify: bool = True
) -> None:
    """Every target is now behind the contact's new version, except those that told us of
    the change (already_in: they hold it). Call inside the change's transaction.

    notify asks a worker to push after commit; a bulk run passes False and asks once per
    chunk instead (request_pushes), so a million changes are not a million messages. One
    upsert per group: this runs in every change.
    """
    told_us = set(already_in)
    present = [
        t.name
        for t in _registry.values()
        if getattr(contact, t.match_on) and not (t.active_only and contact.inactive_since)
    ]
    behind = [name for name in present if name not in told_us]
    holding = [name for name in present if name in told_us]
    if behind:
        ContactSync.objects.bulk_create(
            [ContactSync(contact=contact, target=t, status=SyncStatus.PENDING) for t in behind],
            update_conflicts=True,
            unique_fields=["contact", "target"],
            update_fields=["status", "updated_at"],
        )
    if holding:
        ContactSync.objects.bulk_create(
            [
                ContactSync(
                    contact=contact,
                    target=t,
                    synced_version=contact.version,
                    notes_version=contact.version,
                    status=SyncStatus.SYNCED,
                    synced_at=now,
                    last_error="",
                )
                for t in holding
            ],
            update_conflicts=True,
            unique_fields=["contact", "target"],
            update_fields=[
                "synced_version",
                "notes_version",
                "status",
                "synced_at",
                "last_error",
                "updated_at",
            ],
        )
    if notify:
        request_pushes(behind)


def mark_many_behind(
    contact_ids: Iterable[int], *, already_in: Iterable[str] = (), version: int, now: datetime
) -> None:
    """mark_behind() for many contacts at the same version (new contacts' starting states),
    in a few INSERTs; asks for pushes once."""
    told_us = set(already_in)
    contacts = list(
        Contact.objects.filter(pk__in=list(contact_ids)).values(
            "pk", "inactive_since", *{t.match_on for t in _registry.values()}
        )
    )
    rows: list[ContactSync] = []
    for found in _registry.values():
        for contact in contacts:
            if not contact[found.match_on] or (found.active_only and contact["inactive_since"]):
                continue
            holds = found.name in told_us
            rows.append(
                ContactSync(
                    contact_id=contact["pk"],
                    target=found.name,
                    synced_version=version if holds else 0,
                    notes_version=version if holds else 0,
                    status=SyncStatus.SYNCED if holds else SyncStatus.PENDING,
                    synced_at=now if holds else None,
                )
            )
    ContactSync.objects.bulk_create(rows, batch_size=1000, ignore_conflicts=True)
    request_pushes(found.name for found in _registry.values() if found.name not in told_us)


def request_pushes(names: Iterable[str] | None = None) -> None:
    """Ask a worker, after commit, to push each named (default: every) enabled target."""
    wanted = _registry.keys() if names is None else set(names)
    for found in _registry.values():
        if found.name in wanted and found.push is not None and found.enabled:
            background.after_commit(
                PUSH_TASK, [found.name], countdown=settings.SYNC_PUSH_DELAY_SECONDS
            )


# --- claiming and recording -------------------------------------------------------------------


def retry_delay(attempt: int) -> float:
    """Exponential backoff with jitter: repeated failures wait longer, and workers that
    failed together do not come back together."""
    ceiling = min(
        settings.SYNC_RETRY_MAX_SECONDS, settings.SYNC_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    )
    return float(random.uniform(ceiling / 2, ceiling))  # noqa: S311 (not for secrets)


def _due(name: str, now: datetime) -> Any:
    return (
        ContactSync.objects.filter(target=name, status=SyncStatus.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    )


def claim(name: str, limit: int, now: datetime) -> tuple[uuid.UUID, list[ContactSync]]:
    """Claim up to `limit` rows of a target that are due; the token identifies the claim."""
    token = uuid.uuid4()
    with transaction.atomic():
        # SKIP LOCKED: two workers claiming at once take different rows instead of waiting.
        rows = list(
            _due(name, now).select_for_update(skip_locked=True).order_by("updated_at")[:limit]
        )
        lease = now + timedelta(seconds=settings.SYNC_CLAIM_LEASE_SECONDS)
        ContactSync.objects.filter(pk__in=[row.pk for row in rows]).update(
            claim=token, claimed_until=lease
        )
    return token, rows


def due_count(name: str) -> int:
    return _due(name, timezone.now()).count()


def record_successes(rows: list[tuple[ContactSync, int]], token: uuid.UUID, now: datetime) -> int:
    """Mark rows as holding the version pushed, values and notes alike (notes_version),
    one UPDATE per version, in one transaction; returns how many rows were still ours (a
    row another worker took over after the lease ran out is left to it). A target whose
    notes did not all land records those rows with record_notes_behind() instead."""
    by_version: dict[int, list[int]] = {}
    for row, version in rows:
        by_version.setdefault(version, []).append(row.pk)
    if not rows:
        return 0
    updated = 0
    with transaction.atomic():
        # The contacts are locked first, as apply_change locks them: a change committing while
        # the UPDATE below waits for its sync row would otherwise be missed, because the
        # UPDATE then re-reads that row but its subquery still sees the older version, and
        # the contact would be marked synced without the change.
        # In id order, so two workers (two targets) never deadlock.
        contact_ids = {row.contact_id for row, _ in rows}
        locked = Contact.objects.select_for_update().filter(pk__in=contact_ids).order_by("pk")
        list(locked.values_list("pk"))
        for version, ids in by_version.items():
            current = Subquery(
                Contact.objects.filter(pk=OuterRef("contact_id")).values("version")[:1]
            )
            updated += ContactSync.objects.filter(pk__in=ids, claim=token).update(
                synced_version=Greatest("synced_version", Value(version)),
                notes_version=Greatest("notes_version", Value(version)),
                # Synced only if no change arrived since the push was built.
                status=Case(
                    When(
                        GreaterThanOrEqual(Value(version), current), then=Value(SyncStatus.SYNCED)
                    ),
                    default=Value(SyncStatus.PENDING),
                ),
                synced_at=now,
                last_error="",
                attempts=0,
                next_attempt_at=None,
                claim=None,
                claimed_until=None,
                updated_at=now,
            )
    return updated


def record_transient(
    row: ContactSync, token: uuid.UUID, error: str, now: datetime, retry_at: datetime
) -> None:
    ContactSync.objects.filter(pk=row.pk, claim=token).update(
        attempts=F("attempts") + 1,
        next_attempt_at=retry_at,
        last_error=error,
        claim=None,
        claimed_until=None,
        updated_at=now,
    )


def record_notes_behind(
    row: ContactSync,
    token: uuid.UUID,
    now: datetime,
    *,
    version: int,
    retry_at: datetime | None,
    error: str = "",
    failed: bool = False,
    system: str = "",
) -> bool:
    """The target holds the values pushed (version) but not every note that went with them:
    synced_version advances and notes_version stays, so the next push sends those notes
    again, and the row is not synced meanwhile (docs/design.md, "Sync"):

    - failed: a note was refused for good; the row stops on Sync problems with the error,
      audited, as record_permanent() does;
    - error only: a transient failure; retried at retry_at, with backoff (attempts);
    - neither: the notes were held back; pushed again at retry_at, no failure counted.

    A newer change waiting makes the row due at once instead, so the note never holds
    back a change's values: that push carries the note again. Returns whether the row was
    still ours."""
    with transaction.atomic():
        # Locked as apply_change locks it (see record_successes): a change committing now
        # is seen here.
        locked = Contact.objects.select_for_update().filter(pk=row.contact_id)
        current = locked.values_list("version", flat=True).first()
        newer = current is not None and current > version
        stop = failed and not newer
        updated = ContactSync.objects.filter(pk=row.pk, claim=token).update(
            synced_version=Greatest("synced_version", Value(version)),
            status=SyncStatus.FAILED if stop else SyncStatus.PENDING,
            attempts=F("attempts") + 1 if error else 0,
            next_attempt_at=None if stop or newer else retry_at,
            last_error=error,
            synced_at=now,
            claim=None,
            claimed_until=None,
            updated_at=now,
        )
        if updated and stop:
            record(AuditAction.SYNC_FAILED, system=system, contact_id=row.contact_id, note=error)
    return bool(updated)


def mark_in_flight(sync_ids: Iterable[int], *, since: datetime, max_request_seconds: float) -> None:
    """A push to these rows' target is about to go out: marked uncertain before it is sent,
    so that if the worker dies waiting for the answer (kill -9, a lost node) the next push
    knows the request may still land, for up to max_request_seconds (docs/design.md, "Sent
    is not held"). A mark whose request can no longer land is replaced; clear_in_flight()
    removes this one once the answer came."""
    expired = since - timedelta(seconds=max_request_seconds)
    ContactSync.objects.filter(pk__in=list(sync_ids)).filter(
        Q(uncertain_since__isnull=True) | Q(uncertain_since__lte=expired)
    ).update(uncertain_since=since)


def clear_in_flight(sync_ids: Iterable[int], *, since: datetime) -> None:
    """The push mark_in_flight(since) marked was answered: nothing of it can land later. A
    mark set by another push stays."""
    ContactSync.objects.filter(pk__in=list(sync_ids), uncertain_since=since).update(
        uncertain_since=None
    )


def mark_uncertain(sync_ids: Iterable[int], *, since: datetime) -> None:
    """A push to these rows' target got no answer: it may still land there, later than any
    push after it. Kept until the target's values are read back (the earliest time counts:
    that request is the one that may still run)."""
    ContactSync.objects.filter(pk__in=list(sync_ids), uncertain_since__isnull=True).update(
        uncertain_since=since
    )


def uncertain_due(name: str, max_request_seconds: float, limit: int) -> list[ContactSync]:
    """Rows of a target whose unanswered push can no longer be running: time to read them
    back. Oldest first."""
    cutoff = timezone.now() - timedelta(seconds=max_request_seconds)
    return list(
        ContactSync.objects.filter(target=name, uncertain_since__lte=cutoff).order_by(
            "uncertain_since"
        )[:limit]
    )


def settle_uncertain(rows: Iterable[ContactSync], *, differs: set[int]) -> int:
    """Record a read-back: rows whose target held the app's values are certain again; the
    others are pushed again (state-based, so the current values go). Guarded by the time
    read, so a newer unanswered push marked meanwhile stays uncertain. Returns how many
    are pushed again."""
    again = 0
    with transaction.atomic():
        for row in rows:
            still = ContactSync.objects.filter(pk=row.pk, uncertain_since=row.uncertain_since)
            if row.pk in differs:
                again += still.update(
                    uncertain_since=None,
                    status=SyncStatus.PENDING,
                    next_attempt_at=None,
                    updated_at=timezone.now(),
                )
            else:
                still.update(uncertain_since=None)
        if again:
            request_pushes({row.target for row in rows})
    return again


def record_permanent(
    row: ContactSync, token: uuid.UUID, error: str, now: datetime, *, system: str, refused: str
) -> None:
    """A failure retrying will not fix: the row stops, with the error, on Sync problems, and
    the audit log says which system refused what."""
    with transaction.atomic():
        updated = ContactSync.objects.filter(pk=row.pk, claim=token).update(
            status=SyncStatus.FAILED,
            attempts=F("attempts") + 1,
            last_error=error,
            claim=None,
            claimed_until=None,
            updated_at=now,
        )
        if updated:
            record(
                AuditAction.SYNC_FAILED,
                system=system,
                contact_id=row.contact_id,
                note=f"{refused}: {error}",
            )


# --- staff and the sweeper --------------------------------------------------------------------


def retry_failed(*, sync_id: int, actor: User) -> ContactSync:
    """The system team fixed the cause of a permanent failure: send the contact again."""
    with transaction.atomic():
        sync = ContactSync.objects.select_for_update().get(pk=sync_id)
        if sync.status != SyncStatus.FAILED:
            raise SyncRefused("Only a failed sync can be retried.")
        previous = sync.last_error
        sync.status = SyncStatus.PENDING
        sync.attempts = 0
        sync.next_attempt_at = None
        sync.save(update_fields=["status", "attempts", "next_attempt_at", "updated_at"])
        record(
            AuditAction.SYNC_RETRY,
            actor=actor,
            contact_id=sync.contact_id,
            note=f"Retry of the {label(sync.target)} sync after: {previous}",
        )
        request_pushes([sync.target])
    return sync


def sweep() -> int:
    """Queue a push for every batch that is behind in each enabled target (a lost message,
    a dead worker, a retry that is due); returns how many contacts are due."""
    due = 0
    for found in _registry.values():
        if found.push is None or not found.enabled:
            continue
        behind = due_count(found.name)
        # One task per batch, so several workers can share a backlog.
        for _ in range(min(-(-behind // found.batch_size), MAX_BATCHES_PER_SWEEP)):
            background.send(PUSH_TASK, [found.name])
        due += behind
    return due
