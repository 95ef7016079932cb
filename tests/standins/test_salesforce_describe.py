"""``GET sobjects/<type>/describe`` answers the org's schema in the REST API's shape ("sObject
Describe"), and a test can change that schema per object: leave a field out, make an External
ID an ordinary field, or make a field read-only for the integration user; the API then
behaves as a real org so configured does. Over real HTTPS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from standins.salesforce import SalesforceStandIn, SalesforceStandInClient, running_standin
from tests.standins.salesforce_api import API, api, bulk_job, error_code, query

PROPERTIES = {
    "name",
    "label",
    "type",
    "updateable",
    "createable",
    "externalId",
    "unique",
    "idLookup",
    "nillable",
}


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def _describe(server: SalesforceStandIn, object_name: str) -> dict:
    response = api(server).get(f"{server.url}{API}/sobjects/{object_name}/describe")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _fields(server: SalesforceStandIn, object_name: str) -> dict[str, dict]:
    return {field["name"]: field for field in _describe(server, object_name)["fields"]}


@pytest.mark.parametrize(
    ("object_name", "prefix"),
    [("Contact", "003"), ("Lead", "00Q"), ("Task", "00T"), ("Account", "001")],
)
def test_each_object_is_described_in_the_documented_shape(standin, object_name, prefix):
    described = _describe(standin, object_name)

    assert described["name"] == object_name
    assert described["keyPrefix"] == prefix
    assert described["urls"]["describe"] == f"{API}/sobjects/{object_name}/describe"
    assert all(set(field) >= PROPERTIES for field in described["fields"])
    fields = {field["name"]: field for field in described["fields"]}
    assert fields["Id"]["type"] == "id" and fields["Id"]["updateable"] is False
    assert fields["SystemModstamp"]["type"] == "datetime"
    assert fields["IsDeleted"]["createable"] is False


def test_the_contact_fields_the_app_writes_are_described(standin):
    fields = _fields(standin, "Contact")

    assert {k: fields["HasOptedOutOfEmail"][k] for k in PROPERTIES} == {
        "name": "HasOptedOutOfEmail",
        "label": "Email Opt Out",
        "type": "boolean",
        "updateable": True,
        "createable": True,
        "externalId": False,
        "unique": False,
        "idLookup": False,
        "nillable": False,
    }
    assert fields["DoNotCall"]["type"] == "boolean"
    assert fields["Preference_Version__c"]["type"] == "double"
    assert fields["Preference_Version__c"]["custom"] is True
    assert (fields["Ascend_Id__c"]["externalId"], fields["Ascend_Id__c"]["unique"]) == (True, True)
    assert fields["Newsletter__c"]["type"] == "boolean"
    assert fields["Email"]["idLookup"] is True
    assert fields["LastModifiedDate"]["updateable"] is False


def test_the_task_external_id_is_described_as_one(standin):
    field = _fields(standin, "Task")["Preference_Change_Id__c"]

    assert (field["externalId"], field["unique"], field["idLookup"]) == (True, True, True)
    assert field["type"] == "string"


def test_an_object_the_org_lacks_is_not_found(standin):
    response = api(standin).get(f"{standin.url}{API}/sobjects/Opportunity/describe")

    assert (response.status_code, error_code(response)) == (404, "NOT_FOUND")


# --- changing the schema ----------------------------------------------------------------------


def test_a_field_left_out_is_gone_from_describe_writes_and_queries():
    with running_standin(schema={"Contact": {"Preference_Version__c": None}}) as server:
        session = api(server)
        contact_id = server.add_contact(LastName="Okafor")
        described = _fields(server, "Contact")
        write = session.patch(
            f"{server.url}{API}/sobjects/Contact/{contact_id}", json={"Preference_Version__c": 3}
        )
        rest = query(session, server, "SELECT Preference_Version__c FROM Contact")
        bulk = bulk_job(session, server, "SELECT Id, Preference_Version__c FROM Contact")

    assert "Preference_Version__c" not in described
    assert (write.status_code, error_code(write)) == (400, "INVALID_FIELD")
    assert error_code(rest) == "INVALID_FIELD"
    assert error_code(bulk) == "INVALID_FIELD"


def test_a_field_made_read_only_for_the_integration_user_refuses_writes(standin):
    contact_id = standin.add_contact()
    standin.set_field("Contact", "DoNotCall", updateable=False)
    session = api(standin)

    described = _fields(standin, "Contact")["DoNotCall"]
    single = session.patch(
        f"{standin.url}{API}/sobjects/Contact/{contact_id}", json={"DoNotCall": True}
    )
    collection = session.patch(
        f"{standin.url}{API}/composite/sobjects",
        json={"records": [{"attributes": {"type": "Contact"}, "id": contact_id, "DoNotCall": 1}]},
    ).json()

    assert described["updateable"] is False
    assert single.status_code == 400
    assert single.json()[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert single.json()[0]["message"].startswith("Unable to create/update fields: DoNotCall.")
    assert collection[0]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert collection[0]["errors"][0]["fields"] == ["DoNotCall"]
    assert standin.contact(contact_id)["DoNotCall"] is False
    assert query(session, standin, "SELECT DoNotCall FROM Contact").status_code == 200


def test_a_field_added_to_a_closed_object_can_be_written(standin):
    lead_id = standin.add_lead(LastName="Okafor", Company="Alumni")
    standin.set_field("Lead", "Preference_Version__c", type="double")

    response = api(standin).patch(
        f"{standin.url}{API}/sobjects/Lead/{lead_id}", json={"Preference_Version__c": 2}
    )

    assert response.status_code == 204
    assert _fields(standin, "Lead")["Preference_Version__c"]["custom"] is True


def test_a_field_property_that_does_not_exist_is_refused(standin):
    with pytest.raises(TypeError, match="not a field property"):
        standin.set_field("Contact", "DoNotCall", writable=False)


def test_the_schema_is_changed_over_the_control_api_and_kept_across_a_reset(standin):
    remote = SalesforceStandInClient(
        standin.url, standin.ca_path, standin.client_secret, standin.client_id
    )
    remote.set_field("Task", "Preference_Change_Id__c", externalId=False)
    remote.remove_field("Contact", "Ascend_Id__c")
    remote.reset()

    task_field = {f["name"]: f for f in remote.describe("Task")["fields"]}
    contact_fields = {f["name"] for f in remote.describe("Contact")["fields"]}
    remote.close()

    assert task_field["Preference_Change_Id__c"]["externalId"] is False
    assert task_field["Preference_Change_Id__c"]["idLookup"] is False
    assert "Ascend_Id__c" not in contact_fields
