from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.forms import ID_BOUND_MARGIN, PAGE_SIZE, day_start
from audit.models import AuditAction, AuditEntry
from preferences.models import Source
from preferences.services import apply_change
from tests import factories
from tests.audit.audit_data import (
    HTMX,
    entry,
    ids_on_page,
    opt_out,
    opted_out_and_back,
    seal_now,
)

pytestmark = pytest.mark.django_db

LOG = reverse("audit:log")


def _get(client, **params):
    return client.get(LOG + ("?" + urlencode(params) if params else ""))


def _ids(client, **params):
    response = _get(client, **params)
    assert response.status_code == 200, response.content.decode()[:2000]
    return ids_on_page(response.content.decode())


# ---- who may see it -------------------------------------------------------------------------


def test_manager_sees_every_kind_of_entry_newest_first(manager_client, contact, specialist):
    back = opted_out_and_back(contact, specialist)
    escalation = entry(actor=specialist, contact=contact, note="Not sure: she asked twice.")
    failure = entry(action=AuditAction.SYNC_FAILED, contact=contact, note="INVALID_FIELD")
    response = _get(manager_client)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    ids = ids_on_page(html)
    assert ids == sorted(ids, reverse=True)
    assert ids[:3] == [failure.pk, escalation.pk, back.pk]
    assert len(ids) == 4  # the opt-out too
    assert "Re-enrolment" in html and "Sync failure" in html and "Escalation" in html
    assert "Consent: Phone call" in html
    assert contact.salesforce_id in html


def test_system_team_sees_the_log_too(system_client, contact, specialist):
    opt_out(contact, specialist)
    assert len(_ids(system_client)) == 1


def test_specialist_cannot_open_the_log_directly_or_under_htmx(specialist_client):
    assert specialist_client.get(LOG).status_code == 403
    assert specialist_client.get(LOG, headers=HTMX).status_code == 403
    assert specialist_client.get(LOG + "?kind=re_enrolment").status_code == 403


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get(LOG)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_the_log_refuses_post(manager_client):
    assert manager_client.post(LOG).status_code == 405


