"""The Tooling API lists the org's validation rules as its "ValidationRule" page documents
them, over real HTTPS: the README's ``Preference_Version_Not_Older`` appears when it is
installed, with its formula ``PRIORVALUE(Preference_Version__c) > Preference_Version__c`` in
its ``Metadata``, which the API answers for one record at a time only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from standins.salesforce import (
    VERSION_RULE_FORMULA,
    VERSION_RULE_ID,
    VERSION_RULE_MESSAGE,
    SalesforceStandIn,
    SalesforceStandInClient,
    running_standin,
)
from tests.standins.salesforce_api import API, api, error_code

RULES = (
    "SELECT Id, ValidationName, Active, ErrorMessage, ErrorDisplayField FROM ValidationRule "
    "WHERE EntityDefinition.QualifiedApiName = 'Contact'"
)


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def _tooling(server: SalesforceStandIn, soql: str):
    return api(server).get(f"{server.url}{API}/tooling/query/", params={"q": soql})


def test_the_installed_rule_is_listed_for_contact(standin):
    response = _tooling(standin, RULES)

    assert response.status_code == 200
    body = response.json()
    assert (body["size"], body["totalSize"], body["done"]) == (1, 1, True)
    assert body["entityTypeName"] == "ValidationRule"
    assert body["records"] == [
        {
            "attributes": {
                "type": "ValidationRule",
                "url": f"{API}/tooling/sobjects/ValidationRule/{VERSION_RULE_ID}",
            },
            "Id": VERSION_RULE_ID,
            "ValidationName": "Preference_Version_Not_Older",
            "Active": True,
            "ErrorMessage": VERSION_RULE_MESSAGE,
            "ErrorDisplayField": "Preference_Version__c",
        }
    ]
    assert VERSION_RULE_FORMULA == "PRIORVALUE(Preference_Version__c) > Preference_Version__c"
    assert standin.api_calls == 1  # a tooling query is an API call


def test_the_rules_metadata_carries_its_formula_one_record_at_a_time(standin):
    by_query = _tooling(
        standin,
        "SELECT Id, Metadata, FullName FROM ValidationRule "
        "WHERE ValidationName = 'Preference_Version_Not_Older' "
        "AND EntityDefinition.QualifiedApiName = 'Contact'",
    ).json()["records"][0]
    by_id = (
        api(standin)
        .get(f"{standin.url}{API}/tooling/sobjects/ValidationRule/{VERSION_RULE_ID}")
        .json()
    )

    for record in (by_query, by_id):
        metadata = record["Metadata"]
        assert metadata["errorConditionFormula"] == VERSION_RULE_FORMULA
        assert metadata["errorDisplayField"] == "Preference_Version__c"
        assert metadata["errorMessage"] == VERSION_RULE_MESSAGE
        assert metadata["active"] is True
        assert record["FullName"] == "Contact.Preference_Version_Not_Older"
    assert by_id["EntityDefinitionId"] == "Contact"


def test_the_set_up_installs_the_rule_on_lead_too(standin):
    listed = _tooling(
        standin,
        "SELECT ValidationName, Active, EntityDefinition.QualifiedApiName FROM ValidationRule "
        "WHERE ValidationName = 'Preference_Version_Not_Older'",
    ).json()["records"]

    assert sorted(r["EntityDefinition"]["QualifiedApiName"] for r in listed) == [
        "Contact",
        "Lead",
    ]


def test_metadata_for_more_than_one_record_is_refused(standin):
    standin.add_validation_rule(
        "Contact", "Email_Required", "ISBLANK(Email)", "Email is required", active=False
    )

    listed = _tooling(standin, RULES).json()["records"]
    refused = _tooling(
        standin,
        "SELECT Id, Metadata FROM ValidationRule "
        "WHERE EntityDefinition.QualifiedApiName = 'Contact'",
    )

    assert [(r["ValidationName"], r["Active"]) for r in listed] == [
        ("Preference_Version_Not_Older", True),
        ("Email_Required", False),
    ]
    assert refused.status_code == 400
    assert error_code(refused) == "MALFORMED_QUERY"
    assert "no more than one row" in refused.json()[0]["message"]


def test_without_the_rule_nothing_is_listed(standin):
    standin.set_version_rule(False)

    assert _tooling(standin, RULES).json()["records"] == []
    response = api(standin).get(
        f"{standin.url}{API}/tooling/sobjects/ValidationRule/{VERSION_RULE_ID}"
    )
    assert response.status_code == 404


def test_an_org_without_the_version_field_has_no_rule_on_it():
    with running_standin(schema={"Contact": {"Preference_Version__c": None}}) as server:
        records = _tooling(server, RULES).json()["records"]

    assert records == []


def test_an_inactive_rule_is_listed_inactive_and_refuses_nothing(standin):
    contact_id = standin.add_contact(Preference_Version__c=5)
    standin.set_version_rule(True, active=False)

    (listed,) = _tooling(standin, RULES).json()["records"]
    lowered = api(standin).patch(
        f"{standin.url}{API}/sobjects/Contact/{contact_id}", json={"Preference_Version__c": 2}
    )

    assert listed["Active"] is False
    assert lowered.status_code == 204


def test_the_entity_definition_is_selectable_and_other_objects_are_not(standin):
    selected = _tooling(
        standin, "SELECT ValidationName, EntityDefinition.QualifiedApiName FROM ValidationRule"
    ).json()["records"][0]
    unknown = _tooling(standin, "SELECT Id FROM ApexClass")

    assert selected["EntityDefinition"]["QualifiedApiName"] == "Contact"
    assert selected["EntityDefinition"]["attributes"]["type"] == "EntityDefinition"
    assert error_code(unknown) == "INVALID_TYPE"


def test_rules_are_listed_and_switched_over_the_control_api(standin):
    remote = SalesforceStandInClient(
        standin.url, standin.ca_path, standin.client_secret, standin.client_id
    )
    rule_id = remote.add_validation_rule("Contact", "Phone_Format", "NOT(ISBLANK(Phone))", "No")
    remote.set_version_rule(True, active=False)
    state = remote.state(records=False)
    remote.close()

    listed = {r["Id"]: r["Active"] for r in _tooling(standin, RULES).json()["records"]}
    assert listed == {VERSION_RULE_ID: False, rule_id: True}
    assert (state["version_rule"], state["version_rule_active"]) == (True, False)
