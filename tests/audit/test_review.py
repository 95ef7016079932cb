from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections
from django.urls import reverse

from audit.models import AuditAction, AuditEntry, AuditSeal, PendingReview
from audit.services import AlreadyReviewed, ReviewRefused, review_entry
from preferences.models import Source
from tests.audit.audit_data import HTMX, entry, ids_on_page, opt_out, opted_out_and_back

pytestmark = pytest.mark.django_db


def _review_url(target: AuditEntry) -> str:
    return reverse("audit:review", args=[target.pk])


@pytest.fixture
def re_enrolment(contact, specialist):
    return opted_out_and_back(contact, specialist)


def test_a_re_enrolment_awaits_review(re_enrolment):
    assert re_enrolment.risky
    assert PendingReview.objects.filter(entry=re_enrolment).exists()


def test_manager_marks_a_re_enrolment_reviewed_with_a_comment(
    manager_client, manager, re_enrolment
):
    response = manager_client.post(
        _review_url(re_enrolment), {"comment": "Checked the call recording."}
    )
    assert response.status_code == 302
    assert response.url == reverse("audit:entry", args=[re_enrolment.pk])
    review = AuditEntry.objects.get(reviews=re_enrolment)
    assert review.action == AuditAction.REVIEW
    assert review.actor == manager
    assert review.actor_label == manager.get_username()
    assert review.source == Source.STAFF
    assert review.contact_id == re_enrolment.contact_id
    assert review.note == "Checked the call recording."
    assert not review.risky
    assert not PendingReview.objects.filter(entry=re_enrolment).exists()

    page = manager_client.get(response.url).content.decode()
    assert "Marked reviewed" in page
    assert "Reviewed by <b>manager@test.example</b>" in page
    assert "Checked the call recording." in page
    assert f'action="{_review_url(re_enrolment)}"' not in page


def test_the_comment_is_optional(manager_client, re_enrolment):
    assert manager_client.post(_review_url(re_enrolment)).status_code == 302
    assert AuditEntry.objects.get(reviews=re_enrolment).note == "Reviewed"


def test_the_review_appears_in_the_log_and_leaves_the_unreviewed_list(manager_client, re_enrolment):
    log = reverse("audit:log")
    assert ids_on_page(manager_client.get(log + "?unreviewed=1").content.decode()) == [
        re_enrolment.pk
    ]
    manager_client.post(_review_url(re_enrolment), {"comment": "Fine."})
    review = AuditEntry.objects.get(reviews=re_enrolment)
    html = manager_client.get(log).content.decode()
    assert ids_on_page(html)[0] == review.pk
    assert f'Reviews <a href="/audit/{re_enrolment.pk}/">#{re_enrolment.pk}</a>' in html
    assert ids_on_page(manager_client.get(log + "?unreviewed=1").content.decode()) == []
    assert ids_on_page(manager_client.get(log + "?kind=review").content.decode()) == [review.pk]


def test_reviewing_twice_is_refused_and_changes_nothing(manager_client, re_enrolment):
    manager_client.post(_review_url(re_enrolment), {"comment": "First look."})
    count = AuditEntry.objects.count()
    response = manager_client.post(_review_url(re_enrolment), {"comment": "Second look."})
    assert response.status_code == 409
    html = response.content.decode()
    assert "already reviewed by manager@test.example" in html
    assert AuditEntry.objects.count() == count
    assert not AuditEntry.objects.filter(note="Second look.").exists()


def test_reviewing_an_entry_that_is_not_risky_is_refused(manager_client, contact, specialist):
    out = opt_out(contact, specialist)
    count = AuditEntry.objects.count()
    response = manager_client.post(_review_url(out), {"comment": "?"})
    assert response.status_code == 422
    assert "not risky actions" in response.content.decode()
    assert AuditEntry.objects.count() == count


def test_a_review_cannot_itself_be_reviewed(manager, re_enrolment):
    review = review_entry(entry_id=re_enrolment.pk, actor=manager)
    with pytest.raises(ReviewRefused, match="not risky"):
        review_entry(entry_id=review.pk, actor=manager)


@pytest.mark.parametrize(
    "action", [AuditAction.BULK, AuditAction.SYNC_RETRY, AuditAction.RESUBSCRIBE]
)
def test_bulk_runs_and_manual_overrides_are_reviewed_too(manager, action):
    risky = entry(action=action, note="Manual override.")
    assert PendingReview.objects.filter(entry=risky).exists()
    review_entry(entry_id=risky.pk, actor=manager, comment="Seen.")
    assert not PendingReview.objects.filter(entry=risky).exists()


def test_an_overlong_comment_is_refused_with_a_message(manager_client, re_enrolment):
    response = manager_client.post(_review_url(re_enrolment), {"comment": "x" * 4001})
    assert response.status_code == 422
    assert "at most 4000 characters" in response.content.decode()
    assert PendingReview.objects.filter(entry=re_enrolment).exists()


def test_system_team_and_specialists_cannot_review(system_client, specialist_client, re_enrolment):
    for client in (system_client, specialist_client):
        assert client.post(_review_url(re_enrolment)).status_code == 403
        assert client.post(_review_url(re_enrolment), headers=HTMX).status_code == 403
    assert PendingReview.objects.filter(entry=re_enrolment).exists()


