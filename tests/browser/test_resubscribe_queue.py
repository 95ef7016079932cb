"""A re-enrolment, the re-subscribe request it opens, and the system team working it, in a
real browser (docs/design.md, rule 8; issue 5, point 4).

The web app is the live server; a real Celery worker (on a private Redis) does the lookup
after the re-enrolment, against the Marketing Cloud stand-in over HTTPS; the Salesforce
stand-in receives the change as usual. Each step leaves a screenshot in artifacts/screenshots/.
"""

from __future__ import annotations

import pytest
from django.core import mail
from django.utils import timezone
from playwright.sync_api import BrowserContext, Page, expect

from audit.models import AuditAction, AuditEntry, PendingReview
from preferences.management.commands.create_staff_user import create_staff_user
from preferences.models import ConsentMethod, ResubscribeRequest, ResubscribeState, Source
from preferences.services import apply_change
from tests import factories
from tests.browser.conftest import sign_in
from tests.conftest import PASSWORD

# The reliability tests' real processes: a private Redis, the Salesforce stand-in, workers.
from tests.reliability.conftest import (  # noqa: F401 (pytest fixtures)
    broker,
    celery,
    private_redis,
    standin,
)

pytestmark = pytest.mark.browser

SPECIALIST = "grace.specialist@test.example"
SYSTEM = "sam.system@test.example"
TEAM_ADDRESS = "ecomm-system-team@university.example"
PARENT, ALUMNI = "510000001", "510000002"


