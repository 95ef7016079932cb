"""The re-subscribe queue's pages and the contact page's Marketing Cloud card."""

from __future__ import annotations

import csv
import io

import pytest
from django.core import mail
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditAction
from integrations.marketing_cloud import sync as lookup
from preferences.models import ResubscribeState, SubscriberStatus
from preferences.resubscribe import requests as resubscribe
from preferences.resubscribe import subscribers
from preferences.services import apply_change
from tests import factories

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
PARENT, ALUMNI, ATHLETICS = "510000001", "510000002", "510000003"


@pytest.fixture
def units(db):
    return factories.make_business_units()


@pytest.fixture
def request_(units, contact, specialist):
    return factories.make_resubscribe_request(contact, actor=specialist)


def _url(name, pk=None):
    return reverse(f"preferences:{name}", kwargs={"pk": pk} if pk is not None else None)


def _html(response):
    return response.content.decode()


# --- the queue -----------------------------------------------------------------------------


def test_the_queue_lists_open_requests_urgent_first_then_oldest(
    system_client, units, specialist, categories
):
    older, newer, flagged, done = (
        factories.make_resubscribe_request(factories.make_contact(), actor=specialist)
        for _ in range(4)
    )
    resubscribe.mark_urgent(request_id=flagged.pk, actor=specialist, reason="Soon.")
    resubscribe.complete(request_id=done.pk, actor=specialist, note="Done in MC.")

    response = system_client.get(_url("resubscribe_queue"))

    html = _html(response)
    assert response.status_code == 200
    assert "<html" in html
    order = [html.index(f'data-request="{r.pk}"') for r in (flagged, older, newer)]
    assert order == sorted(order)
    assert f'data-request="{done.pk}"' not in html
    assert "urgent" in html
    assert 'hx-push-url="true"' in html


def test_the_queue_filters_by_business_unit_status_and_state(
    system_client, units, specialist, categories
):
    held = factories.make_resubscribe_request(
        factories.make_contact(), actor=specialist, business_unit=units[1]
    )
    bounced = factories.make_resubscribe_request(
        factories.make_contact(), actor=specialist, status="bounced", business_unit=units[2]
    )
    rejected = factories.make_resubscribe_request(
        factories.make_contact(), actor=specialist, business_unit=units[1]
    )
    resubscribe.reject(request_id=rejected.pk, actor=specialist, note="Duplicate.")

    def shown(**params):
        html = _html(system_client.get(_url("resubscribe_queue"), params))
        return {r.pk for r in (held, bounced, rejected) if f'data-request="{r.pk}"' in html}

    assert shown() == {held.pk, bounced.pk}
    assert shown(business_unit=ALUMNI) == {held.pk}
    assert shown(status="bounced") == {bounced.pk}
    assert shown(state="rejected") == {rejected.pk}
    assert shown(state="all", business_unit=ALUMNI) == {held.pk, rejected.pk}


def test_a_bad_filter_is_explained_not_a_server_error(system_client, request_):
    response = system_client.get(_url("resubscribe_queue"), {"business_unit": "nope"})
    assert response.status_code == 200
    assert "Select a valid choice" in _html(response)


def test_the_queue_under_htmx_is_the_table_only(system_client, request_):
    response = system_client.get(_url("resubscribe_queue"), {"state": "open"}, headers=HTMX)
    html = _html(response)
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<section id="queue">')
    assert f'data-request="{request_.pk}"' in html


def test_specialists_and_managers_cannot_open_the_queue(
    specialist_client, manager_client, request_
):
    for client in (specialist_client, manager_client):
        for url in (
            _url("resubscribe_queue"),
            _url("resubscribe_sheet"),
            _url("resubscribe_request", request_.pk),
        ):
            assert client.get(url).status_code == 403
            assert client.get(url, headers=HTMX).status_code == 403


def test_the_nav_links_the_queue_for_the_system_team_only(system_client, specialist_client):
    link = f'href="{_url("resubscribe_queue")}"'
    assert link in _html(system_client.get(_url("search")))
    assert link not in _html(specialist_client.get(_url("search")))


