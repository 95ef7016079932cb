"""manage.py salesforce_preflight against the Salesforce stand-in: a complete org passes
every check and exits 0; each thing the app needs that is missing is named, in staff words,
with its set-up step, and the command exits 1 (README, "Salesforce set-up")."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from integrations.base import PermanentError
from integrations.salesforce import preflight
from integrations.salesforce.client import SalesforceClient
from standins.salesforce import (
    SalesforceStandIn,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def org(standin: SalesforceStandIn, categories: Any) -> SalesforceStandIn:
    """A complete org: the stand-in as the README's set-up leaves an org."""
    return standin


def run_command() -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("salesforce_preflight", stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def failed(report: preflight.Report) -> dict[str, preflight.Check]:
    """The failed checks by their field's API name (or subject)."""
    found = {}
    for check in report.missing:
        name = check.subject.split("(", 1)[-1].split(")", 1)[0]
        found[name] = check
    return found


def test_a_complete_org_passes_every_check_and_exits_0(org):
    status, output = run_command()

    assert status == 0, output
    assert "✗" not in output
    report = preflight.run()
    assert report.ready and not report.missing
    # Every object and what is needed on it is checked, not skipped.
    assert set(report.groups()) == {"Sign-in", "Contact", "Lead", "Task (notes)"}
    subjects = "\n".join(check.subject for check in report.checks)
    for name in (
        "HasOptedOutOfEmail",
        "DoNotCall",
        "Newsletter__c",
        "Research_News__c",
        "Preference_Version__c",
        "Ascend_Id__c",
        "ConvertedContactId",
        "Preference_Change_Id__c",
        "WhoId",
    ):
        assert f"({name})" in subjects
    rules = [c.group for c in report.checks if preflight.VERSION_RULE_NAME in c.subject]
    assert rules == ["Contact", "Lead"]
    assert output.rstrip().splitlines()[-1].startswith("Ready: ")
    assert "SALESFORCE_TASK_MATCH=upsert" in output


def test_a_missing_field_external_id_and_rule_are_all_named_with_their_steps(org):
    org.remove_field("Contact", "Newsletter__c")
    org.set_field("Task", "Preference_Change_Id__c", externalId=False)
    org.set_version_rule(False)

    status, output = run_command()

    assert status == 1
    assert output.rstrip().splitlines()[-1] == "4 things to set up."
    assert (
        "✗ Alumni newsletter (Newsletter__c), an email category's checkbox, changed by the app: "
        "missing" in output
    )
    assert (
        "Setup > Object Manager > Contact > Fields & Relationships > New > Checkbox, Default "
        'Value Unchecked: Field Label "Alumni newsletter", Field Name "Newsletter" '
        "(API name Newsletter__c)"
    ) in output
    assert "(Preference_Change_Id__c), each note's change id: not an External ID" in output
    assert "tick External ID (and Unique)" in output
    assert "set SALESFORCE_TASK_MATCH=query" in output
    assert "✗ Validation rule Preference_Version_Not_Older" in output
    assert (
        "Setup > Object Manager > Contact > Validation Rules > New: Rule Name "
        "Preference_Version_Not_Older, tick Active, Error Condition Formula "
        "PRIORVALUE(Preference_Version__c) > Preference_Version__c"
    ) in output

    missing = preflight.run().missing
    assert [(c.group, c.kind) for c in missing] == [
        ("Contact", "field"),
        ("Contact", "validation rule"),
        ("Lead", "validation rule"),
        ("Task (notes)", "external ID"),
    ]


def test_an_inactive_rule_is_reported(org):
    org.set_version_rule(True, active=False)

    report = preflight.run()

    [check, on_lead] = report.missing
    assert (check.group, check.kind) == ("Contact", "validation rule")
    assert (on_lead.group, on_lead.kind) == ("Lead", "validation rule")
    assert check.problem == on_lead.problem == "installed but not active"
    assert check.step == (
        "Setup > Object Manager > Contact > Validation Rules > Preference_Version_Not_Older > "
        "Edit: tick Active; Save."
    )


def test_the_rule_is_needed_on_lead_when_leads_are_on(org, settings):
    # An org set up for Contacts only: no version field on Lead, so no rule there either.
    org.remove_field("Lead", "Preference_Version__c")

    missing = preflight.run().missing
    assert [(c.group, c.kind) for c in missing] == [("Lead", "field"), ("Lead", "validation rule")]

    settings.SALESFORCE_LEADS = False
    report = preflight.run()
    assert report.ready
    assert "Lead" not in report.groups()


def test_no_rule_or_version_field_is_needed_without_a_version_field(org, settings):
    org.set_version_rule(False)
    org.remove_field("Contact", "Preference_Version__c")
    settings.SALESFORCE_VERSION_FIELD = ""

    report = preflight.run()

    assert report.ready, preflight.render(report)
    assert not any("Preference_Version" in check.subject for check in report.checks)


def test_a_field_without_edit_access_is_a_permission(org):
    org.set_field("Contact", "DoNotCall", updateable=False)
    org.set_field("Contact", "Events__c", updateable=False)

    report = preflight.run()

    found = failed(report)
    assert set(found) == {"DoNotCall", "Events__c"}
    for name, label in (("DoNotCall", "Do Not Call"), ("Events__c", "Events")):
        check = found[name]
        assert check.kind == "permission"
        assert check.problem == "read-only for the integration user (field-level security)"
        assert check.step == (
            "Setup > Permission Sets > (the integration user's permission set) > Object "
            "Settings > Contacts > Edit: under Field Permissions tick Read Access and Edit "
            f"Access for {label} ({name}); Save."
        )


def test_a_hidden_standard_field_is_a_permission_and_a_wrong_type_is_named(org):
    org.remove_field("Lead", "Email")  # what describe shows when field-level security hides it
    org.set_field("Contact", "Preference_Version__c", type="string")

    found = failed(preflight.run())

    assert set(found) == {"Email", "Preference_Version__c"}
    assert found["Email"].kind == "permission"
    assert found["Email"].group == "Lead"
    assert (
        "Object Settings > Leads > Edit: under Field Permissions tick Read Access for Email (Email)"
        in (found["Email"].step)
    )
    assert found["Preference_Version__c"].kind == "field"
    assert found["Preference_Version__c"].problem == (
        "it is a Text field; the app needs a Number field"
    )


def test_query_mode_takes_a_task_field_that_is_not_an_external_id(org, settings):
    org.set_field("Task", "Preference_Change_Id__c", externalId=False)
    settings.SALESFORCE_TASK_MATCH = "query"

    status, output = run_command()

    assert status == 0, output
    assert "SALESFORCE_TASK_MATCH=query" in output


def test_query_mode_needs_a_field_it_can_search_on(org, settings):
    settings.SALESFORCE_TASK_MATCH = "query"
    org.set_field("Task", "Preference_Change_Id__c", externalId=False)
    original = SalesforceClient.describe

    def describe(self: SalesforceClient, object_name: str) -> dict[str, Any]:
        described = original(self, object_name)
        for entry in described["fields"]:
            if entry["name"] == "Preference_Change_Id__c":
                entry["filterable"] = False
        return described

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SalesforceClient, "describe", describe)
        found = failed(preflight.run())

    assert set(found) == {"Preference_Change_Id__c"}
    assert found["Preference_Change_Id__c"].problem.startswith("Salesforce cannot search on it")


