"""Resolving a discrepancy: push the app's values, accept the other system's, or dismiss; each
audited, each refusing what it cannot do (docs/design.md, "Reconciliation")."""

from __future__ import annotations

import csv
import html
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations.ascend import sync as ascend
from integrations.models import Discrepancy
from preferences.discrepancies import services
from preferences.models import ContactSync
from preferences.services import ChangeRefused, ConsentRequired, apply_change, current_state
from tests import factories

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def _opt_out(contact: Any, actor: Any, **channels: bool) -> None:
    apply_change(contact=contact, actor=actor, source="staff", note="Stop.", opt_out=channels)


def _differs(contact: Any, *, system: str = "salesforce", remote: dict[str, Any]) -> Discrepancy:
    state = current_state(contact)
    app = {
        "opted_out": sorted(c for c, out in state.opted_out.items() if out),
        "categories": sorted(state.categories),
    }
    return factories.make_discrepancy(contact, system=system, app=app, remote=remote)


# --- the services -------------------------------------------------------------------------------


def test_pushing_the_apps_values_to_salesforce_queues_the_contact_and_is_audited(
    contact, specialist, system_user, django_capture_on_commit_callbacks
):
    _opt_out(contact, specialist, email=True)
    ContactSync.objects.filter(contact=contact).update(status="synced")
    found = _differs(contact, remote={"opted_out": [], "categories": [], "version": 1})

    with django_capture_on_commit_callbacks(execute=False):
        services.push_app_values(discrepancy_id=found.pk, actor=system_user, note="Data load.")

    found.refresh_from_db()
    assert (found.resolution, found.resolved_by) == ("pushed", system_user)
    assert ContactSync.objects.get(contact=contact, target="salesforce").status == "pending"
    entry = found.resolution_entry
    assert entry.action == AuditAction.DISCREPANCY_RESOLVED and entry.actor == system_user
    assert (
        entry.note == f"Pushed the app's values to Salesforce (discrepancy #{found.pk}): Data load."
    )


def test_pushing_to_ascend_puts_a_correction_row_in_the_next_change_file(
    contact, specialist, system_user, settings, tmp_path
):
    settings.ASCEND_DESTINATION = str(tmp_path / "dropbox")
    settings.ASCEND_STAGING_DIR = str(tmp_path / "staging")
    (tmp_path / "dropbox").mkdir()
    _opt_out(contact, specialist, email=True)
    ascend.export()  # the opt-out went in last night's file; Ascend lost it since
    found = _differs(contact, system="ascend", remote={"opted_out": [], "categories": None})

    services.push_app_values(discrepancy_id=found.pk, actor=system_user, note="Reloaded.")
    run = ascend.export()

    with (tmp_path / "dropbox" / run.filename).open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["ascend_id"], r["field"], r["old_value"], r["new_value"]) for r in rows] == [
        (contact.ascend_id, "HasOptedOutOfEmail", "FALSE", "TRUE")
    ]
    found.refresh_from_db()
    assert rows[0]["change_id"] == str(found.resolution_entry_id)
    assert found.resolution_entry.action == AuditAction.DISCREPANCY_RESOLVED
    assert found.resolution_entry.actor == system_user


def test_accepting_salesforces_values_changes_the_contact_through_the_one_service(
    contact, system_user, categories
):
    found = _differs(contact, remote={"opted_out": ["phone"], "categories": ["newsletter"]})

    services.accept_external_values(discrepancy_id=found.pk, actor=system_user, note="Right.")

    state = current_state(contact)
    assert state.opted_out["phone"] is True and state.categories == {"newsletter"}
    found.refresh_from_db()
    change = AuditEntry.objects.get(contact=contact, action=AuditAction.OPT_OUT)
    assert change.note == f"Accepted Salesforce's values (discrepancy #{found.pk}): Right."
    entry = found.resolution_entry
    assert found.resolution == "accepted" and entry.action == AuditAction.DISCREPANCY_RESOLVED
    assert entry.note == (
        f"Accepted Salesforce's values, change PD-{change.pk} (discrepancy #{found.pk}): Right."
    )
    # Salesforce told us: it is not sent back there, but goes everywhere else.
    syncs = dict(ContactSync.objects.filter(contact=contact).values_list("target", "status"))
    assert syncs["salesforce"] == "synced" and syncs["ascend"] == "pending"


