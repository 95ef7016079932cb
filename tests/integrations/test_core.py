"""The sync core with a target that exists only in this test: registering it is all it
takes for changes, the push task, the sweeper, Retry, Sync problems and the contact page to
carry it (docs/design.md, "Adding things")."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations import core, tasks
from lib import background
from preferences.models import Contact, ContactSync, SyncStatus
from preferences.services import apply_change
from tests import factories

pytestmark = pytest.mark.django_db

NAME = "echo"


@dataclass
class EchoSystem:
    """An outside system in miniature: what it holds, and whether it refuses."""

    held: dict[int, int] = field(default_factory=dict)  # contact id -> version
    refuse: str = ""

    def push(self) -> core.BatchOutcome:
        now = timezone.now()
        token, rows = core.claim(NAME, 10, now)
        outcome = core.BatchOutcome(claimed=len(rows))
        versions = dict(
            Contact.objects.filter(pk__in=[r.contact_id for r in rows]).values_list("pk", "version")
        )
        if self.refuse:
            for row in rows:
                core.record_permanent(
                    row, token, self.refuse, now, system="Echo sync", refused="Echo refused"
                )
            outcome.failed = len(rows)
            return outcome
        for row in rows:
            self.held[row.contact_id] = versions[row.contact_id]
        outcome.synced = core.record_successes(
            [(row, versions[row.contact_id]) for row in rows], token, now
        )
        return outcome


@pytest.fixture
def echo(settings: Any) -> Iterator[EchoSystem]:
    system = EchoSystem()
    settings.ECHO_ENABLED = True
    core.register(
        core.Target(
            name=NAME,
            label="Echo",
            enabled_setting="ECHO_ENABLED",
            push=system.push,
            batch_size=10,
            pending_hint="echoes within seconds",
        )
    )
    yield system
    core._registry.pop(NAME)


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """The tasks asked for through the background seam (the broker is memory:// here)."""
    sent: list[tuple[str, list[Any]]] = []

    def record(name: str, args: Any = (), *, countdown: float | None = None) -> bool:
        sent.append((name, list(args)))
        return True

    monkeypatch.setattr(background, "send", record)
    return sent


def _opt_out(contact: Contact, actor: Any) -> AuditEntry:
    return apply_change(
        contact=contact, actor=actor, source="staff", note="Stop.", opt_out={"email": True}
    )


def _row(contact: Contact) -> ContactSync:
    return ContactSync.objects.get(contact=contact, target=NAME)


def test_a_registered_target_is_marked_behind_and_asked_for_after_commit(
    echo, contact, specialist, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _opt_out(contact, specialist)

    assert _row(contact).status == SyncStatus.PENDING
    assert (core.PUSH_TASK, [NAME]) in queued


def test_the_push_task_brings_the_target_up_to_the_contacts_version(echo, contact, specialist):
    _opt_out(contact, specialist)

    assert tasks.push(NAME) == {"claimed": 1, "synced": 1, "retry": 0, "failed": 0}

    contact.refresh_from_db()
    assert echo.held == {contact.pk: contact.version}
    assert _row(contact).status == SyncStatus.SYNCED
    assert tasks.push(NAME) == {"claimed": 0, "synced": 0, "retry": 0, "failed": 0}


def test_a_disabled_target_is_not_pushed_and_waits(echo, contact, specialist, settings):
    settings.ECHO_ENABLED = False
    _opt_out(contact, specialist)

    assert tasks.push(NAME) == {}
    assert echo.held == {}
    assert _row(contact).status == SyncStatus.PENDING


def test_the_sweeper_queues_a_push_per_batch_behind(echo, categories, specialist, queued):
    for _ in range(11):
        _opt_out(factories.make_contact(), specialist)
    queued.clear()

    assert core.sweep() >= 11
    assert queued.count((core.PUSH_TASK, [NAME])) == 2  # 11 contacts, batches of 10


def test_a_refusal_shows_on_sync_problems_and_retry_sends_it_again(
    echo, contact, specialist, system_user, queued, django_capture_on_commit_callbacks
):
    system_client = Client()
    system_client.force_login(system_user)
    _opt_out(contact, specialist)
    echo.refuse = "NO_SUCH_FIELD: Opt_Out__c"

    tasks.push(NAME)

    failed = _row(contact)
    assert failed.status == SyncStatus.FAILED
    entry = AuditEntry.objects.get(action=AuditAction.SYNC_FAILED, contact=contact)
    assert entry.actor_label == "Echo sync"
    assert entry.note == "Echo refused: NO_SUCH_FIELD: Opt_Out__c"
    page = system_client.get(reverse("preferences:sync_problems")).content.decode()
    assert "<td>Echo</td>" in page and "NO_SUCH_FIELD" in page

    echo.refuse = ""
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        system_client.post(reverse("preferences:sync_retry", args=[failed.pk]))

    assert _row(contact).status == SyncStatus.PENDING
    assert (core.PUSH_TASK, [NAME]) in queued
    tasks.push(NAME)
    assert _row(contact).status == SyncStatus.SYNCED


def test_the_contact_page_lists_a_registered_target(echo, contact, specialist, specialist_client):
    _opt_out(contact, specialist)

    html = specialist_client.get(reverse("preferences:contact", args=[contact.pk])).content
    text = html.decode()

    assert 'data-target="echo" data-status="pending"><b>Echo</b>' in text
    assert "(echoes within seconds)" in text


def test_a_second_registration_under_the_same_name_is_refused(echo):
    with pytest.raises(ValueError, match="echo"):
        core.register(core.Target(name=NAME, label="Another echo"))