def test_a_missing_task_field_is_named(org):
    org.remove_field("Task", "Preference_Change_Id__c")

    [check] = preflight.run().missing

    assert (check.group, check.kind) == ("Task (notes)", "field")
    assert check.step.startswith(
        "Setup > Object Manager > Activity > Fields & Relationships > New > Text, Length 40, "
        'tick Unique and External ID: Field Label "Preference Change Id"'
    )


def test_object_permissions_come_from_describe(org, monkeypatch):
    original = SalesforceClient.describe

    def describe(self: SalesforceClient, object_name: str) -> dict[str, Any]:
        described = original(self, object_name)
        if object_name in ("Lead", "Task"):
            described["updateable"] = described["createable"] = False
        return described

    monkeypatch.setattr(SalesforceClient, "describe", describe)

    missing = preflight.run().missing

    assert [(c.group, c.subject, c.kind) for c in missing] == [
        ("Lead", "Leads can be read and changed", "permission"),
        ("Task (notes)", "Tasks can be created and changed", "permission"),
    ]
    assert missing[0].step.endswith(
        "Object Settings > Leads > Edit: under Object Permissions tick Read and Edit; Save."
    )
    assert "tick Edit Tasks" in missing[1].step


def test_validation_rules_the_user_cannot_read_are_a_permission(org, monkeypatch):
    def refuse(self: SalesforceClient, soql: str) -> list[dict[str, Any]]:
        raise PermanentError("INSUFFICIENT_ACCESS", "insufficient access rights", 403)

    monkeypatch.setattr(SalesforceClient, "tooling_query", refuse)

    missing = preflight.run().missing

    assert [(c.group, c.kind) for c in missing] == [
        ("Contact", "permission"),
        ("Lead", "permission"),
    ]
    assert "View Setup and Configuration" in missing[0].step


