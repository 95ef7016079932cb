"""Leads, beside contacts, as a real org holds them, over real HTTPS: read and updated one at
a time, through sObject Collections and composite, queried through REST and Bulk API 2.0,
and converted to a contact, after which the lead refuses updates with
CANNOT_UPDATE_CONVERTED_LEAD "cannot reference converted lead" (Salesforce Help,
"CANNOT_UPDATE_CONVERTED_LEAD"; "convertLead()", SOAP API Developer Guide)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from standins.salesforce import (
    ADMIN_USER_ID,
    API_USER_ID,
    SalesforceStandIn,
    SalesforceStandInClient,
    running_standin,
)
from tests.standins.salesforce_api import API, api, bulk_rows, error_code, next_second, records

FIELDS = (
    "Id, FirstName, LastName, Email, Phone, HasOptedOutOfEmail, DoNotCall, IsConverted, "
    "ConvertedContactId, IsDeleted, LastModifiedDate, SystemModstamp, LastModifiedById, "
    "Preference_Version__c"
)


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def _lead(server: SalesforceStandIn, **fields: object) -> str:
    return server.add_lead(
        **{"FirstName": "Ada", "LastName": "Okafor", "Company": "Alumni", **fields}
    )


def test_a_lead_has_a_lead_id_and_reads_back_over_rest(standin):
    lead_id = _lead(standin, Email="ada@example.org", Preference_Version__c=1)

    response = api(standin).get(f"{standin.url}{API}/sobjects/Lead/{lead_id}")

    assert lead_id.startswith("00Q") and len(lead_id) == 18
    assert response.status_code == 200
    body = response.json()
    assert body["attributes"] == {"type": "Lead", "url": f"{API}/sobjects/Lead/{lead_id}"}
    assert (body["Email"], body["Preference_Version__c"], body["IsConverted"]) == (
        "ada@example.org",
        1,
        False,
    )
    assert body["HasOptedOutOfEmail"] is False and body["DoNotCall"] is False
    assert body["CreatedById"] == ADMIN_USER_ID


def test_a_lead_is_updated_with_patch_and_stamped_by_the_api_user(standin):
    lead_id = _lead(standin)
    before = standin.lead(lead_id)["SystemModstamp"]
    next_second(before)  # else the update shares its whole-second stamp

    response = api(standin).patch(
        f"{standin.url}{API}/sobjects/Lead/{lead_id}",
        json={"HasOptedOutOfEmail": True, "Preference_Version__c": 2},
    )

    assert response.status_code == 204
    lead = standin.lead(lead_id)
    assert (lead["HasOptedOutOfEmail"], lead["Preference_Version__c"]) == (True, 2)
    assert lead["SystemModstamp"] > before
    assert lead["LastModifiedById"] == API_USER_ID


def test_a_lead_refuses_fields_it_does_not_have_and_ids_of_other_objects(standin):
    lead_id = _lead(standin)
    contact_id = standin.add_contact()
    session = api(standin)

    unknown = session.patch(f"{standin.url}{API}/sobjects/Lead/{lead_id}", json={"Foo__c": 1})
    read_only = session.patch(
        f"{standin.url}{API}/sobjects/Lead/{lead_id}", json={"IsConverted": True}
    )
    wrong_object = session.patch(
        f"{standin.url}{API}/sobjects/Lead/{contact_id}", json={"DoNotCall": True}
    )

    assert error_code(unknown) == "INVALID_FIELD"
    assert error_code(read_only) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert error_code(wrong_object) == "MALFORMED_ID"


def test_a_lead_is_not_loaded_with_a_field_lead_does_not_have(standin):
    # The email categories' checkboxes are Contact fields only in the documented set-up.
    with pytest.raises(ValueError, match="Newsletter__c"):
        standin.add_leads([{"LastName": "Okafor", "Company": "Alumni"}, {"Newsletter__c": True}])

    assert standin.leads() == {}  # the whole load failed
    assert "Newsletter__c" not in {f["name"] for f in standin.describe("Lead")["fields"]}


def test_collections_update_leads_and_contacts_in_one_call(standin):
    lead_id, contact_id = _lead(standin), standin.add_contact()

    results = (
        api(standin)
        .patch(
            f"{standin.url}{API}/composite/sobjects",
            json={
                "allOrNone": False,
                "records": [
                    {"attributes": {"type": "Lead"}, "id": lead_id, "DoNotCall": True},
                    {"attributes": {"type": "Contact"}, "id": contact_id, "DoNotCall": True},
                ],
            },
        )
        .json()
    )

    assert [r["success"] for r in results] == [True, True]
    assert standin.lead(lead_id)["DoNotCall"] is True
    assert standin.contact(contact_id)["DoNotCall"] is True


def test_leads_are_read_by_soql_and_by_a_bulk_job(standin):
    session = api(standin)
    kept = _lead(standin, Email="ada@example.org", Preference_Version__c=3)
    _lead(standin, LastName="Garcia")

    rest = records(session, standin, f"SELECT {FIELDS} FROM Lead WHERE Id = '{kept}'")
    bulk = bulk_rows(session, standin, f"SELECT {FIELDS} FROM Lead ORDER BY LastName")
    opted_out = records(session, standin, "SELECT Id FROM Lead WHERE HasOptedOutOfEmail = true")

    assert rest[0]["attributes"]["type"] == "Lead"
    assert (rest[0]["Email"], rest[0]["Preference_Version__c"], rest[0]["DoNotCall"]) == (
        "ada@example.org",
        3,
        False,
    )
    assert [row["LastName"] for row in bulk] == ["Garcia", "Okafor"]
    assert bulk[1]["Id"] == kept and bulk[1]["IsConverted"] == "false"
    assert bulk[1]["ConvertedContactId"] == ""
    assert opted_out == []


def test_composite_carries_lead_subrequests(standin):
    lead_id = _lead(standin)

    response = api(standin).post(
        f"{standin.url}{API}/composite",
        json={
            "compositeRequest": [
                {
                    "method": "PATCH",
                    "url": f"{API}/sobjects/Lead/{lead_id}",
                    "referenceId": "lead",
                    "body": {"DoNotCall": True},
                },
                {
                    "method": "GET",
                    "url": f"{API}/query?q=SELECT+Id,DoNotCall+FROM+Lead",
                    "referenceId": "read",
                },
            ]
        },
    )

    patched, read = response.json()["compositeResponse"]
    assert patched["httpStatusCode"] == 204
    assert read["body"]["records"][0]["DoNotCall"] is True


# --- conversion -------------------------------------------------------------------------------


def test_converting_a_lead_makes_a_contact_of_it_and_marks_the_lead(standin):
    lead_id = _lead(
        standin, Email="ada@example.org", HasOptedOutOfEmail=True, Preference_Version__c=4
    )

    contact_id = standin.convert_lead(lead_id)

    lead, contact = standin.lead(lead_id), standin.contact(contact_id)
    assert contact_id.startswith("003")
    assert lead["IsConverted"] is True
    assert lead["ConvertedContactId"] == contact_id
    assert lead["ConvertedDate"] == datetime.now(UTC).date().isoformat()
    assert (contact["FirstName"], contact["LastName"], contact["Email"]) == (
        "Ada",
        "Okafor",
        "ada@example.org",
    )
    assert contact["HasOptedOutOfEmail"] is True and contact["Preference_Version__c"] == 4
    assert "Company" not in contact
    assert lead["SystemModstamp"] == contact["SystemModstamp"]  # one conversion, one stamp


def test_converting_into_an_existing_contact_fills_only_its_empty_fields(standin):
    contact_id = standin.add_contact(LastName="Okafor", Email=None, Phone="+1 303 555 0100")
    lead_id = _lead(standin, Email="ada@example.org", Phone="+1 720 555 0199")

    assert standin.convert_lead(lead_id, contact_id) == contact_id

    contact = standin.contact(contact_id)
    assert contact["Email"] == "ada@example.org"
    assert contact["Phone"] == "+1 303 555 0100"
    assert standin.lead(lead_id)["ConvertedContactId"] == contact_id


def test_a_converted_lead_can_no_longer_be_updated(standin):
    lead_id = _lead(standin)
    standin.convert_lead(lead_id)
    session = api(standin)

    single = session.patch(f"{standin.url}{API}/sobjects/Lead/{lead_id}", json={"DoNotCall": True})
    collection = session.patch(
        f"{standin.url}{API}/composite/sobjects",
        json={"records": [{"attributes": {"type": "Lead"}, "id": lead_id, "DoNotCall": True}]},
    ).json()
    read = session.get(f"{standin.url}{API}/sobjects/Lead/{lead_id}")

    assert single.status_code == 400
    assert single.json() == [
        {"message": "cannot reference converted lead", "errorCode": "CANNOT_UPDATE_CONVERTED_LEAD"}
    ]
    assert collection[0]["errors"] == [
        {
            "statusCode": "CANNOT_UPDATE_CONVERTED_LEAD",
            "message": "cannot reference converted lead",
            "fields": [],
        }
    ]
    assert standin.lead(lead_id)["DoNotCall"] is False
    assert read.status_code == 200  # it can still be read, ConvertedContactId and all


def test_converted_leads_are_found_by_soql(standin):
    session = api(standin)
    converted = _lead(standin)
    _lead(standin, LastName="Garcia")
    contact_id = standin.convert_lead(converted)

    found = records(
        session, standin, "SELECT Id, ConvertedContactId FROM Lead WHERE IsConverted = true"
    )

    assert found == [
        {
            "attributes": {"type": "Lead", "url": f"{API}/sobjects/Lead/{converted}"},
            "Id": converted,
            "ConvertedContactId": contact_id,
        }
    ]


def test_a_lead_is_converted_once(standin):
    lead_id = _lead(standin)
    standin.convert_lead(lead_id)

    with pytest.raises(ValueError, match="converted already"):
        standin.convert_lead(lead_id)


def test_leads_are_added_and_converted_over_the_control_api(standin):
    remote = SalesforceStandInClient(
        standin.url, standin.ca_path, standin.client_secret, standin.client_id
    )
    lead_id = remote.add_lead(LastName="Okafor", Company="Alumni", Email="ada@example.org")
    contact_id = remote.convert_lead(lead_id, Phone="+1 303 555 0100")

    assert remote.lead(lead_id)["ConvertedContactId"] == contact_id
    assert remote.contact(contact_id)["Phone"] == "+1 303 555 0100"
    assert list(remote.leads()) == [lead_id]
    assert remote.lead("00QSb0000000ZZZ") is None
    remote.close()


def test_leads_accounts_and_tasks_survive_a_restart_in_the_state_file(tmp_path):
    state = tmp_path / "salesforce.json"
    options = {"state_file": state, "cert_dir": tmp_path / "certs", "person_accounts": True}
    with running_standin(**options) as server:
        lead_id = _lead(server)
        converted = server.convert_lead(lead_id)
        account_id = server.add_person_account(LastName="Garcia")
        session = api(server)
        task_id = session.post(
            f"{server.url}{API}/sobjects/Task",
            json={"Preference_Change_Id__c": "PD-1", "WhoId": converted},
        ).json()["id"]
    with running_standin(**options) as server:
        lead, account, task = server.lead(lead_id), server.account(account_id), server.task("PD-1")
        another = _lead(server)

    assert lead["ConvertedContactId"] == converted
    assert account["IsPersonAccount"] is True
    assert task["Id"] == task_id and task["WhoId"] == converted
    assert another != lead_id  # Ids go on where they were


def test_a_state_file_of_the_previous_format_still_loads(tmp_path):
    state = tmp_path / "salesforce.json"
    contact_id, task_id = "003Sb0000000001IAA", "00TSb0000000001IAA"
    state.write_text(
        json.dumps(
            {
                "format": 1,
                "contacts": [
                    {
                        "Id": contact_id,
                        "IsDeleted": False,
                        "LastName": "Okafor",
                        "SystemModstamp": "2026-03-02T10:00:00.000+0000",
                        "LastModifiedDate": "2026-03-02T10:00:00.000+0000",
                        "CreatedDate": "2026-03-02T10:00:00.000+0000",
                    }
                ],
                "tasks": [{"Id": task_id, "Preference_Change_Id__c": "PD-1", "WhoId": contact_id}],
                "serials": {"003": 1, "00T": 1},
                "last_stamp": "2026-03-02T10:00:00.000+0000",
            }
        )
    )

    with running_standin(state_file=state, cert_dir=tmp_path / "certs") as server:
        contact, task = server.contact(contact_id), server.task("PD-1")

    assert contact["LastName"] == "Okafor"
    assert task["Id"] == task_id
