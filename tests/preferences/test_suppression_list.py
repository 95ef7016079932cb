"""The global suppression list page and its CSV (preferences/suppression/), and what the
contact page shows of email-platform events (docs/design.md, rules 9 and 10)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from preferences.events.intake import ParsedEvent, apply_pending, receive
from preferences.models import Contact, EventKind
from preferences.services import apply_change, current_state
from preferences.suppression import views
from tests import factories

pytestmark = pytest.mark.django_db

LIST = reverse("preferences:suppression_list")
EXPORT = reverse("preferences:suppression_export")
HTMX = {"HX-Request": "true"}
UNIT_MID = "510000002"


@pytest.fixture
def people(categories, specialist):
    """One contact per reason, one with two, a sender opt-out only, and one not suppressed."""
    opted_out = factories.make_contact(first_name="Olga", last_name="Optout")
    bounced = factories.make_contact(first_name="Bea", last_name="Bounced")
    spam = factories.make_contact(first_name="Sam", last_name="Spam")
    both = factories.make_contact(first_name="Bo", last_name="Both")
    sender = factories.make_contact(first_name="Sid", last_name="Sender")
    fine = factories.make_contact(first_name="Fay", last_name="Fine")
    for contact in (opted_out, both):
        apply_change(
            contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
        )
    for contact in (bounced, both):
        apply_change(
            contact=contact, actor=None, source="email_platform", note="Bounce.", bounced=True
        )
    apply_change(
        contact=spam,
        actor=None,
        source="email_platform",
        note="Spam.",
        opt_out={"email": True},
        spam_report=True,
    )
    factories.make_business_units()
    apply_change(
        contact=sender,
        actor=None,
        source="email_platform",
        note='=HYPERLINK("http://x") from one unit.',
        sender_opt_out={f"business_unit:{UNIT_MID}": True},
    )
    return {
        "opted_out": opted_out,
        "bounced": bounced,
        "spam": spam,
        "both": both,
        "sender": sender,
        "fine": fine,
    }


def _ids(response) -> set[int]:
    html = response.content.decode()
    return {c.pk for c in Contact.objects.all() if f'data-contact="{c.pk}"' in html}


def _csv(response) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content).decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(body)))


def test_a_specialist_may_not_see_or_export_the_list(specialist_client, people):
    assert specialist_client.get(LIST).status_code == 403
    assert specialist_client.get(EXPORT).status_code == 403


def test_managers_and_the_system_team_see_it_with_a_top_bar_link(manager_client, system_client):
    for client in (manager_client, system_client):
        response = client.get(LIST)
        assert response.status_code == 200
        assert f'href="{LIST}">Suppression list</a>' in response.content.decode()


def test_the_specialists_top_bar_has_no_link(specialist_client, contact):
    html = specialist_client.get(reverse("preferences:search")).content.decode()
    assert "Suppression list" not in html


def test_the_global_list_holds_every_reason_and_no_sender_opt_out(manager_client, people):
    response = manager_client.get(LIST)
    p = people
    assert _ids(response) == {p["opted_out"].pk, p["bounced"].pk, p["spam"].pk, p["both"].pk}
    html = response.content.decode()
    row = html[html.index(f'data-contact="{p["both"].pk}"') :]
    row = row[: row.index("</tr>")]
    assert "Opted out of email" in row and "Bounced" in row
    assert f"{timezone.localtime():%Y}" in row


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("opted_out", {"opted_out", "spam", "both"}),
        ("bounced", {"bounced", "both"}),
        ("spam_report", {"spam"}),
    ],
)
def test_filtered_by_reason(manager_client, people, reason, expected):
    response = manager_client.get(LIST, {"reason": reason})
    assert _ids(response) == {people[name].pk for name in expected}


def test_filtered_by_since_date(manager_client, people):
    Contact.objects.filter(pk=people["bounced"].pk).update(
        email_bounced_at=timezone.now() - timedelta(days=40)
    )
    since = (timezone.localdate() - timedelta(days=10)).isoformat()
    response = manager_client.get(LIST, {"reason": "bounced", "since": since})
    assert _ids(response) == {people["both"].pk}
    response = manager_client.get(LIST, {"since": since})
    assert people["bounced"].pk not in _ids(response)
    assert people["spam"].pk in _ids(response)


def test_a_bad_date_is_refused_with_a_message(manager_client, people):
    response = manager_client.get(LIST, {"since": "yesterday"})
    assert response.status_code == 422
    assert "Enter a valid date." in response.content.decode()


def test_the_sender_opt_outs_are_listed_separately(manager_client, people):
    response = manager_client.get(LIST, {"list": "senders"})
    assert _ids(response) == {people["sender"].pk}
    html = response.content.decode()
    unit = next(name for mid, name, _ in factories.BUSINESS_UNITS if mid == UNIT_MID)
    assert unit in html


def test_under_htmx_the_filters_answer_with_the_list_only(manager_client, people):
    response = manager_client.get(LIST, {"reason": "spam_report"}, headers=HTMX)
    html = response.content.decode()
    assert "<html" not in html
    assert html.lstrip().startswith('<section id="suppression"')


def test_pages_follow_the_cursor(manager_client, people, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    first = manager_client.get(LIST)
    assert len(_ids(first)) == 3
    assert 'rel="next"' in first.content.decode()
    last_shown = max(_ids(first))
    second = manager_client.get(LIST, {"after": last_shown})
    assert _ids(second) == {people["both"].pk}
    assert 'rel="next"' not in second.content.decode()


def test_the_csv_holds_the_filtered_list_with_reasons_and_dates(manager_client, people):
    response = manager_client.get(EXPORT, {"reason": "bounced"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = _csv(response)
    assert {int(r["contact_id"]) for r in rows} == {people["bounced"].pk, people["both"].pk}
    both = next(r for r in rows if int(r["contact_id"]) == people["both"].pk)
    assert both["reasons"] == "opted out; bounced"
    assert both["email"] == people["both"].email
    assert both["bounced_since"] and both["opted_out_since"] and not both["spam_reported_at"]


def test_the_sender_csv_is_spreadsheet_safe(manager_client, people):
    rows = _csv(manager_client.get(EXPORT, {"list": "senders"}))
    (row,) = rows
    assert row["sender_scope"] == f"business_unit:{UNIT_MID}"
    assert row["note"].startswith("'=HYPERLINK")


def test_the_csv_link_carries_the_filters(manager_client, people):
    html = manager_client.get(LIST, {"reason": "spam_report"}).content.decode()
    assert f'href="{EXPORT}?list=global&amp;reason=spam_report"' in html


# ---- the contact page ----------------------------------------------------------------------


def _page(client, contact):
    return client.get(reverse("preferences:contact", kwargs={"pk": contact.pk})).content.decode()


def test_the_contact_page_shows_spam_and_sender_opt_outs_in_the_banner(specialist_client, people):
    banner = _page(specialist_client, people["spam"])
    assert 'data-channel="spam"' in banner
    html = _page(specialist_client, people["sender"])
    unit = next(name for mid, name, _ in factories.BUSINESS_UNITS if mid == UNIT_MID)
    assert 'aria-label="Opt-out banner"' in html
    assert f"Opted out of mail from <b>{unit}</b> since" in html


def test_the_contact_page_lists_the_platform_events(specialist_client, contact):
    receive(
        "marketing_cloud",
        "ens",
        [
            ParsedEvent(
                event_id="evt-soft-1",
                kind=EventKind.SOFT_BOUNCE,
                occurred_at=timezone.now(),
                subscriber_key=contact.salesforce_id,
                reason="mailbox full",
            )
        ],
    )
    apply_pending()
    html = _page(specialist_client, contact)
    section = html[html.index('id="platform-events"') :]
    assert 'data-kind="soft_bounce"' in section
    assert "Marketing Cloud" in section and "evt-soft-1" in section
    assert "Soft bounce 1 of" in section


def _clear(client, contact, note="Address corrected: typo in the domain.", version=None):
    return client.post(
        reverse("preferences:clear_bounce", kwargs={"pk": contact.pk}),
        {"note": note, "version": contact.version if version is None else version},
    )


def test_staff_clear_bounced_with_a_note_and_the_opt_out_stays(specialist_client, people):
    both = people["both"]
    html = _page(specialist_client, both)
    assert "Clear Bounced" in html
    response = _clear(specialist_client, both)
    assert response.status_code == 302
    both.refresh_from_db()
    state = current_state(both)
    assert state.bounced is False and state.opted_out["email"] is True
    entry = AuditEntry.objects.filter(contact=both).order_by("-id").first()
    assert entry.action == AuditAction.BOUNCE
    assert entry.note == "Address corrected: typo in the domain."
    assert "Bounced cleared" in _page(specialist_client, both)


def test_clearing_bounced_needs_a_note(specialist_client, people):
    response = _clear(specialist_client, people["bounced"], note="  ")
    assert response.status_code == 422
    assert "Write a note." in response.content.decode()
    people["bounced"].refresh_from_db()
    assert people["bounced"].email_bounced is True


def test_clearing_bounced_from_a_stale_page_is_refused(specialist_client, people):
    bounced = people["bounced"]
    stale = bounced.version
    apply_change(
        contact=bounced, actor=None, source="staff", note="Meanwhile.", opt_out={"phone": True}
    )
    response = _clear(specialist_client, bounced, version=stale)
    assert response.status_code == 409
    assert "Someone else changed this contact" in response.content.decode()
    bounced.refresh_from_db()
    assert bounced.email_bounced is True


def test_no_clear_form_when_not_bounced(specialist_client, contact):
    assert "Clear Bounced" not in _page(specialist_client, contact)
