"""The specialist's main path on the contact page, in a real browser (rules 3-6).

Each step is asserted in the page and, where the page could mislead, in the database, and
leaves a full-page screenshot in artifacts/screenshots/.
"""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import Page, Response, expect

from audit.models import AuditAction, AuditEntry
from preferences.management.commands.create_staff_user import create_staff_user
from preferences.models import Channel, Consent, ConsentMethod, Contact, Source
from preferences.services import apply_change, current_state
from tests import factories
from tests.browser.conftest import sign_in
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

SPECIALIST = "grace.specialist@test.example"
CATEGORY_NAMES = {
    "newsletter": "Alumni newsletter",
    "events": "Events and reunions",
    "giving": "Giving and appeals",
}


def _contact_with_categories() -> Contact:
    """A contact whose categories arrived from Salesforce before the specialist's session."""
    factories.make_categories()
    factories.make_contact(first_name="Ada", last_name="Lovelace")  # must not match the search
    contact = factories.make_contact(
        first_name="Grace", last_name="Okonkwo", email="grace.okonkwo@example.edu"
    )
    apply_change(
        contact=contact,
        actor=None,
        source=Source.SALESFORCE,
        note="Categories loaded from Salesforce.",
        categories={"newsletter", "events", "giving"},
    )
    return contact