def test_htmx_gets_only_the_table_and_a_clean_address_to_push(manager_client, contact, manager):
    opt_out(contact, manager)
    response = manager_client.get(
        LOG + "?start=&end=&actor=&contact=&channel=email&kind=opt_out&q=", headers=HTMX
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<section id="log"')
    assert 'data-action="opt_out"' in html
    assert response.headers["HX-Push-Url"] == LOG + "?channel=email&kind=opt_out"


# ---- filters ---------------------------------------------------------------------------------


def test_filter_by_staff_member(manager_client, make_user, categories):
    ann = make_user("specialist", "ann@test.example")
    bob = make_user("specialist", "bob@test.example")
    ann_entry = opt_out(factories.make_contact(), ann)
    opt_out(factories.make_contact(), bob)
    assert _ids(manager_client, actor=ann.pk) == [ann_entry.pk]


def test_filter_by_contact_accepts_salesforce_id_ascend_id_or_email(
    manager_client, specialist, categories
):
    mine = factories.make_contact()
    other = factories.make_contact()
    wanted = opt_out(mine, specialist)
    opt_out(other, specialist)
    for value in (
        mine.salesforce_id,
        mine.salesforce_id[:15],
        mine.ascend_id,
        mine.email.upper(),
    ):
        assert _ids(manager_client, contact=value) == [wanted.pk], value


def test_an_unknown_contact_is_a_clear_message_not_an_empty_log(manager_client):
    response = _get(manager_client, contact="003000000000000AAA")
    assert response.status_code == 422
    assert "No contact has the Salesforce ID, Ascend ID or email" in response.content.decode()


def test_filter_by_channel(manager_client, contact, specialist):
    phone = opt_out(contact, specialist, "phone")
    opt_out(contact, specialist, "email")
    assert _ids(manager_client, channel="phone") == [phone.pk]


def test_filter_by_source(manager_client, contact, specialist):
    platform = opt_out(contact, None, "email")
    opt_out(contact, specialist, "phone")
    assert platform.source == Source.EMAIL_PLATFORM
    assert _ids(manager_client, source="email_platform") == [platform.pk]


def test_filter_by_kind_re_enrolment(manager_client, contact, specialist):
    back = opted_out_and_back(contact, specialist)
    assert _ids(manager_client, kind="re_enrolment") == [back.pk]


def test_kind_escalation_covers_raised_and_resolved(manager_client, contact, specialist, manager):
    raised = entry(actor=specialist, action=AuditAction.ESCALATION, contact=contact)
    opt_out(contact, specialist)
    resolved = entry(actor=manager, action=AuditAction.ESCALATION_RESOLVED, contact=contact)
    assert _ids(manager_client, kind="escalation") == [resolved.pk, raised.pk]


def test_kind_bulk_covers_the_run_and_the_changes_it_made(manager_client, contact, manager):
    run_entry = entry(actor=manager, action=AuditAction.BULK, source=Source.BULK, note="Run 1")
    change = opt_out(contact, manager, source=Source.BULK, note="Country law: no mail.")
    opt_out(contact, manager, "phone")
    # The run entry matches both "action bulk" and "source bulk": listed once.
    assert _ids(manager_client, kind="bulk") == [change.pk, run_entry.pk]


def test_kind_retry_is_a_manual_sync_retry_and_sync_failure_its_own_kind(
    manager_client, contact, system_user
):
    failed = entry(action=AuditAction.SYNC_FAILED, contact=contact, note="INVALID_FIELD")
    retry = entry(actor=system_user, action=AuditAction.SYNC_RETRY, contact=contact)
    assert _ids(manager_client, kind="retry") == [retry.pk]
    assert _ids(manager_client, kind="sync_failure") == [failed.pk]


def test_kind_resubscribe_covers_the_request_and_the_resubscribe(manager_client, contact):
    asked = entry(action=AuditAction.RESUBSCRIBE_REQUEST, contact=contact)
    done = entry(action=AuditAction.RESUBSCRIBE, contact=contact)
    entry(action=AuditAction.ESCALATION, contact=contact)
    assert _ids(manager_client, kind="resubscribe") == [done.pk, asked.pk]


def test_kind_salesforce_record_covers_what_salesforce_did_to_its_records(manager_client, contact):
    wanted = [
        entry(action=action, contact=contact)
        for action in (
            AuditAction.STARTING_STATE,
            AuditAction.DELETED,
            AuditAction.RESTORED,
            AuditAction.MERGED,
            AuditAction.MERGED_AWAY,
        )
    ]
    entry(action=AuditAction.ESCALATION, contact=contact)
    assert _ids(manager_client, kind="salesforce_record") == [e.pk for e in reversed(wanted)]


def test_search_in_notes(manager_client, contact, specialist):
    wanted = opt_out(contact, specialist, note="Replied to the Spring Appeal: remove me.")
    opt_out(contact, specialist, "phone", note="No calls please.")
    assert _ids(manager_client, q="spring appeal") == [wanted.pk]


def test_a_search_shorter_than_three_characters_is_explained(manager_client):
    response = _get(manager_client, q="ab")
    assert response.status_code == 422
    assert "at least 3 characters" in response.content.decode()


def test_filters_combine(manager_client, make_user, categories):
    ann = make_user("specialist", "ann@test.example")
    contact = factories.make_contact()
    wanted = opt_out(contact, ann, "phone")
    opt_out(contact, ann, "email")
    opt_out(factories.make_contact(), None, "phone")
    assert _ids(manager_client, actor=ann.pk, channel="phone", kind="opt_out") == [wanted.pk]


def test_only_unreviewed_risky_actions(manager_client, contact, specialist, manager, categories):
    waiting = opted_out_and_back(contact, specialist)
    reviewed = opted_out_and_back(factories.make_contact(), specialist, "phone")
    entry(actor=manager, action=AuditAction.REVIEW, reviews=reviewed, note="Fine.")
    html = _get(manager_client, unreviewed="1").content.decode()
    assert ids_on_page(html) == [waiting.pk]
    assert "to review" in html


def test_date_range_is_whole_local_days(manager_client):
    today = timezone.localdate()
    old = entry(created_at=day_start(today - timedelta(days=30)) + timedelta(hours=9))
    mid = entry(created_at=day_start(today - timedelta(days=10)) + timedelta(hours=23, minutes=59))
    new = entry(created_at=day_start(today - timedelta(days=2)))
    week_ago = (today - timedelta(days=7)).isoformat()
    assert _ids(manager_client, start=week_ago) == [new.pk]
    assert _ids(manager_client, end=(today - timedelta(days=8)).isoformat()) == [mid.pk, old.pk]
    assert _ids(
        manager_client,
        start=(today - timedelta(days=10)).isoformat(),
        end=(today - timedelta(days=10)).isoformat(),
    ) == [mid.pk]


def test_date_range_keeps_an_entry_that_committed_late(manager_client):
    """Entries get ids in commit order; one whose transaction began earlier may carry an
    earlier time than the entry before it. The id bounds leave room for that."""
    day = timezone.localdate() - timedelta(days=3)
    start = day_start(day)
    entry(created_at=start - timedelta(days=2))
    before = entry(created_at=start - timedelta(minutes=30))
    inside = entry(created_at=start + timedelta(minutes=1))
    late_before = entry(created_at=start - timedelta(minutes=10))
    late_inside = entry(created_at=start + timedelta(seconds=5))
    after_range = entry(created_at=start + timedelta(days=1, minutes=2))
    late_last_inside = entry(created_at=start + timedelta(days=1) - timedelta(seconds=1))
    entry(created_at=start + timedelta(days=2))
    assert timedelta(minutes=30) < ID_BOUND_MARGIN
    ids = _ids(manager_client, start=day.isoformat(), end=day.isoformat())
    assert ids == [late_last_inside.pk, late_inside.pk, inside.pk]
    assert before.pk not in ids and late_before.pk not in ids and after_range.pk not in ids


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start": "2026-13-45"}, "Enter a valid date."),
        ({"start": "2026-03-10", "end": "2026-03-01"}, "The end date is before the start date."),
        ({"kind": "everything"}, "Select a valid choice."),
        ({"source": "fax"}, "Select a valid choice."),
        ({"channel": "carrier-pigeon"}, "Select a valid choice."),
        ({"actor": "999999"}, "Select a valid choice."),
        ({"actor": "bob"}, "Select a valid choice."),
        ({"after": "abc"}, "Enter a whole number."),
        ({"after": "-4"}, "greater than or equal to 1"),
        ({"after": "10", "before": "5"}, "not both"),
        ({"q": "a\x00bc"}, "not allowed"),
    ],
)
def test_bad_filter_values_get_a_clear_message_not_a_server_error(manager_client, params, message):
    response = _get(manager_client, **params)
    html = response.content.decode()
    assert response.status_code == 422
    assert "Some filters could not be used" in html
    assert message in html.replace("&#x27;", "'")
    assert '<table class="log"' not in html


