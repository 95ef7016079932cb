"""The stand-in's org enforces the validation rule the README asks its admin to install
(``Preference_Version_Not_Older``: ``PRIORVALUE(Preference_Version__c) >
Preference_Version__c``), in every kind of update, over real HTTPS; and a test can run the
org without it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from standins.salesforce import (
    VERSION_FIELD,
    VERSION_RULE_MESSAGE,
    SalesforceStandIn,
    id18,
    running_standin,
    standin_process,
)

API = "/services/data/v60.0"
REFUSAL = {
    "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    "message": VERSION_RULE_MESSAGE,
    "fields": ["Preference_Version__c"],
}


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def _api(server: Any) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides session.verify
    session.verify = server.ca_path
    token = session.post(
        server.url + "/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
        },
    ).json()["access_token"]
    session.headers["Authorization"] = "Bearer " + token
    return session


@pytest.fixture
def api(standin: SalesforceStandIn) -> requests.Session:
    return _api(standin)


def _patch(api: requests.Session, server: Any, contact_id: str, **fields: Any) -> Any:
    return api.patch(f"{server.url}{API}/sobjects/Contact/{contact_id}", json=fields)


def _records(pairs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"attributes": {"type": "Contact"}, "id": i, **fields} for i, fields in pairs]


def _collection(
    api: requests.Session, server: Any, pairs: list[tuple[str, dict[str, Any]]], all_or_none: bool
) -> list[dict[str, Any]]:
    response = api.patch(
        f"{server.url}{API}/composite/sobjects",
        json={"allOrNone": all_or_none, "records": _records(pairs)},
    )
    assert response.status_code == 200, response.text
    return list(response.json())


def _version(server: Any, contact_id: str) -> Any:
    return server.contact(contact_id).get(VERSION_FIELD)


def test_the_rule_is_installed_by_default(standin):
    assert standin.version_rule is True
    assert standin.state(records=False)["version_rule"] is True


# --- a single update --------------------------------------------------------------------------


def test_a_patch_that_lowers_the_version_is_refused_as_the_rule_says(standin, api):
    contact_id = standin.add_contact(LastName="Okafor", Preference_Version__c=5)

    response = _patch(api, standin, contact_id, Preference_Version__c=4, HasOptedOutOfEmail=True)

    assert response.status_code == 400
    assert response.json() == [
        {
            "message": VERSION_RULE_MESSAGE,
            "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "fields": ["Preference_Version__c"],
        }
    ]
    contact = standin.contact(contact_id)
    assert contact[VERSION_FIELD] == 5
    assert contact["HasOptedOutOfEmail"] is False  # nothing of the refused update landed
    assert standin.api_calls == 1


@pytest.mark.parametrize(
    ("stored", "update", "kept"),
    [
        (5, {"Preference_Version__c": 5, "DoNotCall": True}, 5),  # equal
        (5, {"Preference_Version__c": 6}, 6),  # higher
        (5, {"Preference_Version__c": 5.5}, 5.5),  # a Number field takes decimals
        (5, {"DoNotCall": True}, 5),  # the field untouched: PRIORVALUE equals the value
        (None, {"Preference_Version__c": 1}, 1),  # blank before: never blocks
        (5, {"Preference_Version__c": None}, None),  # blank after: not "greater than" either
        ("7", {"Preference_Version__c": "9"}, "9"),  # numbers sent as text compare as numbers
    ],
    ids=["equal", "higher", "decimal", "untouched", "blank-before", "blank-after", "text"],
)
def test_a_patch_the_rule_allows_is_applied(standin, api, stored, update, kept):
    contact_id = standin.add_contact(LastName="Okafor", Preference_Version__c=stored)

    response = _patch(api, standin, contact_id, **update)

    assert response.status_code == 204, response.text
    assert _version(standin, contact_id) == kept


def test_the_rule_reads_the_field_named_in_any_case(standin, api):
    contact_id = standin.add_contact(Preference_Version__c=5)

    response = _patch(api, standin, contact_id, preference_version__c=2)

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert _version(standin, contact_id) == 5


def test_numbers_are_compared_as_numbers_not_as_text(standin, api):
    contact_id = standin.add_contact(Preference_Version__c=10)

    assert _patch(api, standin, contact_id, Preference_Version__c=9).status_code == 400
    assert _patch(api, standin, contact_id, Preference_Version__c=11).status_code == 204


def test_a_contact_created_by_its_first_update_is_never_refused():
    with running_standin(auto_create=True) as server:
        api = _api(server)
        contact_id = id18("003Sb00000000Ab")
        response = _patch(api, server, contact_id, Preference_Version__c=3)
        version = _version(server, contact_id)

    assert response.status_code == 204
    assert version == 3


# --- sObject Collections ----------------------------------------------------------------------


def test_a_collection_refuses_only_the_records_the_rule_refuses(standin, api):
    lower, equal, higher, untouched, blank = standin.add_contacts(
        [
            {"Preference_Version__c": 5},
            {"Preference_Version__c": 5},
            {"Preference_Version__c": 5},
            {"Preference_Version__c": 5},
            {"LastName": "Never pushed"},
        ]
    )

    results = _collection(
        api,
        standin,
        [
            (lower, {"Preference_Version__c": 4, "HasOptedOutOfEmail": True}),
            (equal, {"Preference_Version__c": 5, "HasOptedOutOfEmail": True}),
            (higher, {"Preference_Version__c": 6, "HasOptedOutOfEmail": True}),
            (untouched, {"HasOptedOutOfEmail": True}),
            (blank, {"Preference_Version__c": 1, "HasOptedOutOfEmail": True}),
        ],
        all_or_none=False,
    )

    assert results == [
        {"id": lower, "success": False, "errors": [REFUSAL]},
        {"id": equal, "success": True, "errors": []},
        {"id": higher, "success": True, "errors": []},
        {"id": untouched, "success": True, "errors": []},
        {"id": blank, "success": True, "errors": []},
    ]
    assert [_version(standin, i) for i in (lower, equal, higher, untouched, blank)] == [
        5,
        5,
        6,
        5,
        1,
    ]
    assert standin.contact(lower)["HasOptedOutOfEmail"] is False
    assert all(standin.contact(i)["HasOptedOutOfEmail"] for i in (equal, higher, untouched, blank))


def test_all_or_none_rolls_back_the_whole_collection_when_the_rule_refuses_one(standin, api):
    lower, higher = standin.add_contacts(
        [{"Preference_Version__c": 5}, {"Preference_Version__c": 5}]
    )

    results = _collection(
        api,
        standin,
        [(higher, {"Preference_Version__c": 6}), (lower, {"Preference_Version__c": 4})],
        all_or_none=True,
    )

    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"] == [REFUSAL]
    assert (_version(standin, higher), _version(standin, lower)) == (5, 5)


# --- composite --------------------------------------------------------------------------------


def _composite(api: requests.Session, server: Any, subrequests: list[Any], all_or_none: bool):
    response = api.post(
        f"{server.url}{API}/composite",
        json={"allOrNone": all_or_none, "compositeRequest": subrequests},
    )
    assert response.status_code == 200, response.text
    return {entry["referenceId"]: entry for entry in response.json()["compositeResponse"]}


def _collection_sub(reference: str, pairs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {
        "method": "PATCH",
        "url": f"{API}/composite/sobjects",
        "referenceId": reference,
        "body": {"allOrNone": False, "records": _records(pairs)},
    }


def _patch_sub(reference: str, contact_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "method": "PATCH",
        "url": f"{API}/sobjects/Contact/{contact_id}",
        "referenceId": reference,
        "body": fields,
    }


def test_inside_composite_the_rule_refuses_per_record_and_per_subrequest(standin, api):
    stale, fresh, single = standin.add_contacts([{"Preference_Version__c": 3}] * 3)

    answers = _composite(
        api,
        standin,
        [
            _collection_sub(
                "contacts",
                [(stale, {"Preference_Version__c": 2}), (fresh, {"Preference_Version__c": 4})],
            ),
            _patch_sub("single", single, Preference_Version__c=1),
        ],
        all_or_none=False,
    )

    assert answers["contacts"]["httpStatusCode"] == 200
    assert answers["contacts"]["body"] == [
        {"id": stale, "success": False, "errors": [REFUSAL]},
        {"id": fresh, "success": True, "errors": []},
    ]
    assert answers["single"]["httpStatusCode"] == 400
    assert answers["single"]["body"] == [
        {
            "message": VERSION_RULE_MESSAGE,
            "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "fields": ["Preference_Version__c"],
        }
    ]
    assert [_version(standin, i) for i in (stale, fresh, single)] == [3, 4, 3]


def test_each_subrequest_meets_the_value_the_one_before_it_stored(standin, api):
    contact_id = standin.add_contact(Preference_Version__c=1)

    answers = _composite(
        api,
        standin,
        [
            _patch_sub("newer", contact_id, Preference_Version__c=5),
            _patch_sub("older", contact_id, Preference_Version__c=4),
        ],
        all_or_none=False,
    )

    assert answers["newer"]["httpStatusCode"] == 204
    assert answers["older"]["httpStatusCode"] == 400
    assert _version(standin, contact_id) == 5


def test_all_or_none_composite_rolls_back_what_ran_before_the_refusal(standin, api):
    first, second = standin.add_contacts([{"Preference_Version__c": 5}] * 2)

    answers = _composite(
        api,
        standin,
        [
            _patch_sub("ok", first, Preference_Version__c=6),
            _patch_sub("refused", second, Preference_Version__c=4),
        ],
        all_or_none=True,
    )

    assert answers["ok"]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert answers["refused"]["body"][0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert (_version(standin, first), _version(standin, second)) == (5, 5)


# --- the org's schema -------------------------------------------------------------------------


def test_under_a_declared_schema_the_field_must_be_listed_like_any_custom_field():
    with running_standin(contact_fields=["Newsletter__c"]) as server:
        contact_id = server.add_contact(LastName="Okafor")
        unlisted = _patch(_api(server), server, contact_id, Preference_Version__c=1)
    with running_standin(contact_fields=["Preference_Version__c"]) as server:
        contact_id = server.add_contact(Preference_Version__c=5)
        api = _api(server)
        lower = _patch(api, server, contact_id, Preference_Version__c=4)
        higher = _patch(api, server, contact_id, Preference_Version__c=6)

    assert unlisted.status_code == 400
    assert unlisted.json()[0]["errorCode"] == "INVALID_FIELD"
    assert lower.json()[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert higher.status_code == 204


# --- with and without the rule ----------------------------------------------------------------


def test_without_the_rule_an_older_version_overwrites_a_newer_one(standin, api):
    contact_id = standin.add_contact(Preference_Version__c=5)

    standin.set_version_rule(False)
    removed = _patch(api, standin, contact_id, Preference_Version__c=3)
    standin.set_version_rule(True)
    restored = _patch(api, standin, contact_id, Preference_Version__c=2)

    assert removed.status_code == 204
    assert restored.status_code == 400
    assert _version(standin, contact_id) == 3


def test_the_rule_can_be_left_out_when_the_org_is_made():
    with running_standin(version_rule=False) as server:
        contact_id = server.add_contact(Preference_Version__c=5)
        api = _api(server)
        results = _collection(
            api, server, [(contact_id, {"Preference_Version__c": 1})], all_or_none=False
        )
        version = _version(server, contact_id)

    assert results[0]["success"] is True
    assert version == 1


def test_the_helpers_that_load_data_bypass_the_rule(standin):
    contact_id = standin.add_contact(Preference_Version__c=7)

    standin.external_update(contact_id, Preference_Version__c=2)  # as a data load would

    assert _version(standin, contact_id) == 2


def test_a_reset_keeps_the_orgs_configuration(standin):
    standin.set_version_rule(False)

    standin.reset()

    assert standin.version_rule is False


def test_the_rule_is_switched_over_the_control_api_of_a_standin_in_another_process():
    with standin_process() as remote:
        contact_id, other = remote.add_contacts(
            [{"LastName": "Okafor", "Preference_Version__c": 5}, {"LastName": "Garcia"}]
        )
        api = _api(remote)
        installed = remote.version_rule
        refused = _patch(api, remote, contact_id, Preference_Version__c=4)
        remote.set_version_rule(False)
        removed = remote.version_rule
        applied = _patch(api, remote, contact_id, Preference_Version__c=4)
        remote.configure(version_rule=True, bulk_in_progress_polls=1)
        state = remote.state(records=False)
        contact = remote.contact(contact_id)
        loaded = remote.contact(other)

    assert (installed, removed) == (True, False)
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert applied.status_code == 204
    assert (state["version_rule"], state["bulk_in_progress_polls"]) == (True, 1)
    assert contact[VERSION_FIELD] == 4
    assert loaded["LastName"] == "Garcia" and VERSION_FIELD not in loaded