def test_accepting_a_cleared_opt_out_needs_the_contacts_consent(contact, specialist, system_user):
    _opt_out(contact, specialist, email=True)
    found = _differs(contact, remote={"opted_out": [], "categories": []})
    assert services.clears_an_opt_out(found)

    with pytest.raises(ConsentRequired):
        services.accept_external_values(discrepancy_id=found.pk, actor=system_user, note="x")
    found.refresh_from_db()
    assert found.is_open and current_state(contact).opted_out["email"] is True

    services.accept_external_values(
        discrepancy_id=found.pk, actor=system_user, note="She wrote.", consent=factories.consent()
    )
    assert current_state(contact).opted_out["email"] is False
    assert AuditEntry.objects.filter(contact=contact, action="re_enrolment").count() == 1
    assert Discrepancy.objects.get(pk=found.pk).resolution == "accepted"


def test_accepting_values_the_app_holds_already_resolves_it_without_a_change(contact, system_user):
    found = _differs(contact, remote={"opted_out": [], "categories": []})

    services.accept_external_values(discrepancy_id=found.pk, actor=system_user, note="Fine.")

    found.refresh_from_db()
    assert found.resolution == "accepted"
    assert found.resolution_entry.action == AuditAction.DISCREPANCY_RESOLVED
    assert contact.version == 0


def test_dismissing_needs_a_note_and_changes_nothing_else(contact, system_user):
    found = factories.make_discrepancy(contact, kind="unknown_to_them")

    with pytest.raises(ChangeRefused, match="note"):
        services.dismiss(discrepancy_id=found.pk, actor=system_user, note="  ")
    services.dismiss(discrepancy_id=found.pk, actor=system_user, note="A test record.")

    found.refresh_from_db()
    assert found.resolution == "dismissed"
    assert "A test record." in found.resolution_entry.note
    assert current_state(contact).opted_out == {"email": False, "phone": False}


def test_a_resolved_discrepancy_cannot_be_resolved_again(contact, system_user):
    found = factories.make_discrepancy(contact)
    services.dismiss(discrepancy_id=found.pk, actor=system_user, note="Known.")

    with pytest.raises(ChangeRefused, match="resolved already"):
        services.push_app_values(discrepancy_id=found.pk, actor=system_user, note="Again.")
    assert AuditEntry.objects.filter(action=AuditAction.DISCREPANCY_RESOLVED).count() == 1


def test_only_differing_values_can_be_pushed_or_accepted(contact, system_user):
    found = factories.make_discrepancy(contact, kind="unknown_to_them")

    for resolve in (services.push_app_values, services.accept_external_values):
        with pytest.raises(ChangeRefused, match="dismiss this one"):
            resolve(discrepancy_id=found.pk, actor=system_user, note="x")
    assert Discrepancy.objects.get(pk=found.pk).is_open


# --- the pages ----------------------------------------------------------------------------------


def test_the_list_shows_open_discrepancies_and_filters_by_kind_and_system(
    system_client, contact, categories
):
    differs = factories.make_discrepancy(contact)
    missing = factories.make_discrepancy(factories.make_contact(), kind="unknown_to_them")

    page = system_client.get(reverse("preferences:discrepancies")).content.decode()
    assert f'data-discrepancy="{differs.pk}"' in page and f'data-discrepancy="{missing.pk}"' in page

    only = system_client.get(reverse("preferences:discrepancies"), {"kind": "unknown_to_them"})
    assert f'data-discrepancy="{differs.pk}"' not in only.content.decode()
    fragment = system_client.get(
        reverse("preferences:discrepancies"), {"system": "salesforce"}, headers=HTMX
    ).content.decode()
    assert fragment.lstrip().startswith('<section id="discrepancies">')
    assert "<html" not in fragment


def test_a_bad_filter_is_explained_not_a_server_error(system_client, contact):
    response = system_client.get(reverse("preferences:discrepancies"), {"kind": "nonsense"})
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()