def test_bad_filters_under_htmx_answer_with_the_message_in_the_table_region(manager_client):
    response = manager_client.get(LOG + "?start=yesterday", headers=HTMX)
    assert response.status_code == 422
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="log"')
    assert "Enter a valid date." in html


# ---- keyset pages -----------------------------------------------------------------------------


def _pager_cursor(html: str, rel: str) -> str | None:
    import re

    found = re.search(rf'<a rel="{rel}" href="\?([^"]*)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


def _walk(client, query: str | None) -> list[list[int]]:
    pages = []
    while query is not None:
        html = client.get(f"{LOG}?{query}").content.decode()
        pages.append(ids_on_page(html))
        query = _pager_cursor(html, "next")
        assert len(pages) < 20
    return pages


def test_older_links_walk_the_whole_log_without_gaps_or_repeats(manager_client):
    made = [e.pk for e in AuditEntry.objects.bulk_create(_escalations(2 * PAGE_SIZE + 20))]
    pages = _walk(manager_client, "")
    assert [len(p) for p in pages] == [PAGE_SIZE, PAGE_SIZE, 20]
    assert [pk for page in pages for pk in page] == sorted(made, reverse=True)


def test_newer_link_returns_to_exactly_the_page_before(manager_client):
    AuditEntry.objects.bulk_create(_escalations(2 * PAGE_SIZE + 20))
    first = manager_client.get(LOG).content.decode()
    assert _pager_cursor(first, "prev") is None
    second = manager_client.get(f"{LOG}?{_pager_cursor(first, 'next')}").content.decode()
    third = manager_client.get(f"{LOG}?{_pager_cursor(second, 'next')}").content.decode()
    assert _pager_cursor(third, "next") is None
    back = manager_client.get(f"{LOG}?{_pager_cursor(third, 'prev')}").content.decode()
    assert ids_on_page(back) == ids_on_page(second)
    again = manager_client.get(f"{LOG}?{_pager_cursor(back, 'prev')}").content.decode()
    assert ids_on_page(again) == ids_on_page(first)
    assert _pager_cursor(again, "prev") is None


def test_pages_of_a_kind_made_of_two_actions_interleave_both(manager_client):
    rows = []
    for n in range(PAGE_SIZE + 30):
        action = AuditAction.ESCALATION if n % 3 else AuditAction.ESCALATION_RESOLVED
        rows.append(AuditEntry(actor_label="x", source="staff", action=action, note=f"{n}"))
        rows.append(AuditEntry(actor_label="x", source="staff", action="bounce", note=f"{n}"))
    made = AuditEntry.objects.bulk_create(rows)
    wanted = sorted((e.pk for e in made if e.action != "bounce"), reverse=True)
    pages = _walk(manager_client, "kind=escalation")
    assert [len(p) for p in pages] == [PAGE_SIZE, 30]
    assert [pk for page in pages for pk in page] == wanted
    assert "kind=escalation" in _pager_cursor(
        manager_client.get(LOG + "?kind=escalation").content.decode(), "next"
    )


def test_a_page_costs_the_same_few_queries_however_long_the_log(
    manager_client, django_assert_max_num_queries
):
    AuditEntry.objects.bulk_create(_escalations(3 * PAGE_SIZE))
    # session, user, permissions, categories, the page's ids, its rows, the badge count
    with django_assert_max_num_queries(10):
        assert manager_client.get(LOG + "?kind=escalation").status_code == 200


def _escalations(n: int) -> list[AuditEntry]:
    return [
        AuditEntry(actor_label="ann", source="staff", action="escalation", note=f"Question {i}")
        for i in range(n)
    ]


# ---- the entry page ---------------------------------------------------------------------------


def test_entry_page_shows_before_after_consent_seal_and_contact(
    manager_client, contact, specialist
):
    back = opted_out_and_back(contact, specialist)
    seal_now()
    response = manager_client.get(reverse("audit:entry", args=[back.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    assert "Email: opted back in" in html
    assert 'aria-label="Consent evidence"' in html
    assert "Phone call" in html and specialist.email in html
    assert back.seal.hash in html
    assert reverse("preferences:contact", args=[contact.pk]) in html
    assert contact.ascend_id in html
    assert f'action="/audit/{back.pk}/review/"' in html


def test_entry_page_for_a_plain_opt_out_has_no_review_form(manager_client, contact, specialist):
    out = opt_out(contact, specialist)
    html = manager_client.get(reverse("audit:entry", args=[out.pk])).content.decode()
    assert "no review needed" in html
    assert "/review/" not in html
    assert "Not sealed yet" in html  # the test's transaction has not committed


def test_system_team_sees_entries_but_no_review_form(system_client, contact, specialist):
    back = opted_out_and_back(contact, specialist)
    html = system_client.get(reverse("audit:entry", args=[back.pk])).content.decode()
    assert "to review" in html
    assert "/review/" not in html


def test_entry_page_under_htmx_is_the_review_region(manager_client, contact, specialist):
    back = opted_out_and_back(contact, specialist)
    response = manager_client.get(reverse("audit:entry", args=[back.pk]), headers=HTMX)
    html = response.content.decode()
    assert "<html" not in html
    assert html.lstrip().startswith('<section class="card review" id="review"')


def test_specialist_cannot_open_an_entry(specialist_client, contact, specialist):
    out = opt_out(contact, specialist)
    url = reverse("audit:entry", args=[out.pk])
    assert specialist_client.get(url).status_code == 403
    assert specialist_client.get(url, headers=HTMX).status_code == 403


def test_a_missing_entry_is_not_found(manager_client):
    assert manager_client.get(reverse("audit:entry", args=[987654321])).status_code == 404


# ---- the header ------------------------------------------------------------------------------


def test_managers_see_the_log_reports_and_the_count_to_review(manager_client, contact, specialist):
    opted_out_and_back(contact, specialist)
    opted_out_and_back(contact, specialist, "phone")
    html = manager_client.get(reverse("preferences:search")).content.decode()
    assert f'href="{LOG}">Audit log</a>' in html
    assert 'href="/audit/reports/">Reports</a>' in html
    assert '<span class="count">2</span> to review' in html


def test_the_count_to_review_stops_at_a_thousand(manager_client):
    AuditEntry.objects.bulk_create(
        AuditEntry(actor_label="x", source="staff", action="re_enrolment", note="n")
        for _ in range(1000)
    )
    html = manager_client.get(LOG).content.decode()
    assert '<span class="count">999+</span> to review' in html


def test_system_team_sees_the_log_and_reports_but_no_review_count(system_client):
    html = system_client.get(reverse("preferences:search")).content.decode()
    assert "Audit log" in html and "Reports" in html
    assert "to review" not in html


def test_specialists_see_neither_link(specialist_client):
    html = specialist_client.get(reverse("preferences:search")).content.decode()
    assert "Audit log" not in html and "/audit/reports/" not in html and "to review" not in html


def test_a_bulk_change_made_through_apply_change_is_listed_with_its_source(
    manager_client, contact, manager
):
    change = apply_change(
        contact=contact, actor=manager, source=Source.BULK, note="Law", opt_out={"phone": True}
    )
    html = _get(manager_client, source="bulk").content.decode()
    assert ids_on_page(html) == [change.pk]
    assert "Bulk change" in html


def test_a_note_search_finds_old_matches_beyond_the_newest_entries(manager_client):
    from audit.forms import SEARCH_WINDOW

    def escalations(note: str, n: int) -> list[AuditEntry]:
        return [
            AuditEntry(actor_label="x", source="staff", action="escalation", note=note)
            for _ in range(n)
        ]

    old = AuditEntry.objects.bulk_create(escalations("Executor phoned about the estate.", 10))
    AuditEntry.objects.bulk_create(escalations("Something else.", SEARCH_WINDOW + 5))
    new = AuditEntry.objects.bulk_create(escalations("The executor again.", 45))
    wanted = sorted((e.pk for e in old + new), reverse=True)
    pages = _walk(manager_client, "q=executor")
    assert [pk for page in pages for pk in page] == wanted
    assert [len(page) for page in pages] == [PAGE_SIZE, 5]


def test_note_search_takes_percent_and_underscore_literally(manager_client):
    wanted = entry(note="Offered 50% off the gala ticket.")
    entry(note="Offered 50 off the gala ticket.")
    entry(note="Offered 5000 off.")
    assert _ids(manager_client, q="50% off") == [wanted.pk]
    under = entry(note="Field Giving_Pref__c missing")
    entry(note="Field GivingXPref missing")
    assert _ids(manager_client, q="giving_pref") == [under.pk]


def test_note_search_is_a_condition_the_trigram_index_can_answer(db):
    from django.db import connection

    from audit.forms import LogFilterForm

    form = LogFilterForm({"q": "executor"})
    assert form.is_valid()
    sql, params = form.entries().values("id").query.sql_with_params()
    with connection.cursor() as cursor:
        # Only a bitmap scan is left to choose: the question is whether the trigram index
        # can answer the condition, not which plan today's statistics favour.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "audit_note_trgm" in plan


def test_a_bulk_change_entry_links_its_run_for_managers_only(
    manager_client, system_client, contact, manager
):
    from preferences.models import BulkRun

    run = BulkRun.objects.create(
        channel="email", criteria={"country": "US"}, created_by=manager, note="Country law."
    )
    change = apply_change(
        contact=contact,
        actor=manager,
        source=Source.BULK,
        note="Country law.",
        opt_out={"email": True},
        bulk_run=run,
    )
    url = reverse("audit:entry", args=[change.pk])
    run_link = f'href="{reverse("preferences:bulk_run", args=[run.pk])}"'
    assert run_link in manager_client.get(url).content.decode()
    html = system_client.get(url).content.decode()
    assert f"bulk run {run.pk}" in html and run_link not in html
