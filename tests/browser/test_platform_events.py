"""A manager follows what the email platforms report about contacts, in a real browser
(preferences/events/intake.py, preferences/suppression/, the contact page).

The events are stored and applied as the endpoint and the worker do (intake.receive, then
apply_pending): soft bounces recorded until the Nth in the window makes the address Bounced;
the manager clears Bounced with a note once the address is corrected, and the opt-out stays;
a sender opt-out shows on the contact page and stays off the global suppression list, which
the manager filters and downloads. Each step is asserted in the page and in the database, and
leaves a full-page screenshot in artifacts/screenshots/.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from audit.models import AuditAction, AuditEntry
from preferences.events.intake import ParsedEvent, apply_pending, receive
from preferences.management.commands.create_staff_user import create_staff_user
from preferences.models import ChannelPreference, Contact, EventKind, EventState, PlatformEvent
from preferences.services import apply_change, current_state
from tests import factories
from tests.browser.conftest import sign_in
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

MANAGER = "mona.manager@test.example"
SPECIALIST = "grace.specialist@test.example"
ALUMNI = "510000002"  # the demo's "Alumni Association" business unit
_ids = itertools.count(1)


def _deliver(contact: Contact, kind: str, *, ago: timedelta = timedelta(0), **fields) -> None:
    """One event as the Marketing Cloud endpoint stores it, then the worker's pass."""
    event = ParsedEvent(
        event_id=f"ens-{next(_ids):04d}",
        kind=kind,
        occurred_at=timezone.now() - ago,
        subscriber_key=contact.salesforce_id,
        **fields,
    )
    assert receive("marketing_cloud", "ens", [event]) == (1, 0)
    assert apply_pending() == 1


