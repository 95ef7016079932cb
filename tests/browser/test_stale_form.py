"""Two specialists on one contact (docs/design.md, "One service changes a preference"): the
one whose page is stale sees what the other changed, and saving again never undoes it;
only a field they set again themselves replaces the other's value."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from preferences.management.commands.create_staff_user import create_staff_user
from preferences.services import current_state
from tests.browser.conftest import sign_in
from tests.browser.test_main_path import _contact_with_categories, _save
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

FIRST = "first.specialist@test.example"
SECOND = "second.specialist@test.example"


def test_the_stale_specialist_sees_the_difference_and_keeps_the_first_change(
    live_server, page: Page, new_context, screenshot
):
    create_staff_user(FIRST, "specialist", PASSWORD)
    create_staff_user(SECOND, "specialist", PASSWORD)
    contact = _contact_with_categories()  # newsletter, events and giving ticked
    path = f"/contacts/{contact.pk}/"

    second = new_context().new_page()
    sign_in(second, SECOND)
    second.goto(path)
    stale_form = second.locator("form.preferences")
    expect(stale_form.locator("input[name=categories][value=events]")).to_be_checked()

    # 1. The first specialist takes the contact off events, and saves.
    sign_in(page, FIRST)
    page.goto(path)
    form = page.locator("form.preferences")
    form.locator("input[name=categories][value=events]").uncheck()
    form.locator("textarea[name=note]").fill("No more event invitations, asked by email.")
    assert _save(page).status == 200
    screenshot(page, "stale-01-first-saved")

    # 2. The second, on the page loaded before, opts the contact out of phone calls.
    stale_form.locator("input[name=opt_out_phone]").check()
    stale_form.locator("textarea[name=note]").fill("Asked us to stop calling.")
    assert _save(second).status == 409
    errors = stale_form.locator(".errors[role=alert]")
    expect(errors).to_contain_text("Someone else changed this contact")
    expect(errors).to_contain_text(f"Since you opened it, {FIRST}")
    expect(errors).to_contain_text("Unsubscribed: Events and reunions")
    # The form is the current state plus the second's own change; the note is kept.
    expect(stale_form.locator("input[name=opt_out_phone]")).to_be_checked()
    expect(stale_form.locator("input[name=categories][value=events]")).not_to_be_checked()
    expect(stale_form.locator("input[name=categories][value=newsletter]")).to_be_checked()
    expect(stale_form.locator("textarea[name=note]")).to_have_value("Asked us to stop calling.")
    screenshot(second, "stale-02-second-sees-the-difference")

    # 3. Saving it again keeps the first's change: events stays off.
    assert _save(second).status == 200
    state = current_state(contact)
    assert state.opted_out["phone"] is True
    assert state.categories == frozenset({"newsletter", "giving"})
    screenshot(second, "stale-03-both-changes-kept")

    # 4. Only an explicit choice replaces it: the second ticks events again, with a note.
    form2 = second.locator("form.preferences")
    form2.locator("input[name=categories][value=events]").check()
    form2.locator("textarea[name=note]").fill("Called back: does want event invitations.")
    assert _save(second).status == 200
    assert current_state(contact).categories == frozenset({"newsletter", "events", "giving"})
    screenshot(second, "stale-04-explicit-override")