def _save(page: Page) -> Response:
    """Click "Save change" and return the answer to the htmx POST."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/preferences/" in r.url
    ) as answer:
        page.locator("form.preferences").get_by_role("button", name="Save change").click()
    return answer.value


def _is_htmx(response: Response) -> bool:
    return response.request.headers.get("hx-request") == "true"


def test_specialist_opts_out_then_re_enrols_only_with_consent(live_server, page: Page, screenshot):
    create_staff_user(SPECIALIST, "specialist", PASSWORD)
    contact = _contact_with_categories()
    contact_path = f"/contacts/{contact.pk}/"
    form = page.locator("form.preferences")
    banner = page.locator("section.banner")
    errors = form.locator(".errors[role=alert]")
    category_boxes = form.locator("input[name=categories]")
    history = page.locator("section.history tbody tr")

    # 1. Sign in: allauth sends staff to the contact search.
    sign_in(page, SPECIALIST)
    expect(page).to_have_url(f"{live_server.url}/contacts/")
    expect(page.get_by_role("heading", name="Find a contact")).to_be_visible()
    screenshot(page, "01-signed-in")

    # 2. Type a name fragment: htmx replaces the results and pushes the URL, no page load.
    page.evaluate("window.stillTheSamePage = true")
    page.get_by_role("searchbox").press_sequentially("okonk", delay=40)
    results = page.locator("#results table.results tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("Okonkwo, Grace")
    expect(results.first).to_contain_text(contact.email)
    expect(page).to_have_url(f"{live_server.url}/contacts/?q=okonk")
    assert page.evaluate("window.stillTheSamePage") is True
    screenshot(page, "02-search-results")

    # 3. Open the contact: the three categories from Salesforce are ticked, nothing opted out.
    results.first.get_by_role("link", name="Okonkwo, Grace").click()
    expect(page).to_have_url(f"{live_server.url}{contact_path}")
    expect(page.get_by_role("heading", name="Grace Okonkwo", level=1)).to_be_visible()
    expect(banner).to_have_count(0)
    expect(form.get_by_label("Email opt-out")).not_to_be_checked()
    for key in ("newsletter", "events", "giving"):
        expect(form.locator(f"input[name=categories][value={key}]")).to_be_checked()
    for key in ("athletics", "research"):
        expect(form.locator(f"input[name=categories][value={key}]")).not_to_be_checked()
    screenshot(page, "03-contact-opened")

    # 4. Email opt-out with a note: the banner says who, when and why (rules 5, 6) ...
    opt_out_note = "Phoned in: please stop all email."
    form.get_by_label("Email opt-out").check()
    form.locator("textarea[name=note]").fill(opt_out_note)
    answer = _save(page)
    assert answer.status == 200
    assert _is_htmx(answer)
    email_line = banner.locator("li[data-channel=email]")
    expect(email_line).to_be_visible()
    expect(email_line).to_contain_text("Opted out of email")
    expect(email_line).to_contain_text(SPECIALIST)
    expect(email_line).to_contain_text(opt_out_note)
    expect(banner.locator("li[data-channel=phone]")).to_have_count(0)
    expect(page.locator("#contact-main ul.messages")).to_contain_text("Saved.")
    expect(page).to_have_url(f"{live_server.url}{contact_path}")
    # ... and every category is off and cannot be ticked while opted out (docs/design.md, rule 3).
    expect(category_boxes).to_have_count(5)
    for box in category_boxes.all():
        expect(box).not_to_be_checked()
        expect(box).to_be_disabled()
    expect(form.get_by_label("Email opt-out")).to_be_checked()
    expect(form.locator("fieldset.consent")).to_be_visible()
    screenshot(page, "04-email-opted-out")
    assert current_state(contact).opted_out[Channel.EMAIL] is True
    assert current_state(contact).categories == frozenset()
    contact.refresh_from_db()
    version_after_opt_out = contact.version

    # 5. Untick the opt-out without the consent step: refused, with a clear message, and
    #    nothing changes (docs/design.md, rule 4, enforced on the server).
    form.get_by_label("Email opt-out").uncheck()
    form.locator("textarea[name=note]").fill("She called back and wants the newsletter.")
    answer = _save(page)
    assert answer.status == 422
    assert _is_htmx(answer)
    expect(errors).to_be_visible()
    expect(errors).to_contain_text("re-enrolment")
    expect(errors).to_contain_text("consented")
    expect(banner.locator("li[data-channel=email]")).to_contain_text(opt_out_note)
    expect(page.locator("#contact-main ul.messages")).to_have_count(0)
    screenshot(page, "05-re-enrolment-refused")
    contact.refresh_from_db()
    assert contact.version == version_after_opt_out
    assert Contact.objects.opted_out(Channel.EMAIL).filter(pk=contact.pk).exists()
    assert not Consent.objects.filter(contact=contact).exists()
    assert not AuditEntry.objects.filter(contact=contact, action=AuditAction.RE_ENROLMENT).exists()

    # 6. With the consent recorded the re-enrolment goes through: the banner is gone, the
    #    old categories are suggested, and none is ticked for the specialist
    #    (docs/design.md, rule 4).
    asked_at = timezone.localtime(timezone.now()).replace(second=0, microsecond=0)
    form.get_by_label("Email opt-out").uncheck()
    form.get_by_label("How the contact asked").select_option(ConsentMethod.PHONE_CALL.value)
    form.get_by_label("When the contact asked").fill(asked_at.strftime("%Y-%m-%dT%H:%M"))
    form.get_by_label("I confirm the contact explicitly asked to be opted back in.").check()
    form.locator("textarea[name=note]").fill("Called back: consents to email again.")
    answer = _save(page)
    assert answer.status == 200
    assert _is_htmx(answer)
    expect(banner).to_have_count(0)
    expect(errors).to_have_count(0)
    suggestion = form.locator("p.suggest")
    expect(suggestion).to_be_visible()
    for name in CATEGORY_NAMES.values():
        expect(suggestion).to_contain_text(name)
    for name in ("Athletics", "Research news"):
        expect(suggestion).not_to_contain_text(name)
    for box in category_boxes.all():
        expect(box).not_to_be_checked()
        expect(box).to_be_enabled()
    expect(form.get_by_label("Email opt-out")).not_to_be_checked()
    expect(form.locator("fieldset.consent")).to_have_count(0)
    screenshot(page, "06-re-enrolled-with-consent")
    state = current_state(contact)
    assert state.opted_out[Channel.EMAIL] is False
    assert state.categories == frozenset()
    consent = Consent.objects.get(contact=contact)
    assert consent.method == ConsentMethod.PHONE_CALL
    assert consent.obtained_at == asked_at
    assert consent.recorded_by is not None and consent.recorded_by.email == SPECIALIST

    # 7. Tick two of the suggested categories and save.
    form.get_by_label(CATEGORY_NAMES["newsletter"]).check()
    form.get_by_label(CATEGORY_NAMES["events"]).check()
    form.locator("textarea[name=note]").fill("Wants the newsletter and events only.")
    answer = _save(page)
    assert answer.status == 200
    expect(history.and_(page.locator("[data-action=category_change]"))).to_have_count(2)
    expect(form.locator("input[name=categories][value=newsletter]")).to_be_checked()
    expect(form.locator("input[name=categories][value=events]")).to_be_checked()
    expect(form.locator("input[name=categories][value=giving]")).not_to_be_checked()
    expect(form.locator("p.suggest")).to_have_count(0)
    assert current_state(contact).categories == frozenset({"newsletter", "events"})

    # 8. The history shows every step, newest first, with who did it.
    newsletter, events, giving = CATEGORY_NAMES.values()
    expected = [
        (AuditAction.CATEGORY_CHANGE, SPECIALIST, ["Subscribed:", newsletter, events]),
        (AuditAction.RE_ENROLMENT, SPECIALIST, ["Email: opted back in", "Consent: Phone call"]),
        (AuditAction.OPT_OUT, SPECIALIST, ["Email: opted out", "Unsubscribed:", giving]),
        (AuditAction.CATEGORY_CHANGE, "Salesforce", ["Subscribed:", newsletter, events, giving]),
    ]
    expect(history).to_have_count(len(expected))
    for row, (action, actor, changes) in zip(history.all(), expected, strict=True):
        expect(row).to_have_attribute("data-action", action.value)
        expect(row.locator("td.actor")).to_contain_text(actor)
        for change in changes:
            expect(row).to_contain_text(change)
    expect(history.nth(2).locator("td.note")).to_have_text(opt_out_note)
    page.locator("section.history").scroll_into_view_if_needed()
    screenshot(page, "07-categories-and-history")


def test_the_contact_page_works_without_javascript(live_server, new_context, screenshot):
    create_staff_user(SPECIALIST, "specialist", PASSWORD)
    contact = _contact_with_categories()
    page = new_context(java_script_enabled=False).new_page()
    sign_in(page, SPECIALIST)

    page.goto(f"/contacts/{contact.pk}/")
    form = page.locator("form.preferences")
    form.get_by_label("Email opt-out").check()
    form.locator("textarea[name=note]").fill("Letter received: no more email.")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        form.get_by_role("button", name="Save change").click()
    assert answer.value.status == 302
    assert not _is_htmx(answer.value)

    expect(page).to_have_url(f"{live_server.url}/contacts/{contact.pk}/")
    email_line = page.locator("section.banner li[data-channel=email]")
    expect(email_line).to_contain_text(SPECIALIST)
    expect(email_line).to_contain_text("Letter received: no more email.")
    expect(page.locator("ul.messages")).to_contain_text("Saved.")
    for box in form.locator("input[name=categories]").all():
        expect(box).not_to_be_checked()
    screenshot(page, "no-js-01-opted-out-after-redirect")
    assert current_state(contact).opted_out[Channel.EMAIL] is True


def test_an_expired_session_sends_the_whole_page_to_sign_in(
    live_server, context, page: Page, screenshot
):
    create_staff_user(SPECIALIST, "specialist", PASSWORD)
    contact = _contact_with_categories()
    contact_path = f"/contacts/{contact.pk}/"
    sign_in(page, SPECIALIST)
    page.goto(contact_path)
    contact.refresh_from_db()
    version = contact.version

    # The session ends server-side (expiry, sign-out elsewhere); the page is still open.
    context.clear_cookies(name="sessionid")
    form = page.locator("form.preferences")
    form.get_by_label("Email opt-out").check()
    form.locator("textarea[name=note]").fill("Stop email, please.")
    with page.expect_navigation(url=lambda url: "/accounts/login/" in url):
        form.get_by_role("button", name="Save change").click()

    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next={contact_path}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#contact-main")).to_have_count(0)
    expect(page.locator("form.preferences")).to_have_count(0)
    screenshot(page, "session-01-sent-to-sign-in")
    contact.refresh_from_db()
    assert contact.version == version
    assert current_state(contact).opted_out[Channel.EMAIL] is False

    # Signing in again returns to the contact, where the change can be made.
    page.locator("input[name=login]").fill(SPECIALIST)
    page.locator("input[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}{contact_path}")