def test_review_refuses_get(manager_client, re_enrolment):
    assert manager_client.get(_review_url(re_enrolment)).status_code == 405


def test_review_under_htmx_swaps_the_review_region_and_updates_the_badge(
    manager_client, re_enrolment
):
    response = manager_client.post(_review_url(re_enrolment), {"comment": "ok"}, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<section class="card review" id="review"')
    assert "Marked reviewed" in html
    assert "reviewed</span>" in html
    assert 'id="review-badge"' in html and 'hx-swap-oob="true"' in html
    assert '<span class="count">0</span>' in html


def test_a_refusal_under_htmx_is_swapped_in_with_its_message(manager_client, re_enrolment):
    manager_client.post(_review_url(re_enrolment))
    response = manager_client.post(_review_url(re_enrolment), headers=HTMX)
    assert response.status_code == 409
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card review" id="review"')
    assert "already reviewed" in html


def test_the_service_refuses_a_second_review(manager, re_enrolment):
    review_entry(entry_id=re_enrolment.pk, actor=manager)
    with pytest.raises(AlreadyReviewed):
        review_entry(entry_id=re_enrolment.pk, actor=manager, comment="again")
    assert AuditEntry.objects.filter(reviews=re_enrolment).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_review_is_sealed_into_the_hash_chain_at_commit(categories, specialist, manager):
    from tests import factories

    target = opted_out_and_back(factories.make_contact(), specialist)
    review = review_entry(entry_id=target.pk, actor=manager, comment="Sealed?")
    seal = AuditSeal.objects.get(entry=review)
    assert seal.seq == AuditSeal.objects.get(entry=target).seq + 1


@pytest.mark.django_db(transaction=True)
def test_two_managers_reviewing_at_once_write_one_review(categories, specialist, make_user):
    from tests import factories

    first_manager = make_user("manager", "first@test.example")
    second_manager = make_user("manager", "second@test.example")
    target = opted_out_and_back(factories.make_contact(), specialist)
    outcome: dict[str, object] = {}

    def second() -> None:
        try:
            review_entry(entry_id=target.pk, actor=second_manager, comment="Second.")
            outcome["second"] = "reviewed"
        except AlreadyReviewed as refused:
            outcome["second"] = str(refused)
        finally:
            connections.close_all()

    from django.db import transaction

    with transaction.atomic():
        review_entry(entry_id=target.pk, actor=first_manager, comment="First.")
        thread = threading.Thread(target=second)
        thread.start()
        # Hold the first review uncommitted until the second is waiting for its lock.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                # pg_stat_activity is read once per transaction unless the snapshot is cleared.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND pid <> pg_backend_pid()"
                )
                if cursor.fetchone()[0]:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the second review never waited for the first")
    thread.join(10)
    assert "already reviewed by first@test.example" in str(outcome["second"])
    assert list(AuditEntry.objects.filter(reviews=target).values_list("note", flat=True)) == [
        "First."
    ]


# --- four eyes ----------------------------------------------------------------------------


@pytest.fixture
def own_re_enrolment(contact, manager):
    """A re-enrolment the manager made themselves."""
    return opted_out_and_back(contact, manager)


def test_a_manager_cannot_review_their_own_risky_action(manager_client, own_re_enrolment):
    count = AuditEntry.objects.count()
    response = manager_client.post(_review_url(own_re_enrolment), {"comment": "Fine by me."})
    assert response.status_code == 422
    assert "You made this change: someone else must review it." in response.content.decode()
    assert AuditEntry.objects.count() == count
    assert PendingReview.objects.filter(entry=own_re_enrolment).exists()


def test_another_manager_reviews_it(make_user, own_re_enrolment):
    other = make_user("manager", "second-manager@test.example")
    review = review_entry(entry_id=own_re_enrolment.pk, actor=other, comment="Looked.")
    assert review.actor == other
    assert review.note == "Looked."
    assert not PendingReview.objects.filter(entry=own_re_enrolment).exists()


def test_a_named_one_manager_office_may_review_their_own_and_the_review_says_so(
    settings, manager, own_re_enrolment
):
    settings.SELF_REVIEW_ALLOWED_FOR = [manager.get_username().lower()]
    review = review_entry(entry_id=own_re_enrolment.pk, actor=manager, comment="Checked.")
    assert review.note.startswith("Checked.\n")
    assert "one-manager office exception" in review.note
    assert not PendingReview.objects.filter(entry=own_re_enrolment).exists()


def test_the_exception_names_one_manager_not_every_manager(settings, manager, own_re_enrolment):
    settings.SELF_REVIEW_ALLOWED_FOR = ["someone-else@test.example"]
    with pytest.raises(ReviewRefused):
        review_entry(entry_id=own_re_enrolment.pk, actor=manager)


def test_the_entry_page_does_not_offer_the_review_to_who_made_the_change(
    manager_client, own_re_enrolment
):
    page = manager_client.get(reverse("audit:entry", args=[own_re_enrolment.pk])).content
    html = page.decode()
    assert "You made this change: another manager reviews it." in html
    assert f'action="{_review_url(own_re_enrolment)}"' not in html