def test_person_accounts_are_checked_only_when_enabled(org, settings):
    org.set_person_accounts(True)
    assert "Person accounts (Account)" not in preflight.run().groups()

    settings.SALESFORCE_PERSON_ACCOUNTS = True
    report = preflight.run()
    assert report.ready, preflight.render(report)
    subjects = "\n".join(c.subject for c in report.groups()["Person accounts (Account)"])
    for name in (
        "IsPersonAccount",
        "PersonEmail",
        "PersonHasOptedOutOfEmail",
        "PersonDoNotCall",
        "PersonContactId",
        "Newsletter__pc",
        "Preference_Version__pc",
    ):
        assert f"({name})" in subjects
    assert "(IsPersonAccount)" in "\n".join(c.subject for c in report.groups()["Contact"])

    org.set_field("Account", "PersonDoNotCall", updateable=False)
    org.remove_field("Account", "Giving__pc")
    found = failed(preflight.run())
    assert set(found) == {"PersonDoNotCall", "Giving__pc"}
    assert found["PersonDoNotCall"].kind == "permission"
    # A person account's custom field is the Contact's.
    assert "Setup > Object Manager > Contact > Fields & Relationships > New > Checkbox" in (
        found["Giving__pc"].step
    )
    assert "(person accounts show it as Giving__pc)" in found["Giving__pc"].step


def test_person_accounts_on_for_an_org_without_them(org, settings):
    settings.SALESFORCE_PERSON_ACCOUNTS = True

    status, output = run_command()

    assert status == 1
    assert "✗ Person Accounts are turned on in the org" in output
    assert "Set SALESFORCE_PERSON_ACCOUNTS=false" in output


def test_a_refused_sign_in_is_a_clear_message_and_exit_1(org, settings):
    settings.SALESFORCE_CLIENT_SECRET = "not-the-secret"

    status, output = run_command()

    assert status == 1
    lines = output.rstrip().splitlines()
    assert lines[0] == "Sign-in"
    assert lines[1].startswith(f"  ✗ Sign in at {org.url} (client credentials flow): ")
    assert "Manage Consumer Details" in output
    assert lines[-1] == "Could not sign in to Salesforce, so nothing else was checked."


def test_missing_settings_are_a_sign_in_failure(settings, categories):
    settings.SALESFORCE_CLIENT_ID = ""
    settings.SALESFORCE_LOGIN_URL = "https://example.my.salesforce.com"

    [check] = preflight.run().checks

    assert (check.ok, check.kind) == (False, "sign-in")
    assert "SALESFORCE_CLIENT_ID is required" in check.problem