def test_the_detail_compares_the_values_side_by_side(system_client, contact, categories):
    found = factories.make_discrepancy(
        contact,
        app={"opted_out": ["email"], "categories": []},
        remote={"opted_out": [], "categories": ["newsletter"]},
    )

    page = system_client.get(reverse("preferences:discrepancy", args=[found.pk])).content.decode()

    assert (
        '<tr class="differs"><th scope="row">Email opt-out</th><td>Yes</td><td>No</td></tr>' in page
    )
    assert "Consent: this clears an opt-out" in page


def test_resolving_through_the_page_redirects_and_shows_it_resolved(
    system_client, contact, categories
):
    found = factories.make_discrepancy(contact, kind="unknown_to_them")
    url = reverse("preferences:discrepancy_dismiss", args=[found.pk])

    refused = system_client.post(url, {"note": ""})
    assert refused.status_code == 422 and "Write a note" in refused.content.decode()
    done = system_client.post(url, {"note": "A test record."})

    assert done.status_code == 302 and done.url == reverse(
        "preferences:discrepancy", args=[found.pk]
    )
    page = system_client.get(done.url).content.decode()
    assert 'data-state="dismissed"' in page and "A test record." in page


def test_accepting_without_consent_through_the_page_says_what_is_missing(
    system_client, contact, specialist, categories
):
    _opt_out(contact, specialist, email=True)
    found = _differs(contact, remote={"opted_out": [], "categories": []})

    response = system_client.post(
        reverse("preferences:discrepancy_accept", args=[found.pk]), {"note": "Reload."}
    )

    assert response.status_code == 422
    assert "Required to opt the contact back in." in response.content.decode()
    assert current_state(contact).opted_out["email"] is True


def test_the_contact_page_shows_an_open_discrepancy(
    specialist_client, system_client, contact, categories
):
    found = factories.make_discrepancy(contact)
    url = reverse("preferences:contact", args=[contact.pk])

    for_specialist = specialist_client.get(url).content.decode()
    for_system_team = system_client.get(url).content.decode()

    assert "Values differ in Salesforce, since" in for_specialist
    assert reverse("preferences:discrepancy", args=[found.pk]) not in for_specialist
    assert reverse("preferences:discrepancy", args=[found.pk]) in for_system_team
    found.resolved_at = timezone.now()
    found.save()
    assert "Values differ in Salesforce" not in specialist_client.get(url).content.decode()


def test_an_ascend_correction_is_not_judged_again_until_the_file_has_gone(
    contact, specialist, system_user, settings, tmp_path, system_client
):
    from integrations import reconcile
    from tests.integrations.test_reconcile import write_ascend_file

    settings.ASCEND_DESTINATION = str(tmp_path / "dropbox")
    settings.ASCEND_STAGING_DIR = str(tmp_path / "staging")
    (tmp_path / "dropbox").mkdir()
    _opt_out(contact, specialist, email=True)
    ascend.export()
    write_ascend_file(tmp_path / "dropbox", [contact], {}, day="20261201")  # Ascend lost it
    reconcile.run(["ascend"])
    found = Discrepancy.objects.get(system="ascend")

    found = services.push_app_values(discrepancy_id=found.pk, actor=system_user, note="Reload.")
    (before_the_file,) = reconcile.run(["ascend"])

    assert before_the_file.skipped == 1 and not Discrepancy.objects.open().exists()
    ascend.export()
    assert ContactSync.objects.get(contact=contact, target="ascend").status == "synced"
    # The log and the contact page show the correction (its snapshots hold opt-outs only).
    for url in (
        reverse("audit:log"),
        reverse("audit:entry", args=[found.resolution_entry_id]),
        reverse("preferences:contact", args=[contact.pk]),
    ):
        assert system_client.get(url).status_code == 200, url


def test_a_shared_email_shows_on_each_contacts_page(specialist_client, categories):
    from integrations import reconcile

    twins = [factories.make_contact(email="family@example.edu") for _ in range(2)]
    reconcile.run(["app"])

    for twin in twins:
        page = specialist_client.get(reverse("preferences:contact", args=[twin.pk]))
        text = html.unescape(page.content.decode())
        assert "Email shared by several contacts in The app's own data" in text