def test_a_manager_follows_bounces_sender_opt_outs_and_the_suppression_list(
    live_server, page: Page, screenshot, settings
):
    settings.MARKETING_CLOUD_ENABLED = False  # no subscriber-status lookups in this story
    settings.SOFT_BOUNCE_LIMIT = 3
    settings.SOFT_BOUNCE_DAYS = 7
    create_staff_user(MANAGER, "manager", PASSWORD)
    specialist = create_staff_user(SPECIALIST, "specialist", PASSWORD)
    factories.make_categories()
    factories.make_business_units()
    rosa = factories.make_contact(first_name="Rosa", last_name="Marquez")
    sid = factories.make_contact(first_name="Sid", last_name="Sender")
    hal = factories.make_contact(first_name="Hal", last_name="Hardbounce")
    old = factories.make_contact(first_name="Otto", last_name="Oldoptout")
    spam = factories.make_contact(first_name="Sam", last_name="Spam")
    # Rosa opted out of email long ago; Otto too, forty days ago.
    for contact in (rosa, old):
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Asked on the phone to stop all email.",
            opt_out={"email": True},
        )
    ChannelPreference.objects.filter(contact=old).update(
        changed_at=timezone.now() - timedelta(days=40)
    )
    banner = page.locator("section.banner")
    events = page.locator("#platform-events tbody tr")

    # 1. A first soft bounce (mailbox full) is recorded only: Rosa is not Bounced.
    _deliver(rosa, EventKind.SOFT_BOUNCE, ago=timedelta(days=3), reason="452 mailbox full")
    rosa.refresh_from_db()
    assert rosa.email_bounced is False
    sign_in(page, MANAGER)
    page.goto(f"/contacts/{rosa.pk}/")
    expect(events).to_have_count(1)
    expect(events.first).to_have_attribute("data-state", EventState.RECORDED)
    expect(events.first).to_contain_text("Soft bounce 1 of 3 in 7 days")
    expect(events.first).to_contain_text("Marketing Cloud")
    expect(banner.locator("[data-channel=email]")).to_be_visible()
    expect(banner.locator("[data-channel=bounced]")).to_have_count(0)
    expect(page.locator("#history tr[data-action=soft_bounce]")).to_have_count(1)
    screenshot(page, "platform-events-01-soft-bounce-recorded")

    # 2. Two more within seven days: the third makes the address Bounced.
    _deliver(rosa, EventKind.SOFT_BOUNCE, ago=timedelta(days=2), reason="452 mailbox full")
    _deliver(rosa, EventKind.SOFT_BOUNCE, reason="452 mailbox full")
    rosa.refresh_from_db()
    assert rosa.email_bounced is True
    assert current_state(rosa).opted_out["email"] is True
    page.reload()
    expect(events).to_have_count(3)
    expect(events.first).to_have_attribute("data-state", EventState.APPLIED)
    expect(events.nth(1)).to_contain_text("Soft bounce 2 of 3 in 7 days")
    expect(banner.locator("[data-channel=bounced]")).to_contain_text("bounced")
    expect(banner.locator("[data-channel=email]")).to_be_visible()
    expect(page.locator("#history tr[data-action=bounce]")).to_contain_text("Soft bounce 3 in 7")
    screenshot(page, "platform-events-02-bounced-after-third-soft-bounce")

    # 3. The address is corrected in Salesforce: the manager clears Bounced. Without a note
    #    (only spaces) it is refused; with one, Bounced is gone and the email opt-out stays.
    clear = page.locator("form.clear-bounce")
    note = clear.get_by_label(re.compile("Clear Bounced"))
    note.fill("   ")  # blank passes the browser's own check, not the server's
    clear.get_by_role("button", name="Clear Bounced").click()
    expect(clear.locator(".error")).to_have_text("Write a note.")
    rosa.refresh_from_db()
    assert rosa.email_bounced is True
    note.fill("Address corrected: Salesforce had gmial.com for gmail.com.")
    clear.get_by_role("button", name="Clear Bounced").click()
    expect(page.locator("ul.messages")).to_contain_text("Bounced cleared")
    expect(banner.locator("[data-channel=bounced]")).to_have_count(0)
    expect(banner.locator("[data-channel=email]")).to_be_visible()
    expect(page.locator("form.clear-bounce")).to_have_count(0)
    expect(page.locator("#history tr[data-action=bounce]").first).to_contain_text("Bounce cleared")
    rosa.refresh_from_db()
    state = current_state(rosa)
    assert state.bounced is False and state.opted_out["email"] is True
    cleared = AuditEntry.objects.filter(contact=rosa).order_by("-id").first()
    assert cleared.action == AuditAction.BOUNCE and cleared.actor.email == MANAGER
    screenshot(page, "platform-events-03-bounced-cleared-opt-out-stays")

    # 4. Sid opts out of the Alumni Association's mail only: shown on his page, no global
    #    opt-out.
    _deliver(sid, EventKind.SENDER_OPT_OUT, scope=f"business_unit:{ALUMNI}")
    assert not current_state(sid).any_opted_out
    page.goto(f"/contacts/{sid.pk}/")
    sender = banner.locator(f"[data-sender='business_unit:{ALUMNI}']")
    expect(sender).to_contain_text("Opted out of mail from Alumni Association since")
    expect(banner.locator("[data-channel]")).to_have_count(0)
    expect(events.first).to_have_attribute("data-kind", EventKind.SENDER_OPT_OUT)
    expect(page.locator("#opt_out_email, input[name=opt_out_email]")).not_to_be_checked()
    screenshot(page, "platform-events-04-sender-opt-out")

    # 5. Hal's hard bounce and Sam's spam report; the manager opens the suppression list
    #    from the top bar and filters it to email opt-outs since today.
    _deliver(hal, EventKind.HARD_BOUNCE, reason="550 no such user")
    _deliver(spam, EventKind.SPAM_REPORT)
    assert PlatformEvent.objects.filter(state=EventState.RECEIVED).count() == 0
    page.locator("header.topbar nav").get_by_role("link", name="Suppression list").click()
    expect(page).to_have_url(f"{live_server.url}/suppression/")
    rows = page.locator("#suppression tbody tr")
    expect(rows).to_have_count(4)  # Rosa, Otto, Hal, Sam; not Sid
    expect(page.locator(f"#suppression tr[data-contact='{sid.pk}']")).to_have_count(0)
    page.get_by_label("Reason").select_option("opted_out")
    expect(page).to_have_url(re.compile(r"/suppression/\?list=global&reason=opted_out&since=$"))
    expect(rows).to_have_count(3)  # the spam report opted Sam out too
    today = timezone.localdate().isoformat()
    page.get_by_label("Since").fill(today)
    page.get_by_label("Since").dispatch_event("change")
    expect(page).to_have_url(re.compile(rf"reason=opted_out&since={today}$"))
    expect(rows).to_have_count(2)
    expect(page.locator(f"#suppression tr[data-contact='{rosa.pk}']")).to_contain_text(
        "Opted out of email"
    )
    expect(page.locator(f"#suppression tr[data-contact='{spam.pk}']")).to_contain_text(
        "Spam report"
    )
    expect(page.locator(f"#suppression tr[data-contact='{old.pk}']")).to_have_count(0)
    download = page.get_by_role("link", name="Download CSV of the whole list as filtered")
    expect(download).to_have_attribute(
        "href", f"/suppression/export.csv?list=global&reason=opted_out&since={today}"
    )
    screenshot(page, "platform-events-05-suppression-list-filtered")

    answer = page.request.get(download.get_attribute("href") or "")
    assert answer.status == 200
    lines = list(csv.DictReader(io.StringIO(answer.text().lstrip("\ufeff"))))
    assert {int(line["contact_id"]) for line in lines} == {rosa.pk, spam.pk}
    assert next(line for line in lines if int(line["contact_id"]) == spam.pk)["reasons"] == (
        "opted out; spam report"
    )

    # 6. The sender opt-outs, listed apart from the global list.
    page.get_by_label("List").select_option("senders")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-contact", str(sid.pk))
    expect(rows.first).to_contain_text("Alumni Association")
    screenshot(page, "platform-events-06-sender-opt-outs-list")
