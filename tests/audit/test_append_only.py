from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from audit.models import AuditEntry
from preferences.services import apply_change

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry(contact, specialist):
    return apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Stop email.",
        opt_out={"email": True},
    )


def _refused(sql: str, params: list[int] | None = None) -> str:
    with pytest.raises(DatabaseError) as error, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    return str(error.value)


def test_the_audit_table_refuses_update(entry):
    message = _refused("UPDATE audit_auditentry SET note = 'rewritten' WHERE id = %s", [entry.pk])
    assert "append-only: UPDATE refused" in message
    entry.refresh_from_db()
    assert entry.note == "Stop email."


def test_the_audit_table_refuses_orm_updates_too(entry):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).update(note="rewritten")
    entry.refresh_from_db()
    assert entry.note == "Stop email."


def test_the_audit_table_refuses_delete(entry):
    message = _refused("DELETE FROM audit_auditentry WHERE id = %s", [entry.pk])
    assert "append-only: DELETE refused" in message
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_the_audit_table_refuses_truncate(entry):
    with connection.cursor() as cursor:
        # TRUNCATE is refused anyway while deferred foreign-key checks are pending; run them,
        # so it is the audit trigger that answers.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    message = _refused("TRUNCATE audit_auditentry CASCADE")
    assert "append-only: TRUNCATE refused" in message
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_the_audit_table_still_accepts_new_entries(entry, specialist):
    count = AuditEntry.objects.count()
    AuditEntry.objects.create(
        actor=specialist, actor_label="x", source="staff", action="escalation", note="n"
    )
    assert AuditEntry.objects.count() == count + 1