# --- the sheet -----------------------------------------------------------------------------


def _sheet(client, **params):
    response = client.get(_url("resubscribe_sheet"), params)
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    body = b"".join(response.streaming_content).decode("utf-8-sig")
    return response, list(csv.reader(io.StringIO(body)))


def test_the_sheet_has_the_columns_and_one_row_per_open_request(
    system_client, units, specialist, categories
):
    contact = factories.make_contact(first_name="Zoë", last_name="Ndlovu")
    request = factories.make_resubscribe_request(contact, actor=specialist)
    resubscribe.mark_urgent(request_id=request.pk, actor=specialist, reason="Soon.")
    closed = factories.make_resubscribe_request(factories.make_contact(), actor=specialist)
    resubscribe.reject(request_id=closed.pk, actor=specialist, note="No.")

    response, rows = _sheet(system_client, state="rejected")  # the state filter is ignored

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="resubscribe-')
    assert rows[0] == [
        "Contact",
        "Salesforce ID",
        "Email",
        "Business unit",
        "Status seen",
        "Requested by",
        "Requested at",
        "Consent reference",
        "Urgent",
    ]
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["Contact"] == "Zoë Ndlovu"
    assert row["Salesforce ID"] == contact.salesforce_id
    assert row["Email"] == contact.email
    assert row["Business unit"] == f"Alumni Association ({ALUMNI})"
    assert row["Status seen"] == "Held (gray)"
    assert row["Requested by"] == specialist.email
    assert row["Requested at"][:4].isdigit()
    assert row["Consent reference"].startswith(f"PD-{request.re_enrolment_id} (Phone call, ")
    assert row["Urgent"] == "yes"


def test_the_sheet_neutralises_formulas(system_client, units, specialist, categories):
    contact = factories.make_contact(
        first_name='=HYPERLINK("http://evil.example","x")', last_name="", email="+1@example.edu"
    )
    factories.make_resubscribe_request(contact, actor=specialist)

    _, rows = _sheet(system_client)

    assert rows[1][0] == '\'=HYPERLINK("http://evil.example","x")'
    assert rows[1][2] == "'+1@example.edu"


def test_the_sheet_filters_by_business_unit(system_client, units, specialist, categories):
    factories.make_resubscribe_request(
        factories.make_contact(), actor=specialist, business_unit=units[0]
    )
    factories.make_resubscribe_request(
        factories.make_contact(), actor=specialist, business_unit=units[2]
    )
    _, rows = _sheet(system_client, business_unit=ATHLETICS)
    assert [row[3] for row in rows[1:]] == [f"Athletics ({ATHLETICS})"]


# --- one request ---------------------------------------------------------------------------


def test_the_request_page_shows_the_evidence_and_the_trail(system_client, request_, specialist):
    response = system_client.get(_url("resubscribe_request", request_.pk))
    html = _html(response)
    assert response.status_code == 200
    assert "<html" in html
    assert "Held (gray)" in html
    assert specialist.email in html
    assert "Asked to be emailed again." in html  # the re-enrolment's note
    assert "Phone call" in html and "attested" in html
    assert f"PD-{request_.re_enrolment_id}" in html
    assert 'data-action="resubscribe_request"' in html
    for action in ("marketing-cloud", "start", "done", "reject"):
        assert f'action="/resubscribe/{request_.pk}/{action}/"' in html


def test_the_request_page_under_htmx_is_the_fragment(system_client, request_):
    response = system_client.get(_url("resubscribe_request", request_.pk), headers=HTMX)
    html = _html(response)
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="resubscribe-request"')