def _page(context: BrowserContext, problems: list[str]) -> Page:
    page = context.new_page()
    page.on(
        "console",
        lambda m: (
            problems.append(m.text) if m.type == "error" and "status of 422" not in m.text else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    return page


def test_a_held_subscriber_is_re_enrolled_flagged_urgent_and_resubscribed_by_the_system_team(
    live_server,
    new_context,
    page: Page,
    screenshot,
    celery,  # noqa: F811
    standin,  # noqa: F811
    marketing_cloud,
    settings,
):
    settings.RESUBSCRIBE_NOTIFY_EMAIL = TEAM_ADDRESS
    create_staff_user(SPECIALIST, "specialist", PASSWORD)
    create_staff_user(SYSTEM, "system", PASSWORD)
    factories.make_categories()
    units = factories.make_business_units()
    salesforce_id = standin.add_contact(
        FirstName="Ines", LastName="Achterberg", HasOptedOutOfEmail=True, DoNotCall=False
    )
    contact = factories.make_contact(
        first_name="Ines",
        last_name="Achterberg",
        email="ines.achterberg@example.edu",
        salesforce_id=salesforce_id,
    )
    apply_change(
        contact=contact,
        actor=None,
        source=Source.SALESFORCE,
        note="Unsubscribed through the email footer.",
        opt_out={"email": True},
        already_in=["salesforce"],
    )
    marketing_cloud.set_subscriber(salesforce_id, "Active", mid=PARENT)
    marketing_cloud.set_subscriber(salesforce_id, "Held", mid=ALUMNI)
    env = {
        "MARKETING_CLOUD_ENABLED": "true",
        "MARKETING_CLOUD_AUTH_URL": marketing_cloud.url,
        "MARKETING_CLOUD_CLIENT_ID": marketing_cloud.client_id,
        "MARKETING_CLOUD_CLIENT_SECRET": marketing_cloud.client_secret,
        "MARKETING_CLOUD_ACCOUNT_ID": marketing_cloud.parent_mid,
        "MARKETING_CLOUD_CA_BUNDLE": marketing_cloud.ca_path,
    }
    celery.worker(concurrency=1, **env)
    contact_path = f"/contacts/{contact.pk}/"
    card = page.locator("#marketing-cloud")

    # 1. The specialist opens the opted-out contact: nothing read from Marketing Cloud yet.
    sign_in(page, SPECIALIST)
    page.goto(contact_path)
    expect(page.locator("section.banner li[data-channel=email]")).to_be_visible()
    expect(card.locator(f"li[data-mid='{ALUMNI}']")).to_contain_text("not read yet")
    expect(card).to_contain_text("None.")
    screenshot(page, "resubscribe-01-opted-out-contact")

    # 2. Re-enrol with the consent step; the worker looks the subscriber up in every
    #    business unit and the card updates by itself: Held in the Alumni Association.
    form = page.locator("form.preferences")
    form.get_by_label("Email opt-out").uncheck()
    form.get_by_label("How the contact asked").select_option(ConsentMethod.PHONE_CALL.value)
    asked_at = timezone.localtime().replace(second=0, microsecond=0)
    form.get_by_label("When the contact asked").fill(asked_at.strftime("%Y-%m-%dT%H:%M"))
    form.get_by_label("I confirm the contact explicitly asked to be opted back in.").check()
    form.locator("textarea[name=note]").fill("Called: wants the alumni newsletter again.")
    form.get_by_role("button", name="Save change").click()
    expect(page.locator("section.banner")).to_have_count(0)
    expect(card.locator(f"li[data-mid='{ALUMNI}']")).to_have_attribute(
        "data-status", "held", timeout=30_000
    )
    expect(card.locator(f"li[data-mid='{ALUMNI}']")).to_contain_text("Held (gray)")
    expect(card.locator(f"li[data-mid='{PARENT}']")).to_contain_text("Active (green)")
    expect(card.locator(f"li[data-mid='{units[2].mid}']")).to_contain_text("Not found")
    request_box = card.locator(".resubscribe-request")
    expect(request_box).to_have_count(1)
    expect(request_box).to_contain_text("Alumni Association")
    expect(request_box).to_contain_text("Held (gray)")
    expect(card.locator("p.checking")).to_have_count(0)  # polling stopped
    screenshot(page, "resubscribe-02-request-opened")
    request = ResubscribeRequest.objects.get(contact=contact)
    assert (request.business_unit.mid, request.state) == (ALUMNI, ResubscribeState.OPEN)
    assert request.requested_by is not None and request.requested_by.email == SPECIALIST

    # 3. The contact has a reunion invitation coming: the specialist marks it urgent, and the
    #    system team is emailed.
    request_box.get_by_label("Why is it urgent?").fill("Reunion invitation goes out Friday.")
    request_box.get_by_role("button", name="Mark urgent").click()
    expect(card.locator("p.notice")).to_contain_text("the system team was emailed")
    expect(request_box.locator(".tag.bad")).to_have_text("urgent")
    screenshot(page, "resubscribe-03-marked-urgent")
    [message] = mail.outbox
    assert message.to == [TEAM_ADDRESS]
    assert "Ines Achterberg" in message.subject and "Alumni Association" in message.subject
    assert "Reunion invitation goes out Friday." in message.body
    assert f"/resubscribe/{request.pk}/" in message.body

    # 4. The system team member finds it at the top of the queue and opens it.
    problems: list[str] = []
    team = _page(new_context(), problems)
    sign_in(team, SYSTEM)
    team.get_by_role("link", name="Re-subscribe queue").click()
    expect(team.get_by_role("heading", name="Re-subscribe requests")).to_be_visible()
    team.get_by_label("Business unit").select_option(ALUMNI)  # htmx filters in place
    expect(team).to_have_url(
        f"{live_server.url}/resubscribe/?business_unit={ALUMNI}&status=&state="
    )
    row = team.locator(f"#queue tr[data-request='{request.pk}']")
    expect(row).to_contain_text("urgent")
    expect(row).to_contain_text("Ines Achterberg")
    expect(row).to_contain_text(SPECIALIST)
    screenshot(team, "resubscribe-04-queue")
    row.get_by_role("link", name="Open").click()
    expect(team.locator(".consent-evidence")).to_contain_text("Phone call")
    expect(team.locator(".consent-evidence")).to_contain_text("attested")
    screenshot(team, "resubscribe-05-request")

    # 5. Resubscribe in Marketing Cloud (after the confirmation): the status is read back
    #    as Active and the request is done.
    step = team.locator("form.step").filter(has_text="Resubscribe in Marketing Cloud")
    step.locator("textarea[name=note]").fill("Urgent: before Friday's invitation.")
    confirm = step.get_by_role("checkbox")
    step.get_by_role("button", name="Resubscribe in Marketing Cloud").click()
    # Not confirmed: the browser holds the form back (the server refuses it too).
    assert confirm.evaluate("box => box.validity.valueMissing") is True
    assert marketing_cloud.status(salesforce_id, ALUMNI) == "Held"
    confirm.check()
    step.get_by_role("button", name="Resubscribe in Marketing Cloud").click()
    expect(team.locator("#resubscribe-request")).to_have_attribute("data-state", "done")
    expect(team.locator("ul.messages")).to_contain_text("reads Active")
    expect(team.locator(".status-now")).to_contain_text("Active (green)")
    screenshot(team, "resubscribe-06-done")
    assert marketing_cloud.status(salesforce_id, ALUMNI) == "Active"
    request.refresh_from_db()
    assert request.state == ResubscribeState.DONE

    # 6. Every step is in the audit log, in order, and on the request's trail.
    trail = team.locator("section.trail tbody tr")
    expect(trail).to_have_count(3)
    screenshot(team, "resubscribe-07-audit-trail")
    entries = list(AuditEntry.objects.filter(contact=contact).order_by("id"))
    assert [(e.action, e.actor_label) for e in entries] == [
        (AuditAction.OPT_OUT, "Salesforce"),
        (AuditAction.RE_ENROLMENT, SPECIALIST),
        (AuditAction.RESUBSCRIBE_REQUEST, "Marketing Cloud check"),
        (AuditAction.RESUBSCRIBE_REQUEST, SPECIALIST),
        (AuditAction.RESUBSCRIBE, SYSTEM),
    ]
    assert entries[1].consent is not None
    assert "marked urgent: Reunion invitation goes out Friday." in entries[3].note
    assert entries[4].risky and PendingReview.objects.filter(entry=entries[4]).exists()
    assert all(e.resubscribe_request_id == request.pk for e in entries[2:])
    team.goto(contact_path)
    history = team.locator("section.history tbody tr")
    expect(history.first).to_have_attribute("data-action", "resubscribe")
    expect(team.locator("#marketing-cloud")).to_contain_text("None.")
    screenshot(team, "resubscribe-08-contact-history")
    assert not problems, problems
