from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations.salesforce.inbound import merge
from preferences.services import apply_change, current_state, escalate
from tests import factories

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def _url(contact, name="update"):
    return reverse(f"preferences:{name}", kwargs={"pk": contact.pk})


def _form(contact, **fields):
    data = {"version": contact.version, "note": "Caller asked by phone."}
    data.update(fields)
    return data


def _opt_out(contact, user, channel="email"):
    return apply_change(
        contact=contact, actor=user, source="staff", note="Asked to stop.", opt_out={channel: True}
    )


def test_contact_page_shows_toggles_categories_and_history(specialist_client, contact, specialist):
    _opt_out(contact, specialist, "phone")
    response = specialist_client.get(_url(contact, "contact"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    assert 'name="opt_out_email"' in html and 'name="opt_out_phone"' in html
    assert 'value="newsletter"' in html
    assert 'data-action="opt_out"' in html
    assert specialist.email in html


def test_contact_page_under_htmx_is_the_fragment_only(specialist_client, contact):
    response = specialist_client.get(_url(contact, "contact"), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="contact-main">')


def test_banner_says_which_channel_since_when_by_whom_and_the_note(
    specialist_client, contact, specialist
):
    _opt_out(contact, specialist, "email")
    html = specialist_client.get(_url(contact, "contact")).content.decode()
    assert 'aria-label="Opt-out banner"' in html
    banner = html[
        html.index("Opt-out banner") : html.index("</section>", html.index("Opt-out banner"))
    ]
    assert 'data-channel="email"' in banner
    assert specialist.email in banner
    assert "Asked to stop." in banner
    assert f"{timezone.localtime():%Y}" in banner


def test_no_banner_when_nothing_is_opted_out(specialist_client, contact):
    html = specialist_client.get(_url(contact, "contact")).content.decode()
    assert "Opt-out banner" not in html


def test_bounced_contact_shows_the_banner(specialist_client, contact):
    apply_change(
        contact=contact, actor=None, source="email_platform", note="Hard bounce.", bounced=True
    )
    html = specialist_client.get(_url(contact, "contact")).content.decode()
    assert 'data-channel="bounced"' in html


def test_opting_out_by_plain_post_redirects_back_to_the_page(specialist_client, contact):
    response = specialist_client.post(
        _url(contact), _form(contact, opt_out_email="on", categories=[])
    )
    assert response.status_code == 302
    assert response.url == _url(contact, "contact")
    assert current_state(contact).opted_out["email"] is True
    page = specialist_client.get(response.url).content.decode()
    assert "Saved." in page
    assert 'data-channel="email"' in page


def test_opting_out_under_htmx_answers_with_the_refreshed_fragment(specialist_client, contact):
    response = specialist_client.post(
        _url(contact), _form(contact, opt_out_phone="on"), headers=HTMX
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert 'data-channel="phone"' in html
    assert "Saved." in html


def test_opting_out_turns_the_ticked_categories_off(specialist_client, contact, specialist):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="x", categories={"events", "giving"}
    )
    contact.refresh_from_db()
    specialist_client.post(
        _url(contact), _form(contact, opt_out_email="on", categories=["events", "giving"])
    )
    assert current_state(contact).categories == frozenset()


def test_a_change_without_a_note_is_refused_with_a_message(specialist_client, contact):
    response = specialist_client.post(_url(contact), _form(contact, opt_out_email="on", note=" "))
    assert response.status_code == 422
    assert "Write a note: every change needs one." in response.content.decode()
    assert current_state(contact).opted_out["email"] is False
    assert not AuditEntry.objects.exists()


def test_reenrolment_by_direct_post_without_consent_is_refused(
    specialist_client, contact, specialist
):
    _opt_out(contact, specialist)
    contact.refresh_from_db()
    response = specialist_client.post(_url(contact), _form(contact), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 422
    assert "is a re-enrolment" in html
    assert current_state(contact).opted_out["email"] is True
    assert AuditEntry.objects.filter(action=AuditAction.RE_ENROLMENT).count() == 0


def test_half_filled_consent_is_refused(specialist_client, contact, specialist):
    _opt_out(contact, specialist)
    contact.refresh_from_db()
    response = specialist_client.post(_url(contact), _form(contact, consent_method="email"))
    assert response.status_code == 422
    assert "Complete the consent confirmation" in response.content.decode()
    assert current_state(contact).opted_out["email"] is True


def test_reenrolment_with_consent_then_suggests_the_earlier_categories(
    specialist_client, contact, specialist
):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="x", categories={"events", "giving"}
    )
    _opt_out(contact, specialist)
    contact.refresh_from_db()
    asked = timezone.localtime()
    response = specialist_client.post(
        _url(contact),
        _form(
            contact,
            consent_method="phone_call",
            consent_obtained_at=asked.strftime("%Y-%m-%dT%H:%M"),
            consent_attested="on",
        ),
        headers=HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert current_state(contact).opted_out["email"] is False
    assert current_state(contact).categories == frozenset()
    suggestion = html[
        html.index('class="suggest"') : html.index("</p>", html.index('class="suggest"'))
    ]
    assert "Events and reunions" in suggestion and "Giving and appeals" in suggestion
    assert (
        "checked"
        not in html[
            html.index("<legend>Email categories") : html.index(
                "</fieldset>", html.index("<legend>Email categories")
            )
        ]
    )
    entry = AuditEntry.objects.get(action=AuditAction.RE_ENROLMENT)
    assert entry.consent.method == "phone_call"


def test_a_stale_form_is_refused_and_keeps_what_was_typed(specialist_client, contact, manager):
    loaded = contact.version
    _opt_out(contact, manager, "phone")
    response = specialist_client.post(
        _url(contact),
        {"version": loaded, "note": "My carefully written note.", "opt_out_email": "on"},
        headers=HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 409
    assert "Someone else changed this contact" in html
    assert manager.email in html
    assert "My carefully written note." in html
    assert current_state(contact).opted_out["email"] is False
    contact.refresh_from_db()
    assert f'name="version" value="{contact.version}"' in html


def _checked(html: str, name: str, value: str | None = None) -> bool:
    """Whether the returned form has the checkbox ticked."""
    import re

    for tag in re.findall(r"<input[^>]*>", html):
        if f'name="{name}"' in tag and (value is None or f'value="{value}"' in tag):
            return " checked" in tag
    raise AssertionError(f"no input {name} {value or ''}")


def test_a_stale_form_comes_back_on_the_current_state_and_never_undoes_the_other_change(
    specialist_client, contact, manager
):
    """The lost update: the manager opts the contact out of phone; the specialist, on a
    page loaded before, opts them out of email. The 409 keeps the specialist's email
    opt-out, shows the manager's phone opt-out, and saving it again keeps both."""
    loaded = contact.version
    _opt_out(contact, manager, "phone")
    stale = {"version": loaded, "note": "Stop emails.", "opt_out_email": "on"}
    response = specialist_client.post(_url(contact), stale, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 409
    assert f"Since you opened it, {manager.email}" in html and "Phone: opted out" in html
    assert _checked(html, "opt_out_phone") and _checked(html, "opt_out_email")
    assert "both changed" not in html

    contact.refresh_from_db()
    again = {"version": contact.version, "note": "Stop emails.", "opt_out_email": "on"}
    again["opt_out_phone"] = "on"  # as the returned form submits it
    assert specialist_client.post(_url(contact), again, headers=HTMX).status_code == 200
    state = current_state(contact)
    assert state.opted_out == {"email": True, "phone": True}


def test_changes_to_categories_are_rebased_on_the_current_state_too(
    specialist_client, contact, manager, categories
):
    """Both untick the same category (they agree), and the specialist also ticks another:
    the returned form shows both, and saving it loses nothing."""
    key = categories[0].key
    apply_change(contact=contact, actor=manager, source="staff", note="Wants it.", categories=[key])
    contact.refresh_from_db()
    loaded = contact.version
    apply_change(
        contact=contact, actor=manager, source="staff", note="Changed mind.", categories=[]
    )
    # The specialist, from the page showing the category ticked, also unticks it and
    # ticks another: the untick agrees with the manager's, the other is theirs alone.
    other = categories[1].key
    stale = {"version": loaded, "note": "Adjusting.", "categories": [other]}
    response = specialist_client.post(_url(contact), stale, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 409
    assert _checked(html, "categories", other)
    assert not _checked(html, "categories", key)
    assert "both changed" not in html

    # Saving the returned form keeps the manager's untick and adds the other category.
    contact.refresh_from_db()
    again = {"version": contact.version, "note": "Adjusting.", "categories": [other]}
    assert specialist_client.post(_url(contact), again, headers=HTMX).status_code == 200
    assert current_state(contact).categories == frozenset({other})


def test_where_the_page_it_came_from_cannot_be_told_the_form_shows_theirs(
    specialist_client, contact, manager
):
    """A version no entry in the history made (as from an old page of a migrated
    contact): every field the user would change against the current state is a conflict."""
    _opt_out(contact, manager, "phone")
    stale = {"version": 999, "note": "Stop emails.", "opt_out_email": "on"}
    response = specialist_client.post(_url(contact), stale, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 409
    assert "You and they both changed Email, Phone" in html
    assert not _checked(html, "opt_out_email") and _checked(html, "opt_out_phone")
    assert current_state(contact).opted_out == {"email": False, "phone": True}


def test_escalating_hands_the_request_to_managers(specialist_client, manager_client, contact):
    response = specialist_client.post(_url(contact, "escalate"), {"note": "Wants a call first?"})
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action=AuditAction.ESCALATION)
    assert entry.note == "Wants a call first?"
    listing = manager_client.get(reverse("preferences:escalations")).content.decode()
    assert "Wants a call first?" in listing


def test_escalating_without_a_note_is_refused(specialist_client, contact):
    response = specialist_client.post(_url(contact, "escalate"), {"note": ""}, headers=HTMX)
    assert response.status_code == 422
    assert not AuditEntry.objects.exists()


def test_a_manager_resolves_an_escalation_with_a_note(manager_client, contact, specialist):
    escalation = escalate(contact=contact, actor=specialist, note="Unsure.")
    url = reverse("preferences:resolve_escalation", kwargs={"pk": escalation.pk})
    assert manager_client.post(url, {"note": ""}).status_code == 302
    escalation.refresh_from_db()
    assert escalation.is_open
    manager_client.post(url, {"note": "Called back; keep opted out."})
    escalation.refresh_from_db()
    assert not escalation.is_open
    assert AuditEntry.objects.filter(action=AuditAction.ESCALATION_RESOLVED).count() == 1
    assert "Unsure." not in manager_client.get(reverse("preferences:escalations")).content.decode()


def test_search_finds_contacts_every_way_staff_type_them(specialist_client, categories):
    ada = factories.make_contact(
        first_name="Ada",
        last_name="Okafor",
        email="ADA.Okafor@Example.edu",
        phone="+1 (720) 555-0199",
        ascend_id="1234567890",
    )
    factories.make_contact(first_name="Grace", last_name="Hopper")
    search = reverse("preferences:search")
    for query in [
        "ada.okafor@example.edu",
        "ADA.OKAFOR@",
        "okaf",
        "ada oka",
        ada.salesforce_id,
        ada.salesforce_id[:15],
        "(720) 555-0199",
        "7205550199",
        "1234567890",
    ]:
        html = specialist_client.get(search, {"q": query}).content.decode()
        assert "Okafor, Ada" in html, query
        assert "Hopper" not in html, query


def test_search_under_htmx_returns_only_the_results(specialist_client, contact):
    response = specialist_client.get(
        reverse("preferences:search"), {"q": contact.last_name}, headers=HTMX
    )
    html = response.content.decode()
    assert "<html" not in html
    assert html.lstrip().startswith('<section id="results"')
    assert contact.last_name in html


def test_search_says_when_nothing_matches(specialist_client, categories):
    html = specialist_client.get(reverse("preferences:search"), {"q": "zzyzx"}).content.decode()
    assert "No contact matches" in html


def test_a_refused_reenrolment_marks_the_missing_consent_fields(
    specialist_client, contact, specialist
):
    _opt_out(contact, specialist)
    contact.refresh_from_db()
    html = specialist_client.post(_url(contact), _form(contact)).content.decode()
    assert html.count("Required to opt the contact back in.") == 3


def test_a_stale_csrf_token_under_htmx_reloads_the_page_with_a_message(specialist, contact):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(specialist)
    response = client.post(
        _url(contact), _form(contact, opt_out_email="on"), headers={**HTMX, "X-CSRFToken": "stale"}
    )
    assert response.status_code == 200
    assert response.headers["HX-Refresh"] == "true"
    assert current_state(contact).opted_out["email"] is False
    page = client.get(_url(contact, "contact")).content.decode()
    assert "Nothing was saved" in page


def test_history_lists_categories_in_their_display_order(specialist_client, contact, specialist):
    apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="x",
        categories={"research", "newsletter", "events"},
    )
    html = specialist_client.get(_url(contact, "contact")).content.decode()
    assert "Subscribed: Alumni newsletter, Events and reunions, Research news" in html


def test_the_contact_page_shows_sync_state_and_polls_while_pending(
    specialist_client, contact, specialist
):
    from preferences.models import ContactSync

    _opt_out(contact, specialist)
    html = specialist_client.get(_url(contact, "contact")).content.decode()
    assert 'data-target="salesforce" data-status="pending"' in html
    assert 'hx-trigger="every 3s"' in html
    ContactSync.objects.filter(contact=contact).update(status="synced", synced_at=timezone.now())
    fragment = specialist_client.get(_url(contact, "contact_sync"), headers=HTMX).content.decode()
    assert fragment.lstrip().startswith('<section class="card" id="sync"')
    assert 'data-target="salesforce" data-status="synced"' in fragment
    assert "every 3s" not in fragment  # nothing pending: stop polling


def test_the_system_team_sees_failures_and_retries_them(system_client, contact, specialist):
    from preferences.models import ContactSync

    _opt_out(contact, specialist)
    ContactSync.objects.filter(contact=contact, target="salesforce").update(
        status="failed", last_error="INVALID_FIELD: No such column 'Events__c'"
    )
    page = system_client.get(reverse("preferences:sync_problems")).content.decode()
    assert "No such column" in page
    sync_row = ContactSync.objects.get(contact=contact, target="salesforce")
    system_client.post(reverse("preferences:sync_retry", kwargs={"pk": sync_row.pk}))
    sync_row.refresh_from_db()
    assert sync_row.status == "pending"
    assert AuditEntry.objects.filter(action="sync_retry", contact=contact).count() == 1


# --- records Salesforce deleted or merged (docs/design.md, "Contacts come from Salesforce") --


def _merged(specialist):
    survivor = factories.make_contact(first_name="Ada", last_name="Survivor")
    loser = factories.make_contact(first_name="Ada", last_name="Duplicate")
    apply_change(
        contact=loser, actor=specialist, source="staff", note="No calls, please.",
        opt_out={"phone": True},
    )  # fmt: skip
    merge(loser, survivor, {"LastModifiedById": "005000000000001AAA"})
    survivor.refresh_from_db()
    loser.refresh_from_db()
    return survivor, loser


def test_a_merged_contact_points_to_the_survivor_and_offers_no_form(specialist_client, specialist):
    survivor, loser = _merged(specialist)

    html = specialist_client.get(_url(loser, "contact")).content.decode()

    assert 'aria-label="Merged in Salesforce"' in html
    assert _url(survivor, "contact") in html
    assert "Save change" not in html


def test_the_survivors_history_includes_the_merged_contacts(specialist_client, specialist):
    survivor, _ = _merged(specialist)

    html = specialist_client.get(_url(survivor, "contact")).content.decode()

    history = html[html.index('id="history"') :]
    assert "No calls, please." in history
    assert "merged into this contact" in history
    assert 'data-action="merged"' in history
    assert current_state(survivor).opted_out["phone"] is True


def test_a_stale_form_for_a_merged_contact_is_refused_and_changes_nothing(
    specialist_client, specialist
):
    survivor, loser = _merged(specialist)
    entries = AuditEntry.objects.count()

    response = specialist_client.post(_url(loser), _form(loser, opt_out_email="on"))

    assert response.status_code == 422
    assert "merged into" in response.content.decode()
    assert AuditEntry.objects.count() == entries
    assert current_state(survivor).opted_out["email"] is False


def test_a_deleted_contact_says_so_and_can_still_be_changed(specialist_client, contact):
    contact.inactive_since = timezone.now()
    contact.save()

    html = specialist_client.get(_url(contact, "contact")).content.decode()

    assert 'aria-label="Deleted in Salesforce"' in html
    assert "Save change" in html


def test_the_page_says_when_the_identity_was_last_read_from_salesforce(specialist_client, contact):
    html = specialist_client.get(_url(contact, "contact")).content.decode()
    assert "not read from Salesforce yet" in html

    contact.identity_read_at = timezone.now()
    contact.save()
    html = specialist_client.get(_url(contact, "contact")).content.decode()
    read = timezone.localtime(contact.identity_read_at)
    assert f"as Salesforce had them on {read:%-d %b %Y}" in html


def test_search_results_show_who_is_opted_out_and_bounced(specialist_client, specialist):
    """Two people of one name do not look alike: each row says what they opted out of."""
    out = factories.make_contact(first_name="Helen", last_name="Wilson", email="hw1@example.edu")
    factories.make_contact(first_name="Helen", last_name="Wilson", email="hw2@example.edu")
    _opt_out(out, specialist, "email")
    apply_change(contact=out, actor=specialist, source="staff", note="Bounced.", bounced=True)
    html = specialist_client.get(reverse("preferences:search"), {"q": "helen wil"}).content
    rows = html.decode().split("<tr>")[2:]
    assert len(rows) == 2
    mine = next(row for row in rows if "hw1@example.edu" in row)
    other = next(row for row in rows if "hw2@example.edu" in row)
    assert "Email opt-out" in mine and "Bounced" in mine
    assert "Email opt-out" not in other and "Bounced" not in other
