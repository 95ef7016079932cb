"""Person accounts, as "Person Account Record Types" (SOAP API Developer Guide) describes
them, over real HTTPS: an Account with ``IsPersonAccount`` and the Person fields, whose
person contact (``PersonContactId``) shares its name, email and opt-outs. In an org without
person accounts those fields do not exist: asking for them is INVALID_FIELD."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from standins.salesforce import SalesforceStandIn, SalesforceStandInClient, running_standin
from tests.standins.salesforce_api import API, api, bulk_job, bulk_rows, error_code, query, records

PERSON_FIELDS = (
    "Id, IsPersonAccount, FirstName, LastName, PersonEmail, PersonHasOptedOutOfEmail, "
    "PersonDoNotCall, PersonContactId"
)


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin(person_accounts=True) as server:
        yield server


def _person(server: SalesforceStandIn, **fields: object) -> str:
    return server.add_person_account(
        **{"FirstName": "Ada", "LastName": "Okafor", "PersonEmail": "ada@example.org", **fields}
    )


# --- an org without person accounts -----------------------------------------------------------


def test_without_person_accounts_the_person_fields_do_not_exist():
    with running_standin() as server:
        session = api(server)
        account_id = server.add_account(Name="Alumni Association")
        rest = query(session, server, "SELECT Id, IsPersonAccount FROM Account")
        bulk = bulk_job(session, server, "SELECT Id, PersonEmail FROM Account")
        write = session.patch(
            f"{server.url}{API}/sobjects/Account/{account_id}", json={"PersonDoNotCall": True}
        )
        on_contact = query(session, server, "SELECT Id, IsPersonAccount FROM Contact")
        described = {f["name"] for f in server.describe("Account")["fields"]}
        business = records(session, server, "SELECT Id, Name FROM Account")

    assert rest.status_code == 400
    assert rest.json() == [
        {
            "message": "No such column 'IsPersonAccount' on entity 'Account'",
            "errorCode": "INVALID_FIELD",
        }
    ]
    assert (bulk.status_code, error_code(bulk)) == (400, "INVALID_FIELD")
    assert error_code(write) == "INVALID_FIELD"
    assert error_code(on_contact) == "INVALID_FIELD"
    assert "IsPersonAccount" not in described and "PersonContactId" not in described
    assert [(r["Id"], r["Name"]) for r in business] == [(account_id, "Alumni Association")]


def test_adding_a_person_account_needs_them_enabled():
    with running_standin() as server, pytest.raises(ValueError, match="not enabled"):
        server.add_person_account(LastName="Okafor")


# --- an org with them -------------------------------------------------------------------------


def test_a_person_account_has_a_person_contact(standin):
    account_id = _person(standin, PersonHasOptedOutOfEmail=True, Newsletter__pc=True)

    account = standin.account(account_id)
    contact = standin.contact(account["PersonContactId"])

    assert account_id.startswith("001")
    assert account["IsPersonAccount"] is True
    assert contact["IsPersonAccount"] is True and contact["AccountId"] == account_id
    assert (contact["FirstName"], contact["LastName"], contact["Email"]) == (
        "Ada",
        "Okafor",
        "ada@example.org",
    )
    assert contact["HasOptedOutOfEmail"] is True
    assert contact["Newsletter__c"] is True  # a custom contact field is __pc on the account


def test_person_accounts_are_queried_through_rest_and_bulk(standin):
    session = api(standin)
    person = _person(standin)
    business = standin.add_account(Name="Alumni Association")

    rest = records(session, standin, f"SELECT {PERSON_FIELDS}, Name FROM Account ORDER BY Name")
    bulk = bulk_rows(
        session, standin, f"SELECT {PERSON_FIELDS} FROM Account WHERE IsPersonAccount = true"
    )

    assert [(r["Id"], r["IsPersonAccount"], r["Name"]) for r in rest] == [
        (person, True, "Ada Okafor"),
        (business, False, "Alumni Association"),
    ]
    assert rest[0]["PersonContactId"] == standin.account(person)["PersonContactId"]
    assert [row["Id"] for row in bulk] == [person]
    assert bulk[0]["PersonEmail"] == "ada@example.org"
    assert bulk[0]["PersonHasOptedOutOfEmail"] == "false"


def test_updating_a_person_account_updates_its_person_contact_under_one_stamp(standin):
    account_id = _person(standin)
    contact_id = standin.account(account_id)["PersonContactId"]

    response = api(standin).patch(
        f"{standin.url}{API}/sobjects/Account/{account_id}",
        json={"PersonHasOptedOutOfEmail": True, "PersonDoNotCall": True, "Giving__pc": True},
    )

    assert response.status_code == 204
    account, contact = standin.account(account_id), standin.contact(contact_id)
    assert (account["PersonHasOptedOutOfEmail"], account["PersonDoNotCall"]) == (True, True)
    assert (contact["HasOptedOutOfEmail"], contact["DoNotCall"]) == (True, True)
    assert contact["Giving__c"] is True
    assert account["SystemModstamp"] == contact["SystemModstamp"]


def test_a_collection_updates_person_accounts_by_their_account_id(standin):
    first, second = _person(standin), _person(standin, FirstName="Bob")

    results = (
        api(standin)
        .patch(
            f"{standin.url}{API}/composite/sobjects",
            json={
                "records": [
                    {"attributes": {"type": "Account"}, "id": first, "PersonDoNotCall": True},
                    {"attributes": {"type": "Account"}, "id": second, "PersonDoNotCall": True},
                ]
            },
        )
        .json()
    )

    assert [r["success"] for r in results] == [True, True]
    contacts = [standin.contact(standin.account(i)["PersonContactId"]) for i in (first, second)]
    assert [c["DoNotCall"] for c in contacts] == [True, True]


def test_a_person_contact_updated_as_a_contact_shows_on_its_account(standin):
    account_id = _person(standin)
    contact_id = standin.account(account_id)["PersonContactId"]

    api(standin).patch(
        f"{standin.url}{API}/sobjects/Contact/{contact_id}", json={"HasOptedOutOfEmail": True}
    )

    assert standin.account(account_id)["PersonHasOptedOutOfEmail"] is True


def test_a_business_account_does_not_take_person_fields(standin):
    account_id = standin.add_account(Name="Alumni Association")

    response = api(standin).patch(
        f"{standin.url}{API}/sobjects/Account/{account_id}", json={"PersonDoNotCall": True}
    )

    assert response.status_code == 400
    assert error_code(response) == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_person_accounts_are_switched_on_over_the_control_api():
    with running_standin() as server:
        remote = SalesforceStandInClient(
            server.url, server.ca_path, server.client_secret, server.client_id
        )
        before = query(api(server), server, "SELECT IsPersonAccount FROM Account")
        remote.set_person_accounts(True)
        account_id = remote.add_person_account(LastName="Okafor", PersonDoNotCall=True)
        after = records(api(server), server, "SELECT Id, IsPersonAccount FROM Account")
        state = remote.state(records=False)
        account = remote.account(account_id)
        remote.close()

    assert error_code(before) == "INVALID_FIELD"
    assert after[0]["IsPersonAccount"] is True
    assert state["person_accounts"] is True and state["account_count"] == 1
    assert account["PersonDoNotCall"] is True


def test_a_person_account_has_its_contacts_custom_fields_as_pc_fields(standin):
    fields = {f["name"]: f for f in standin.describe("Account")["fields"]}

    assert {"Newsletter__pc", "Preference_Version__pc", "Ascend_Id__pc"} <= set(fields)
    assert fields["Newsletter__pc"]["type"] == "boolean"
    assert fields["PersonContactId"]["updateable"] is False
    assert fields["IsPersonAccount"]["type"] == "boolean"
