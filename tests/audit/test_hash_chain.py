"""The audit log's hash chain: sealed at commit, verified by manage.py verify_audit.

These tests commit (transactional_db): the seal trigger is deferred to COMMIT.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pgtrigger
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from audit.models import AuditEntry, AuditSeal
from audit.verify import verify_chain
from preferences.models import Contact, Source
from preferences.services import apply_change, escalate
from tests.factories import make_categories, make_contact

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def history(make_user: Callable[[str], User]) -> Iterator[list[AuditEntry]]:
    make_categories()
    specialist = make_user("specialist")
    entries = []
    for n in range(3):
        contact = make_contact()
        entries.append(
            apply_change(
                contact=contact,
                actor=specialist,
                source=Source.STAFF,
                note=f"Asked by phone ({n})",
                opt_out={"phone": True},
            )
        )
        escalate(contact=contact, actor=specialist, note="Unsure about email")
    yield list(AuditEntry.objects.order_by("id"))


def _verify_output() -> str:
    from io import StringIO

    out = StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue()


def test_every_committed_entry_is_sealed_in_order(history: list[AuditEntry]) -> None:
    seals = list(AuditSeal.objects.order_by("seq"))
    assert [s.entry_id for s in seals] == [e.pk for e in history]
    assert [s.seq for s in seals] == list(range(1, len(history) + 1))
    assert len({s.hash for s in seals}) == len(seals)


def test_verify_audit_passes_on_an_untouched_log(history: list[AuditEntry]) -> None:
    output = _verify_output()
    assert f"Audit log intact: {len(history)} entries checked." in output
    head = AuditSeal.objects.order_by("-seq").first()
    assert head is not None and head.hash in output


def test_an_altered_note_is_named_and_only_that_entry(history: list[AuditEntry]) -> None:
    altered = history[2]
    with pgtrigger.ignore("audit.AuditEntry:append_only"):
        AuditEntry.objects.filter(pk=altered.pk).update(note="Nothing to see here")

    with pytest.raises(CommandError, match=f"first mismatch at entry #{altered.pk}$"):
        _verify_output()
    report = verify_chain()
    assert [p.entry_id for p in report.problems] == [altered.pk]


@pytest.mark.parametrize(
    "change",
    [
        {"actor_label": "someone.else"},
        {"source": Source.SALESFORCE},
        {"after": {"opted_out": {"email": False, "phone": False}}},
        {"channels": ["email"]},
        {"contact_version": 99},
    ],
    ids=lambda change: next(iter(change)),
)
def test_altering_any_column_breaks_the_chain(
    history: list[AuditEntry], change: dict[str, object]
) -> None:
    altered = history[0]
    with pgtrigger.ignore("audit.AuditEntry:append_only"):
        AuditEntry.objects.filter(pk=altered.pk).update(**change)
    assert [p.entry_id for p in verify_chain().problems] == [altered.pk]


def test_an_altered_seal_is_named(history: list[AuditEntry]) -> None:
    altered = history[1]
    with pgtrigger.ignore("audit.AuditSeal:append_only"):
        AuditSeal.objects.filter(pk=altered.pk).update(hash="0" * 64)
    problems = verify_chain().problems
    assert problems[0].entry_id == altered.pk


def _without_triggers(sql: str, params: list[int]) -> None:
    # What someone with the database's superuser could do: skip triggers and foreign keys.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)


def test_a_removed_entry_is_named(history: list[AuditEntry]) -> None:
    removed = history[3]
    _without_triggers("DELETE FROM audit_auditentry WHERE id = %s", [removed.pk])
    problems = verify_chain().problems
    assert problems[0].entry_id == removed.pk
    assert "removed" in problems[0].message


def test_an_entry_removed_with_its_seal_leaves_a_gap(history: list[AuditEntry]) -> None:
    removed = history[3]
    _without_triggers("DELETE FROM audit_auditseal WHERE entry_id = %s", [removed.pk])
    _without_triggers("DELETE FROM audit_auditentry WHERE id = %s", [removed.pk])
    problems = verify_chain().problems
    assert problems[0].entry_id == history[4].pk
    assert "missing" in problems[0].message


def test_an_entry_slipped_in_past_the_triggers_is_named(history: list[AuditEntry]) -> None:
    contact = Contact.objects.first()
    assert contact is not None
    _without_triggers(
        "INSERT INTO audit_auditentry (created_at, actor_label, source, action, channels,"
        " before, after, note, contact_id) VALUES (now(), 'ghost', 'staff', 'opt_out',"
        " '{}', '{}', '{}', 'backdated', %s)",
        [contact.pk],
    )
    ghost = AuditEntry.objects.get(actor_label="ghost")
    problems = verify_chain().problems
    assert [(p.entry_id, p.seq) for p in problems] == [(ghost.pk, None)]


def test_concurrent_writers_build_one_unbroken_chain(make_user: Callable[[str], User]) -> None:
    make_categories()
    specialist = make_user("specialist")
    contacts = [make_contact() for _ in range(12)]
    errors: list[BaseException] = []

    def work(mine: list[Contact]) -> None:
        try:
            for contact in mine:
                for channel in ("phone", "email"):
                    apply_change(
                        contact=contact.pk,
                        actor=specialist,
                        source=Source.STAFF,
                        note="Concurrent",
                        opt_out={channel: True},
                    )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(contacts[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert AuditSeal.objects.count() == AuditEntry.objects.count() == 24
    report = verify_chain()
    assert report.ok, report.problems
    assert report.head_seq == 24