@pytest.mark.parametrize(
    ("name", "state", "message"),
    [
        ("resubscribe_start", ResubscribeState.IN_PROGRESS, "in progress"),
        ("resubscribe_done", ResubscribeState.DONE, "closed as done"),
        ("resubscribe_reject", ResubscribeState.REJECTED, "rejected"),
    ],
)
def test_each_step_by_plain_post_redirects_back_to_the_request(
    system_client, system_user, request_, name, state, message
):
    response = system_client.post(_url(name, request_.pk), {"note": "Weekly batch."})
    assert response.status_code == 302
    assert response.url == _url("resubscribe_request", request_.pk)
    request_.refresh_from_db()
    assert request_.state == state
    entry = request_.audit_entries.order_by("-id").first()
    assert (entry.actor, entry.action) == (system_user, AuditAction.RESUBSCRIBE_REQUEST)
    assert "Weekly batch." in entry.note
    page = _html(system_client.get(response.url))
    assert message in page.lower()


@pytest.mark.parametrize("name", ["resubscribe_start", "resubscribe_done", "resubscribe_reject"])
def test_each_step_under_htmx_answers_with_the_fragment(system_client, request_, name):
    response = system_client.post(_url(name, request_.pk), {"note": "Batch."}, headers=HTMX)
    html = _html(response)
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="resubscribe-request"')
    assert 'class="messages"' in html


@pytest.mark.parametrize("name", ["resubscribe_start", "resubscribe_done", "resubscribe_reject"])
def test_a_step_without_a_note_is_refused_with_the_error_by_its_form(system_client, request_, name):
    response = system_client.post(_url(name, request_.pk), {"note": " "}, headers=HTMX)
    assert response.status_code == 422
    assert "Write a note." in _html(response)
    request_.refresh_from_db()
    assert request_.state == ResubscribeState.OPEN


def test_a_step_on_a_closed_request_is_refused_with_a_message(system_client, system_user, request_):
    resubscribe.reject(request_id=request_.pk, actor=system_user, note="No.")
    response = system_client.post(_url("resubscribe_done", request_.pk), {"note": "Done."})
    assert response.status_code == 422
    assert "rejected already" in _html(response)


def test_steps_are_for_the_system_team(specialist_client, manager_client, request_):
    for client in (specialist_client, manager_client):
        for name in ("resubscribe_start", "resubscribe_done", "resubscribe_reject"):
            url = _url(name, request_.pk)
            assert client.post(url, {"note": "x"}).status_code == 403
            assert client.post(url, {"note": "x"}, headers=HTMX).status_code == 403
        url = _url("resubscribe_in_marketing_cloud", request_.pk)
        assert client.post(url, {"note": "x", "confirm": "on"}).status_code == 403
    request_.refresh_from_db()
    assert request_.state == ResubscribeState.OPEN


def test_steps_refuse_get(system_client, request_):
    for name in (
        "resubscribe_start",
        "resubscribe_done",
        "resubscribe_reject",
        "resubscribe_in_marketing_cloud",
        "resubscribe_urgent",
    ):
        assert system_client.get(_url(name, request_.pk)).status_code == 405


def test_resubscribing_from_the_request_page_reads_active_and_closes_it(
    marketing_cloud, system_client, request_
):
    key = request_.contact.salesforce_id
    marketing_cloud.set_subscriber(key, "Held", mid=ALUMNI)
    url = _url("resubscribe_in_marketing_cloud", request_.pk)

    response = system_client.post(url, {"note": "Batch."}, headers=HTMX)
    assert response.status_code == 422
    assert "tick the box" in _html(response)
    assert marketing_cloud.status(key, ALUMNI) == "Held"

    response = system_client.post(url, {"note": "Batch.", "confirm": "on"}, headers=HTMX)

    html = _html(response)
    assert response.status_code == 200
    assert "<html" not in html
    assert "reads Active" in html
    assert 'data-state="done"' in html
    assert 'class="status-now"><span class="shirt" data-status="active"' in html
    assert marketing_cloud.status(key, ALUMNI) == "Active"
    request_.refresh_from_db()
    assert request_.state == ResubscribeState.DONE


def test_a_failed_resubscribe_is_explained_and_changes_nothing(
    marketing_cloud, system_client, request_
):
    marketing_cloud.fail("http_503")
    response = system_client.post(
        _url("resubscribe_in_marketing_cloud", request_.pk),
        {"note": "Batch.", "confirm": "on"},
    )
    assert response.status_code == 422
    assert "Nothing was changed" in _html(response)
    request_.refresh_from_db()
    assert request_.state == ResubscribeState.OPEN


