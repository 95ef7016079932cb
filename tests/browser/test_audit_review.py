"""A manager reviews a re-enrolment from the audit log, in a real browser (issue 4).

Each step is asserted in the page and, where the page could mislead, in the database, and
leaves a full-page screenshot in artifacts/screenshots/.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from audit.models import AuditAction, AuditEntry, AuditSeal, PendingReview
from preferences.management.commands.create_staff_user import create_staff_user
from preferences.models import Source
from tests import factories
from tests.audit.audit_data import entry, opt_out, opted_out_and_back
from tests.browser.conftest import sign_in
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

MANAGER = "mira.manager@test.example"
SPECIALIST = "sam.specialist@test.example"


def _history():
    """An old re-enrolment (three weeks ago), then this week's: an opt-out, a re-enrolment
    with consent, an escalation. Written in time order, as the app writes them."""
    specialist = create_staff_user(SPECIALIST, "specialist", PASSWORD)
    factories.make_categories()
    old_contact = factories.make_contact(first_name="Otto", last_name="Older")
    old = entry(
        actor=specialist,
        action=AuditAction.RE_ENROLMENT,
        contact=old_contact,
        channels=["email"],
        created_at=timezone.now() - timedelta(days=21),
        note="Re-enrolled three weeks ago.",
    )
    opt_out(factories.make_contact(first_name="Pia", last_name="Plain"), specialist)
    contact = factories.make_contact(first_name="Grace", last_name="Okonkwo")
    recent = opted_out_and_back(contact, specialist)
    entry(actor=specialist, contact=contact, note="Not sure about her newsletter.")
    return old, recent, contact


def test_manager_filters_re_enrolments_checks_consent_and_marks_one_reviewed(
    live_server, page: Page, screenshot
):
    manager = create_staff_user(MANAGER, "manager", PASSWORD)
    old, recent, contact = _history()
    rows = page.locator("#log table.log tbody tr")
    badge = page.locator("#review-badge")
    nav = page.locator("header.topbar nav")

    # 1. Signed in, the manager sees the log link and how many risky actions wait.
    sign_in(page, MANAGER)
    expect(badge).to_contain_text("2 to review")
    nav.get_by_role("link", name="Audit log").click()
    expect(page).to_have_url(f"{live_server.url}/audit/")
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    expect(rows).to_have_count(AuditEntry.objects.count())
    screenshot(page, "audit-01-log")

    # 2. Re-enrolments of the last seven days: htmx replaces the table and pushes the URL.
    page.evaluate("window.stillTheSamePage = true")
    week_ago = (timezone.localdate() - timedelta(days=7)).isoformat()
    page.get_by_label("Kind of action").select_option("re_enrolment")
    page.get_by_label("From").fill(week_ago)
    page.get_by_role("button", name="Show entries").click()
    expect(page).to_have_url(f"{live_server.url}/audit/?start={week_ago}&kind=re_enrolment")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-entry", str(recent.pk))
    expect(rows.first).to_contain_text("Re-enrolment")
    expect(rows.first).to_contain_text("Consent: Phone call")
    expect(rows.first).to_contain_text("to review")
    expect(page.locator(f"#log tr[data-entry='{old.pk}']")).to_have_count(0)
    assert page.evaluate("window.stillTheSamePage") is True
    screenshot(page, "audit-02-re-enrolments-last-7-days")

    # The filters live in the URL: back shows the whole log again, forward the filter.
    page.go_back()
    expect(page).to_have_url(f"{live_server.url}/audit/")
    expect(rows).to_have_count(AuditEntry.objects.count())
    page.go_forward()
    expect(page).to_have_url(f"{live_server.url}/audit/?start={week_ago}&kind=re_enrolment")
    expect(rows).to_have_count(1)

    # 3. The entry: what changed, and the consent evidence behind the re-enrolment.
    rows.first.get_by_role("link", name=f"Open entry {recent.pk}").click()
    expect(page).to_have_url(f"{live_server.url}/audit/{recent.pk}/")
    evidence = page.get_by_label("Consent evidence")
    expect(evidence).to_contain_text("Phone call")
    expect(evidence).to_contain_text("When the contact asked")
    expect(evidence).to_contain_text("Yes: the staff member confirmed")
    expect(evidence).to_contain_text(SPECIALIST)
    expect(page.locator("section.entry-changes")).to_contain_text("Email: opted back in")
    expect(page.get_by_role("link", name=str(contact))).to_have_attribute(
        "href", f"/contacts/{contact.pk}/"
    )
    expect(page.locator("section.seal code")).to_have_text(AuditSeal.objects.get(entry=recent).hash)
    screenshot(page, "audit-03-entry-with-consent-evidence")

    # 4. Mark it reviewed with a comment: the review region and the badge update in place.
    review = page.locator("#review")
    review.get_by_label("Comment (optional)").fill("Checked the call notes: consent is sound.")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        review.get_by_role("button", name="Mark reviewed").click()
    assert answer.value.status == 200
    assert answer.value.request.headers.get("hx-request") == "true"
    expect(review).to_contain_text("Marked reviewed")
    expect(review.locator(".tag.ok")).to_have_text("reviewed")
    expect(review).to_contain_text(f"Reviewed by {MANAGER}")
    expect(review).to_contain_text("Checked the call notes: consent is sound.")
    expect(review.get_by_role("button", name="Mark reviewed")).to_have_count(0)
    expect(badge).to_contain_text("1 to review")
    screenshot(page, "audit-04-marked-reviewed")
    written = AuditEntry.objects.get(reviews=recent)
    assert (written.action, written.actor, written.source) == (
        AuditAction.REVIEW,
        manager,
        Source.STAFF,
    )
    assert written.contact_id == contact.pk
    assert not PendingReview.objects.filter(entry=recent).exists()
    assert PendingReview.objects.filter(entry=old).exists()
    assert AuditSeal.objects.filter(entry=written).exists()

    # 5. The review is itself in the log, newest, pointing at the entry it reviews.
    nav.get_by_role("link", name="Audit log").click()
    expect(rows.first).to_have_attribute("data-entry", str(written.pk))
    expect(rows.first).to_have_attribute("data-action", "review")
    expect(rows.first).to_contain_text(MANAGER)
    expect(rows.first).to_contain_text(f"Reviews #{recent.pk}")
    expect(page.locator(f"#log tr[data-entry='{recent.pk}']")).to_contain_text("reviewed")
    screenshot(page, "audit-05-review-in-the-log")

    # 6. What is left to review is the old re-enrolment.
    badge.click()
    expect(page).to_have_url(f"{live_server.url}/audit/?unreviewed=1")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-entry", str(old.pk))
    screenshot(page, "audit-06-left-to-review")


def test_reports_page_draws_the_weekly_chart_and_the_change_report(
    live_server, page: Page, screenshot
):
    create_staff_user(MANAGER, "manager", PASSWORD)
    _history()
    sign_in(page, MANAGER)
    page.locator("header.topbar nav").get_by_role("link", name="Reports").click()
    expect(page.get_by_role("heading", name="Reports", level=1)).to_be_visible()
    summary = page.locator("table.summary")
    expect(summary.locator("tr[data-channel=email] td.opted-out")).to_have_text("2")
    expect(summary.locator("tr[data-channel=email] td.opted-in")).to_have_text("1")
    charts = page.locator("svg.bars")
    expect(charts).to_have_count(2)
    expect(charts.first.locator("rect.src-staff")).to_have_count(1)
    expect(charts.nth(1).locator("rect.src-staff")).to_have_count(2)  # this week, 3 weeks ago
    box = charts.first.bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 80
    screenshot(page, "reports-01-chart-and-change-report")

    # Two weeks instead of twelve, by htmx: the re-enrolment three weeks ago drops out.
    page.evaluate("window.stillTheSamePage = true")
    page.get_by_label("Chart: weeks up to “To”").fill("2")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"/audit/reports/\?start=.*&weeks=2$"))
    expect(charts.nth(1).locator("rect.src-staff")).to_have_count(1)
    assert page.evaluate("window.stillTheSamePage") is True
    screenshot(page, "reports-02-two-weeks")
