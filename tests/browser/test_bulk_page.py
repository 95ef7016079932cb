"""A manager's bulk opt-out from an uploaded file, in a real browser (docs/design.md, rule 11).

The upload goes through htmx as multipart, the preview lists the unusable rows, the
confirmation needs a note, and the progress bar polls until the run is done (the test
plays the worker by calling bulk.process()). The page fixture fails on any script error or
CSP violation.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import FilePayload, Page, expect

from audit.models import AuditEntry
from preferences.bulk import jobs as bulk
from preferences.management.commands.create_staff_user import create_staff_user
from preferences.models import BulkRun, BulkRunState
from preferences.services import current_state
from tests import factories
from tests.browser.conftest import sign_in
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

MANAGER = "ada.manager@test.example"


def test_manager_uploads_a_list_previews_confirms_and_watches_it_finish(
    live_server, page: Page, screenshot
):
    create_staff_user(MANAGER, "manager", PASSWORD)
    factories.make_categories()
    listed = [factories.make_contact(country="FR") for _ in range(2)]
    spared = factories.make_contact(country="FR")
    csv = "Email\n" + "".join(f"{c.email}\n" for c in listed) + "nobody@example.edu\n"

    sign_in(page, MANAGER)
    page.locator("header.topbar nav").get_by_role("link", name="Bulk changes").click()
    expect(page.get_by_role("heading", name="Bulk changes", level=1)).to_be_visible()
    page.get_by_role("link", name="New bulk opt-out").click()

    # 1. Upload: the preview replaces the form without a page load and gets its own URL.
    page.evaluate("window.stillTheSamePage = true")
    page.locator("input[name=upload]").set_input_files(
        files=[FilePayload(name="people.csv", mimeType="text/csv", buffer=csv.encode())]
    )
    page.get_by_role("button", name="Preview").click()
    preview = page.locator("section.preview")
    expect(preview).to_contain_text("2 contacts match")
    run = BulkRun.objects.get()
    expect(page).to_have_url(f"{live_server.url}/bulk/{run.pk}/")
    assert page.evaluate("window.stillTheSamePage") is True
    for contact in listed:
        expect(preview).to_contain_text(contact.salesforce_id)
    problems = page.locator("section.problems")
    expect(problems).to_contain_text("1 row of people.csv cannot be used")
    expect(problems).to_contain_text("No contact has this email address.")
    screenshot(page, "bulk-01-preview")
    assert not AuditEntry.objects.exists()

    # 2. Confirm without a note: refused in the page, nothing queued.
    confirm = page.locator("form.confirm")
    confirm.locator("textarea[name=note]").fill("  ")
    confirm.get_by_role("button", name="Opt out 2 contacts").click()
    expect(page.locator("form.confirm .error")).to_contain_text("Write a note")
    run.refresh_from_db()
    assert run.state == BulkRunState.DRAFT

    # 3. With a note: queued, and the progress bar polls.
    page.locator("form.confirm textarea[name=note]").fill("They asked for no more email.")
    page.locator("form.confirm").get_by_role("button", name="Opt out 2 contacts").click()
    progress = page.locator("#progress")
    expect(progress).to_contain_text("Waiting for a worker")
    expect(page.locator("#bulk-main ul.messages")).to_contain_text("Confirmed: 2 contacts")
    expect(progress.locator("progress")).to_have_attribute("value", "0")
    screenshot(page, "bulk-02-queued")

    # 4. The worker applies it; the next poll shows it finished, and polling stops.
    assert bulk.process(run.pk) == bulk.DONE
    expect(progress).to_contain_text("Finished", timeout=10_000)
    expect(progress.locator("progress")).to_have_attribute("value", "2")
    expect(progress.locator("[data-count=applied]")).to_have_text("2")
    expect(progress).not_to_have_attribute("hx-trigger", "every 2s")
    screenshot(page, "bulk-03-done")
    assert all(current_state(c).opted_out["email"] for c in listed)
    assert current_state(spared).opted_out["email"] is False