# --- the contact page's card ---------------------------------------------------------------


def _card(html):
    start = html.index('id="marketing-cloud"')
    return html[start : html.index("</section>", start)]


def test_the_contact_page_shows_statuses_per_unit_and_open_requests(
    specialist_client, marketing_cloud, request_, contact
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ALUMNI)
    subscribers.refresh_statuses(contact=contact)

    card = _card(_html(specialist_client.get(_url("contact", contact.pk))))

    assert f'data-mid="{PARENT}" data-status="not_found"' in card
    assert f'data-mid="{ALUMNI}" data-status="held"' in card
    assert "Held (gray)" in card and "read " in card
    assert f'data-request="{request_.pk}"' in card
    assert f'action="{_url("resubscribe_urgent", request_.pk)}"' in card
    assert f'action="{_url("contact_marketing_cloud_refresh", contact.pk)}"' in card
    # A specialist does not work the queue: no link into it.
    assert f'href="{_url("resubscribe_request", request_.pk)}"' not in card


def test_the_contact_page_says_when_marketing_cloud_is_not_connected(
    specialist_client, contact, specialist, units
):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="x", opt_out={"email": True}
    )
    html = _html(specialist_client.get(_url("contact", contact.pk)))
    assert "Not connected" in _card(html)
    assert "Refresh statuses" not in html
    assert "Marketing Cloud is not connected: checks wait" in html
    assert f'data-mid="{PARENT}" data-status="unread"' in html


def test_a_pending_check_is_polled_until_done(
    marketing_cloud, specialist_client, contact, specialist, units, settings
):
    settings.SALESFORCE_ENABLED = False
    apply_change(
        contact=contact, actor=specialist, source="staff", note="x", opt_out={"email": True}
    )
    card = _card(_html(specialist_client.get(_url("contact", contact.pk))))
    assert 'hx-trigger="every 3s"' in card
    assert _url("contact_marketing_cloud", contact.pk) in card

    lookup.check_batch()

    fragment = _html(
        specialist_client.get(_url("contact_marketing_cloud", contact.pk), headers=HTMX)
    )
    assert fragment.lstrip().startswith('<section class="card marketing-cloud"')
    assert "every 3s" not in fragment


def test_the_card_costs_the_contact_page_the_same_queries_however_many_requests(
    specialist_client, marketing_cloud, units, contact, specialist
):
    url = _url("contact", contact.pk)
    factories.make_resubscribe_request(contact, actor=specialist, business_unit=units[0])
    subscribers.refresh_statuses(contact=contact)
    with CaptureQueriesContext(connection) as one:
        specialist_client.get(url)
    request = factories.make_resubscribe_request(contact, actor=specialist, business_unit=units[1])
    from django.db import transaction

    with transaction.atomic():
        for unit in (units[0], units[2]):
            resubscribe.open_request(
                contact=contact,
                business_unit=unit,
                status_seen="bounced",
                re_enrolment=request.re_enrolment,
            )
    with CaptureQueriesContext(connection) as three:
        html = _html(specialist_client.get(url))
    assert _card(html).count('class="resubscribe-request"') == 3
    assert len(three) == len(one)


