"""A specialist meets what Salesforce did to its records, in a real browser: a contact
merged into another, a Lead that opted out and was then converted, a contact deleted
(docs/design.md, "Contacts come from Salesforce").

Everything arrives through the real pull from the Salesforce stand-in (in-process, over
HTTPS, queryAll). Each step is asserted in the page and leaves a full-page screenshot in
artifacts/screenshots/.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from integrations.salesforce import inbound, sync
from preferences.management.commands.create_staff_user import create_staff_user
from preferences.models import Contact, SyncWatermark
from preferences.services import apply_change
from tests.browser.conftest import sign_in
from tests.conftest import PASSWORD

# The reconciliation tests' Salesforce stand-in, with the settings pointed at it.
from tests.integrations.test_reconcile import standin  # noqa: F401 (a pytest fixture)

pytestmark = pytest.mark.browser

SPECIALIST = "grace.specialist@test.example"


def test_a_specialist_finds_merged_converted_and_deleted_records(
    live_server,
    page: Page,
    screenshot,
    settings,
    standin,  # noqa: F811
    categories,
):
    settings.MARKETING_CLOUD_ENABLED = False  # not part of this story
    settings.SYNC_PULL_LAG_SECONDS = 0
    specialist = create_staff_user(SPECIALIST, "specialist", PASSWORD)
    SyncWatermark.objects.create(
        name=inbound.WATERMARK, value=timezone.now() - timedelta(minutes=1)
    )
    survivor_id = standin.add_contact(
        FirstName="Hugo", LastName="Brandt", Email="hugo.brandt@example.edu", Newsletter__c=True
    )
    duplicate_id = standin.add_contact(
        FirstName="Hugo", LastName="Brandt", Email="h.brandt@example.edu"
    )
    deleted_id = standin.add_contact(FirstName="Tomas", LastName="Reyes")
    lead_id = standin.add_lead(
        FirstName="Noor", LastName="Haddad", Company="Prospective", Email="noor@example.com",
        HasOptedOutOfEmail=True,
    )  # fmt: skip
    inbound.pull_from_salesforce()
    duplicate = Contact.objects.get(salesforce_id=duplicate_id)
    apply_change(
        contact=duplicate, actor=specialist, source="staff", note="No calls, asked by letter.",
        opt_out={"phone": True},
    )  # fmt: skip
    sync.push_batch()
    standin.merge_contacts(survivor_id, duplicate_id)
    standin.delete_contact(deleted_id)
    inbound.pull_from_salesforce()

    # 1. The Lead: found by its email, shown as a Lead, opted out of email as Salesforce had
    #    it, with where that came from.
    sign_in(page, SPECIALIST)
    page.goto("/contacts/")
    page.locator("input[name=q]").fill("noor@example.com")
    page.locator("input[name=q]").press("Enter")
    row = page.locator("#results tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Lead")
    row.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Noor Haddad")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Lead")
    expect(page.get_by_label("Opt-out banner")).to_contain_text("email")
    expect(page.locator("#history tr[data-action=starting_state]")).to_contain_text(
        "Read from Salesforce when the app first saw this Lead."
    )
    expect(page.locator(".identity-read")).to_contain_text("as Salesforce had them on")
    screenshot(page, "salesforce-records-01-lead")

    # 2. The merged pair: both found by name; the survivor holds the duplicate's do-not-call
    #    and its history, the duplicate points to the survivor and offers no form.
    page.goto("/contacts/?q=hugo+brandt")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="Merged")).to_have_count(1)
    rows.filter(has_not_text="Merged").get_by_role("link").click()
    expect(page.get_by_label("Opt-out banner")).to_contain_text("phone")
    history = page.locator("#history")
    expect(history.locator("tr[data-action=merged]")).to_contain_text(
        "was merged into this contact in Salesforce"
    )
    moved = history.locator("tr[data-action=opt_out]").filter(has_text="asked by letter")
    expect(moved).to_contain_text("merged into this contact")
    screenshot(page, "salesforce-records-02-survivor")
    moved.get_by_role("link", name="Hugo Brandt").click()
    expect(page.get_by_label("Merged in Salesforce")).to_contain_text("Merged into Hugo Brandt")
    expect(page.get_by_role("button", name="Save change")).to_have_count(0)
    screenshot(page, "salesforce-records-03-merged-away")
    page.get_by_label("Merged in Salesforce").get_by_role("link").click()
    expect(page.get_by_role("button", name="Save change")).to_be_visible()

    # 3. The deleted contact: still there, inactive, still changeable.
    page.goto("/contacts/?q=tomas+reyes")
    expect(page.locator("#results tbody tr")).to_contain_text("Deleted in Salesforce")
    page.locator("#results tbody tr").get_by_role("link").click()
    expect(page.get_by_label("Deleted in Salesforce")).to_contain_text(
        "The contact and its history are kept"
    )
    expect(page.get_by_role("button", name="Save change")).to_be_visible()
    screenshot(page, "salesforce-records-04-deleted")

    # 4. The Lead is converted in Salesforce: its Contact arrives, opted out of email as the
    #    Lead was, with the Lead's history; the Lead's page points to it.
    contact_id = standin.convert_lead(lead_id, HasOptedOutOfEmail=False)
    inbound.pull_from_salesforce()
    converted = Contact.objects.get(salesforce_id=contact_id)
    page.goto(f"/contacts/{Contact.objects.get(salesforce_id=lead_id).pk}/")
    expect(page.get_by_label("Merged in Salesforce")).to_contain_text("Merged into Noor Haddad")
    page.get_by_label("Merged in Salesforce").get_by_role("link").click()
    expect(page).to_have_url(f"{live_server.url}/contacts/{converted.pk}/")
    expect(page.get_by_label("Opt-out banner")).to_contain_text("email")
    history = page.locator("#history")
    expect(history.locator("tr[data-action=merged]")).to_contain_text(
        "was converted into this contact in Salesforce"
    )
    expect(history.locator("tr[data-action=starting_state]").first).to_contain_text(
        "merged into this contact"
    )
    screenshot(page, "salesforce-records-05-converted")
