"""The bulk opt-out pages: managers only; preview before anything changes; progress."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from audit.models import AuditEntry
from preferences.bulk import jobs as bulk
from preferences.models import BulkItem, BulkRun, BulkRunState
from preferences.services import apply_change, current_state
from tests import factories

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def _url(name, run=None):
    return reverse(f"preferences:{name}", args=[run.pk] if run is not None else [])


def _draft(user, criteria=None):
    return bulk.draft_from_filters(
        actor=user, channel="email", criteria=criteria or {"country": "FR"}
    )


def _french(count=3):
    return [factories.make_contact(country="FR") for _ in range(count)]


# --- who may use the pages ----------------------------------------------------------------


def test_the_nav_links_to_bulk_changes_for_managers_only(
    manager_client, specialist_client, categories
):
    link = f'href="{_url("bulk_runs")}"'
    assert link in manager_client.get(reverse("preferences:search")).content.decode()
    assert link not in specialist_client.get(reverse("preferences:search")).content.decode()


def test_specialists_cannot_open_bulk_pages_by_url_or_under_htmx(
    specialist_client, manager, categories
):
    _french(1)
    run = _draft(manager)
    gets = [_url("bulk_runs"), _url("bulk_new"), _url("bulk_run", run)]
    posts = [_url("bulk_create"), _url("bulk_confirm", run), _url("bulk_cancel", run)]
    for headers in ({}, HTMX, {**HTMX, "HX-Target": "progress"}):
        for url in gets:
            assert specialist_client.get(url, headers=headers).status_code == 403, url
        for url in posts:
            response = specialist_client.post(
                url, {"country": "FR", "note": "x", "expected": "1"}, headers=headers
            )
            assert response.status_code == 403, url
    run.refresh_from_db()
    assert run.state == BulkRunState.DRAFT
    assert BulkRun.objects.count() == 1
    assert not BulkItem.objects.exists()


def test_an_unknown_run_is_not_found(manager_client):
    assert manager_client.get(reverse("preferences:bulk_run", args=[999])).status_code == 404


def test_the_wrong_method_is_refused(manager_client, manager, categories):
    run = _draft(manager)
    assert manager_client.post(_url("bulk_runs")).status_code == 405
    assert manager_client.post(_url("bulk_new")).status_code == 405
    assert manager_client.get(_url("bulk_create")).status_code == 405
    assert manager_client.post(_url("bulk_run", run)).status_code == 405
    assert manager_client.get(_url("bulk_confirm", run)).status_code == 405
    assert manager_client.get(_url("bulk_cancel", run)).status_code == 405


# --- the list and the form ------------------------------------------------------------------


def test_the_list_shows_each_run_with_its_selection_and_state(manager_client, manager, categories):
    _draft(manager, {"country": "FR", "category": "newsletter", "opted_out": False})
    html = manager_client.get(_url("bulk_runs")).content.decode()
    assert "<html" in html
    assert "country FR, subscribed to Alumni newsletter, not opted out of email" in html
    assert 'data-state="draft"' in html


def test_the_list_names_an_uploaded_file_and_its_contact_count(manager_client, manager, categories):
    listed = [factories.make_contact() for _ in range(2)]
    data = "".join(f"{c.email}\n" for c in listed).encode()
    bulk.draft_from_upload(actor=manager, channel="phone", filename="list.csv", data=data)
    html = manager_client.get(_url("bulk_runs")).content.decode()
    assert "Upload list.csv (2 contacts)" in html
    assert "Do not call" not in html and "Phone" in html


def test_the_list_under_htmx_is_the_runs_fragment(manager_client, manager, categories):
    _draft(manager)
    response = manager_client.get(_url("bulk_runs"), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<section id="runs">')


def test_the_new_page_offers_filters_and_an_upload(manager_client, categories):
    html = manager_client.get(_url("bulk_new")).content.decode()
    assert "<html" in html
    for name in ("channel", "country", "category", "opted_out", "upload"):
        assert f'name="{name}"' in html
    assert 'enctype="multipart/form-data"' in html
    assert f'action="{_url("bulk_create")}"' in html


def test_the_new_page_under_htmx_is_the_form_fragment(manager_client, categories):
    html = manager_client.get(_url("bulk_new"), headers=HTMX).content.decode()
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="bulk-main">')


# --- drafts and the preview ---------------------------------------------------------------


def test_filters_make_a_draft_whose_preview_shows_count_and_sample_and_changes_nothing(
    manager_client, manager, categories
):
    french = _french(3)
    factories.make_contact(country="US")

    response = manager_client.post(_url("bulk_create"), {"channel": "email", "country": "fr"})

    run = BulkRun.objects.get()
    assert response.status_code == 302
    assert response.url == _url("bulk_run", run)
    assert (run.state, run.criteria, run.created_by) == ("draft", {"country": "FR"}, manager)
    html = manager_client.get(response.url).content.decode()
    assert "Preview: nothing has been changed yet" in html
    assert '<b class="count">3</b> contacts match' in html
    for contact in french:
        assert contact.salesforce_id in html
    assert 'name="expected" value="3"' in html
    assert "Opt out 3 contacts" in html
    assert not BulkItem.objects.exists()
    assert not AuditEntry.objects.exists()
    assert not any(current_state(c).opted_out["email"] for c in french)


def test_a_draft_made_under_htmx_answers_with_its_preview_and_pushes_its_url(
    manager_client, categories
):
    _french(2)
    response = manager_client.post(
        _url("bulk_create"), {"channel": "email", "country": "FR"}, headers=HTMX
    )
    run = BulkRun.objects.get()
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="bulk-main" data-state="draft">')
    assert response["HX-Push-Url"] == _url("bulk_run", run)


def test_the_preview_says_how_many_are_already_opted_out(
    manager_client, manager, specialist, categories
):
    french = _french(3)
    apply_change(
        contact=french[0], actor=specialist, source="staff", note="x", opt_out={"email": True}
    )
    html = manager_client.get(_url("bulk_run", _draft(manager))).content.decode()
    assert "1 of them is already opted out of email and will be skipped" in html


def test_an_upload_shows_its_bad_rows_with_the_reasons(manager_client, categories):
    listed = factories.make_contact()
    upload = SimpleUploadedFile(
        "people.csv", f"email\n{listed.email}\nnobody@example.edu\nnot-an-email\n".encode()
    )

    response = manager_client.post(
        _url("bulk_create"), {"channel": "email", "upload": upload}, follow=True
    )

    html = response.content.decode()
    run = BulkRun.objects.get()
    assert run.criteria["contact_ids"] == [listed.pk]
    assert '<b class="count">1</b> contact match' in html
    assert "2 rows of people.csv cannot be used" in html
    assert "No contact has this email address." in html
    assert "Neither an email address nor a Salesforce ID" in html
    assert not BulkItem.objects.exists()


def test_a_file_over_the_limit_is_refused_with_a_message(manager_client, categories):
    upload = SimpleUploadedFile("big.csv", b"x" * (bulk.MAX_UPLOAD_BYTES + 1))
    response = manager_client.post(_url("bulk_create"), {"channel": "email", "upload": upload})
    assert response.status_code == 422
    assert "the limit is 5 MB" in response.content.decode()
    assert not BulkRun.objects.exists()


def test_a_file_that_cannot_be_read_is_refused_with_a_message(manager_client, categories):
    upload = SimpleUploadedFile("people.csv", "caf\xe9@example.edu".encode("latin-1"))
    response = manager_client.post(
        _url("bulk_create"), {"channel": "email", "upload": upload}, headers=HTMX
    )
    html = response.content.decode()
    assert response.status_code == 422
    assert "<html" not in html
    assert "not UTF-8" in html
    assert not BulkRun.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channel": "email"}, "Choose at least one filter"),
        ({"channel": "email", "country": "France"}, "Ensure this value has at most 2"),
        ({"channel": "email", "country": "F1"}, "Two letters"),
        ({"channel": "carrier-pigeon", "country": "FR"}, "Select a valid choice"),
    ],
)
def test_a_form_without_a_usable_selection_is_refused(manager_client, categories, data, message):
    response = manager_client.post(_url("bulk_create"), data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert not BulkRun.objects.exists()


def test_filters_and_an_upload_together_are_refused(manager_client, categories):
    upload = SimpleUploadedFile("people.csv", b"someone@example.edu\n")
    response = manager_client.post(
        _url("bulk_create"), {"channel": "email", "country": "FR", "upload": upload}
    )
    assert response.status_code == 422
    assert "either the filters or an upload, not both" in response.content.decode()


# --- confirming ---------------------------------------------------------------------------


def test_confirming_without_a_note_is_refused_and_queues_nothing(
    manager_client, manager, categories
):
    _french(2)
    run = _draft(manager)
    response = manager_client.post(_url("bulk_confirm", run), {"expected": "2", "note": "  "})
    assert response.status_code == 422
    assert "Write a note: every change needs one." in response.content.decode()
    run.refresh_from_db()
    assert run.state == BulkRunState.DRAFT
    assert not BulkItem.objects.exists()


def test_confirming_queues_the_run_and_shows_a_polling_progress_bar(
    manager_client, manager, categories
):
    _french(2)
    run = _draft(manager)

    response = manager_client.post(
        _url("bulk_confirm", run), {"expected": "2", "note": "French law forbids the mail."}
    )

    assert response.status_code == 302
    assert response.url == _url("bulk_run", run)
    run.refresh_from_db()
    assert (run.state, run.total, run.note) == ("queued", 2, "French law forbids the mail.")
    html = manager_client.get(response.url).content.decode()
    assert "Confirmed: 2 contacts will be opted out of email" in html
    assert '<progress max="2" value="0">' in html
    assert f'hx-get="{_url("bulk_run", run)}" hx-trigger="every 2s"' in html
    assert f'action="{_url("bulk_cancel", run)}"' in html
    assert 'style="' not in html


def test_confirming_under_htmx_answers_with_the_progress_fragment(
    manager_client, manager, categories
):
    _french(2)
    run = _draft(manager)
    response = manager_client.post(
        _url("bulk_confirm", run), {"expected": "2", "note": "French law."}, headers=HTMX
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="bulk-main" data-state="queued">')
    assert "<progress" in html


def test_confirming_a_run_twice_is_refused_with_a_clear_message(
    manager_client, manager, categories
):
    _french(2)
    run = _draft(manager)
    manager_client.post(_url("bulk_confirm", run), {"expected": "2", "note": "First."})

    response = manager_client.post(_url("bulk_confirm", run), {"expected": "2", "note": "Again."})

    assert response.status_code == 409
    assert "already confirmed" in response.content.decode()
    assert BulkItem.objects.filter(run=run).count() == 2
    run.refresh_from_db()
    assert run.note == "First."


def test_confirming_a_stale_preview_is_refused_and_shows_the_new_count(
    manager_client, manager, categories
):
    _french(2)
    run = _draft(manager)
    factories.make_contact(country="FR")  # someone joins after the preview was shown

    response = manager_client.post(
        _url("bulk_confirm", run), {"expected": "2", "note": "French law."}, headers=HTMX
    )

    html = response.content.decode()
    assert response.status_code == 409
    assert "The selection changed since the preview: it showed 2 contacts, now 3 match" in html
    assert '<b class="count">3</b> contacts match' in html
    assert 'name="expected" value="3"' in html
    assert "French law.</textarea>" in html  # what the manager wrote is kept
    run.refresh_from_db()
    assert run.state == BulkRunState.DRAFT
    assert not BulkItem.objects.exists()


# --- progress and cancel ------------------------------------------------------------------


def test_the_progress_poll_answers_with_the_counts_only(manager_client, manager, categories):
    _french(3)
    run = _draft(manager)
    bulk.confirm(run_id=run.pk, actor=manager, note="French law.")

    response = manager_client.get(_url("bulk_run", run), headers={**HTMX, "HX-Target": "progress"})

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<section class="card" id="progress"')
    assert '<span data-count="pending">3</span>' in html
    assert 'hx-trigger="every 2s"' in html


def test_a_finished_run_shows_its_counts_and_stops_polling(
    manager_client, manager, specialist, categories
):
    french = _french(3)
    apply_change(
        contact=french[0], actor=specialist, source="staff", note="x", opt_out={"email": True}
    )
    run = _draft(manager)
    bulk.confirm(run_id=run.pk, actor=manager, note="French law.")
    bulk.process(run.pk)

    poll = manager_client.get(_url("bulk_run", run), headers={**HTMX, "HX-Target": "progress"})
    page = manager_client.get(_url("bulk_run", run)).content.decode()

    html = poll.content.decode()
    assert '<progress max="3" value="3">' in html
    assert '<span data-count="applied">2</span>' in html
    assert '<span data-count="skipped">1</span>' in html
    assert "hx-trigger" not in html  # polling stops
    assert "Cancel the bulk change" not in html
    assert 'aria-label="Skipped contacts"' in page
    assert "Nothing to change" in page


def test_cancelling_a_queued_run_stops_it_and_says_so(manager_client, manager, categories):
    french = _french(2)
    run = _draft(manager)
    bulk.confirm(run_id=run.pk, actor=manager, note="French law.")

    response = manager_client.post(_url("bulk_cancel", run), follow=True)

    html = response.content.decode()
    run.refresh_from_db()
    assert (run.state, run.cancelled_by) == (BulkRunState.CANCELLED, manager)
    assert "Cancelled. No further contact will be changed" in html
    assert '<span data-count="pending">2</span>' in html
    assert bulk.process(run.pk) == bulk.IDLE
    assert not any(current_state(c).opted_out["email"] for c in french)


def test_cancelling_under_htmx_answers_with_the_run_fragment(manager_client, manager, categories):
    _french(1)
    run = _draft(manager)
    bulk.confirm(run_id=run.pk, actor=manager, note="French law.")
    response = manager_client.post(_url("bulk_cancel", run), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="bulk-main" data-state="cancelled">')


def test_cancelling_a_finished_run_is_refused_with_a_message(manager_client, manager, categories):
    _french(1)
    run = _draft(manager)
    bulk.confirm(run_id=run.pk, actor=manager, note="French law.")
    bulk.process(run.pk)

    html = manager_client.post(_url("bulk_cancel", run), follow=True).content.decode()

    assert "This bulk change has already finished: there is nothing to cancel." in html
    run.refresh_from_db()
    assert run.state == BulkRunState.DONE


def test_discarding_a_draft_says_nothing_was_applied(manager_client, manager, categories):
    run = _draft(manager)
    html = manager_client.post(_url("bulk_cancel", run), follow=True).content.decode()
    assert "Draft discarded: nothing was applied." in html
    run.refresh_from_db()
    assert run.state == BulkRunState.CANCELLED