def test_refresh_under_htmx_answers_with_the_card(
    marketing_cloud, specialist_client, contact, units
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Bounced", mid=ATHLETICS)
    response = specialist_client.post(
        _url("contact_marketing_cloud_refresh", contact.pk), headers=HTMX
    )
    html = _html(response)
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<section class="card marketing-cloud"')
    assert f'data-mid="{ATHLETICS}" data-status="bounced"' in html
    assert "read from Marketing Cloud just now" in html
    assert SubscriberStatus.objects.filter(contact=contact).count() == 3


def test_refresh_by_plain_post_returns_to_the_contact_page(
    marketing_cloud, specialist_client, contact, units
):
    response = specialist_client.post(_url("contact_marketing_cloud_refresh", contact.pk))
    assert response.status_code == 302
    assert response.url == _url("contact", contact.pk)
    page = _html(specialist_client.get(response.url))
    assert "read from Marketing Cloud just now" in page


def test_a_failed_refresh_says_so_in_the_card(marketing_cloud, specialist_client, contact, units):
    marketing_cloud.fail("http_503")
    response = specialist_client.post(
        _url("contact_marketing_cloud_refresh", contact.pk), headers=HTMX
    )
    assert response.status_code == 200
    assert "could not be read" in _card(_html(response))


def test_refresh_is_refused_to_outsiders_and_to_get(outsider_client, specialist_client, contact):
    url = _url("contact_marketing_cloud_refresh", contact.pk)
    assert outsider_client.post(url).status_code == 403
    assert outsider_client.post(url, headers=HTMX).status_code == 403
    assert specialist_client.get(url).status_code == 405


def test_a_specialist_marks_a_request_urgent_from_the_contact_page(
    specialist_client, request_, django_capture_on_commit_callbacks, settings
):
    settings.RESUBSCRIBE_NOTIFY_EMAIL = "ecomm-system@university.example"
    with django_capture_on_commit_callbacks(execute=True):
        response = specialist_client.post(
            _url("resubscribe_urgent", request_.pk),
            {"reason": "Board member; gala invite Friday."},
            headers=HTMX,
        )
    html = _html(response)
    assert response.status_code == 200
    assert html.lstrip().startswith('<section class="card marketing-cloud"')
    assert "the system team was emailed" in html
    assert "Urgent: Board member; gala invite Friday." in html
    request_.refresh_from_db()
    assert request_.urgent
    [message] = mail.outbox
    assert message.to == ["ecomm-system@university.example"]
    assert f"/resubscribe/{request_.pk}/" in message.body


def test_urgent_without_a_reason_is_refused_under_the_form(specialist_client, request_):
    response = specialist_client.post(
        _url("resubscribe_urgent", request_.pk), {"reason": ""}, headers=HTMX
    )
    assert response.status_code == 422
    assert "Say why the request is urgent." in _html(response)
    request_.refresh_from_db()
    assert not request_.urgent
    assert mail.outbox == []


def test_urgent_by_plain_post_returns_to_the_contact_page(specialist_client, request_):
    response = specialist_client.post(_url("resubscribe_urgent", request_.pk), {"reason": "Soon."})
    assert response.status_code == 302
    assert response.url == _url("contact", request_.contact_id)
    request_.refresh_from_db()
    assert request_.urgent


def test_outsiders_cannot_mark_urgent(outsider_client, request_):
    url = _url("resubscribe_urgent", request_.pk)
    assert outsider_client.post(url, {"reason": "x"}).status_code == 403
    assert outsider_client.post(url, {"reason": "x"}, headers=HTMX).status_code == 403
    request_.refresh_from_db()
    assert not request_.urgent


def test_the_card_is_one_query(specialist, units, contact, marketing_cloud):
    from preferences.models import Contact
    from preferences.resubscribe.views import marketing_cloud_context

    factories.make_resubscribe_request(contact, actor=specialist)
    subscribers.refresh_statuses(contact=contact)
    loaded = Contact.objects.prefetch_related("syncs").get(pk=contact.pk)  # as the page loads it
    with CaptureQueriesContext(connection) as queries:
        context = marketing_cloud_context(loaded)
    assert len(queries) == 1
    assert [u.mid for u in context["mc"]["units"]] == [PARENT, ALUMNI, ATHLETICS]
    assert [u.mid for u in context["mc"]["requests"]] == [ALUMNI]


def test_an_open_request_in_a_retired_business_unit_still_shows(
    system_client, units, contact, specialist
):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    units[1].is_active = False
    units[1].save()
    card = _card(_html(system_client.get(_url("contact", contact.pk))))
    assert f'data-mid="{ALUMNI}"' not in card  # not looked up any more ...
    assert f'data-request="{request.pk}"' in card  # ... but its request is still to work
    assert f'href="{_url("resubscribe_request", request.pk)}"' in card  # the team's way in
