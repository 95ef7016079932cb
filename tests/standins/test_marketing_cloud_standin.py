"""The Marketing Cloud stand-in speaks the protocol the connector relies on, over real HTTPS.

These tests write their own envelopes (not the connector's), so a connector bug cannot hide
a stand-in bug behind it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from lxml import etree

from standins.marketing_cloud import (
    CHILD_MIDS,
    PARENT_MID,
    SECRET_HEADER,
    SYNC_UNAVAILABLE,
    MarketingCloudStandIn,
    MarketingCloudStandInClient,
    running_standin,
    standin_process,
)

ALUMNI, ATHLETICS = CHILD_MIDS
KEY = "003Dn0000000001IAA"
OTHER = "003Dn0000000002IAA"
NS = {
    "s": "http://schemas.xmlsoap.org/soap/envelope/",
    "p": "http://exacttarget.com/wsdl/partnerAPI",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}


@pytest.fixture
def standin() -> Iterator[MarketingCloudStandIn]:
    with running_standin() as server:
        yield server


def _http(server: MarketingCloudStandIn | MarketingCloudStandInClient) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides session.verify
    session.verify = server.ca_path
    return session


def _token(server: MarketingCloudStandIn, account_id: str = PARENT_MID) -> dict[str, Any]:
    response = _http(server).post(
        server.url + "/v2/token",
        json={
            "grant_type": "client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
            "account_id": int(account_id),  # a number, as the v2/token request documents it
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def _retrieve_body(
    keys: list[str] | None = None,
    mids: list[str] | None = None,
    *,
    properties: tuple[str, ...] = ("SubscriberKey", "Status", "Client.ID", "EmailAddress"),
    query_all: bool = False,
) -> str:
    client_ids = "".join(f"<ClientIDs><ClientID>{m}</ClientID></ClientIDs>" for m in mids or [])
    props = "".join(f"<Properties>{name}</Properties>" for name in properties)
    condition = ""
    if keys is not None:
        operator = "equals" if len(keys) == 1 else "IN"
        values = "".join(f"<Value>{k}</Value>" for k in keys)
        condition = (
            '<Filter xsi:type="SimpleFilterPart"><Property>SubscriberKey</Property>'
            f"<SimpleOperator>{operator}</SimpleOperator>{values}</Filter>"
        )
    return (
        '<RetrieveRequestMsg xmlns="http://exacttarget.com/wsdl/partnerAPI">'
        f"<RetrieveRequest>{client_ids}<ObjectType>Subscriber</ObjectType>{props}{condition}"
        f"{'<QueryAllAccounts>true</QueryAllAccounts>' if query_all else ''}"
        "</RetrieveRequest></RetrieveRequestMsg>"
    )


def _update_body(key: str, status: str, mid: str | None = None) -> str:
    client = f"<Client><ID>{mid}</ID></Client>" if mid else ""
    return (
        '<UpdateRequest xmlns="http://exacttarget.com/wsdl/partnerAPI"><Options/>'
        f'<Objects xsi:type="Subscriber">{client}<SubscriberKey>{key}</SubscriberKey>'
        f"<Status>{status}</Status></Objects></UpdateRequest>"
    )


def _soap(
    server: MarketingCloudStandIn,
    action: str,
    operation: str,
    token: str | None,
    *,
    timeout: float | None = None,
) -> requests.Response:
    header = f'<fueloauth xmlns="http://exacttarget.com">{token}</fueloauth>' if token else ""
    envelope = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<s:Header>{header}</s:Header><s:Body>{operation}</s:Body></s:Envelope>"
    )
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if action:
        headers["SOAPAction"] = action
    return _http(server).post(
        server.url + "/Service.asmx", data=envelope.encode(), headers=headers, timeout=timeout
    )


def _xml(response: requests.Response) -> Any:
    return etree.fromstring(response.content)


def _results(response: requests.Response) -> list[tuple[str, str, str]]:
    """(Client.ID, SubscriberKey, Status) of each Result."""
    root = _xml(response)
    return [
        (
            result.findtext("p:Client/p:ID", namespaces=NS),
            result.findtext("p:SubscriberKey", namespaces=NS),
            result.findtext("p:Status", namespaces=NS),
        )
        for result in root.iterfind(".//p:RetrieveResponseMsg/p:Results", NS)
    ]


def _overall(response: requests.Response) -> str:
    return str(_xml(response).findtext(".//p:OverallStatus", namespaces=NS))


def _fault(response: requests.Response) -> tuple[str, str]:
    fault = _xml(response).find(".//s:Fault", NS)
    assert fault is not None, response.text
    return fault.findtext("faultcode"), fault.findtext("faultstring")


# --- OAuth ------------------------------------------------------------------------------------


def test_client_credentials_issue_a_bearer_token_naming_the_soap_and_rest_urls(standin):
    token = _token(standin)

    assert token["token_type"] == "Bearer"
    assert token["access_token"]
    assert token["expires_in"] == 1079
    assert token["soap_instance_url"] == standin.url + "/"
    assert token["rest_instance_url"] == standin.url + "/"
    assert standin.token_calls == 1
    assert standin.api_calls == 0
    assert standin.call_log == [("token", PARENT_MID)]


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "someone-else"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"account_id": 999999}, 403, "unauthorized_client"),
        ({"account_id": PARENT_MID}, 400, "invalid_request"),  # a string, not a number
        ({"account_id": True}, 400, "invalid_request"),
        ({"account_id": 510000001.5}, 400, "invalid_request"),
    ],
    ids=["secret", "client", "grant", "mid", "mid-string", "mid-boolean", "mid-fraction"],
)
def test_a_token_request_that_does_not_check_out_is_refused(standin, change, status, error):
    payload = {
        "grant_type": "client_credentials",
        "client_id": standin.client_id,
        "client_secret": standin.client_secret,
        "account_id": int(PARENT_MID),
        **change,
    }

    response = _http(standin).post(standin.url + "/v2/token", json=payload)

    assert response.status_code == status
    assert response.json()["error"] == error


def test_account_id_is_a_number_as_documented_and_a_string_is_refused(standin):
    # "Access Token for Server-to-Server Integrations": account_id, type number.
    def request(account_id: Any) -> requests.Response:
        payload = {
            "grant_type": "client_credentials",
            "client_id": standin.client_id,
            "client_secret": standin.client_secret,
            "account_id": account_id,
        }
        return _http(standin).post(standin.url + "/v2/token", json=payload)

    as_number = request(int(ALUMNI))
    as_string = request(ALUMNI)
    without = _http(standin).post(
        standin.url + "/v2/token",
        json={
            "grant_type": "client_credentials",
            "client_id": standin.client_id,
            "client_secret": standin.client_secret,
        },
    )

    assert as_number.status_code == 200
    assert as_string.status_code == 400
    assert as_string.json() == {
        "error": "invalid_request",
        "error_description": "account_id must be a number: the MID of the target business unit.",
        "error_uri": "https://developer.salesforce.com/docs",
    }
    assert without.status_code == 200  # none given: the package's own business unit
    assert standin.call_log == [("token", ALUMNI), ("token", ALUMNI), ("token", "")]


def test_a_token_body_that_is_not_json_is_an_invalid_request(standin):
    response = _http(standin).post(standin.url + "/v2/token", data="grant_type=x")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# --- TLS --------------------------------------------------------------------------------------


def test_a_client_that_does_not_trust_the_generated_ca_cannot_connect(standin):
    session = requests.Session()
    session.trust_env = False  # system CAs only (certifi)

    with pytest.raises(requests.exceptions.SSLError):
        session.post(standin.url + "/v2/token", json={})
    assert standin.call_log == []


def test_the_certificate_also_names_localhost(standin):
    response = _http(standin).post(f"https://localhost:{standin.port}/v2/token", json={})

    assert response.status_code == 400  # TLS verified; the request itself is empty


# --- Retrieve ---------------------------------------------------------------------------------


def test_retrieve_reads_the_status_in_the_business_unit_named_by_client_ids(standin):
    standin.set_subscriber(KEY, "Active", email="ada@example.org")
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    token = _token(standin)["access_token"]

    parent = _soap(standin, "Retrieve", _retrieve_body([KEY], [PARENT_MID]), token)
    athletics = _soap(standin, "Retrieve", _retrieve_body([KEY], [ATHLETICS]), token)
    alumni = _soap(standin, "Retrieve", _retrieve_body([KEY], [ALUMNI]), token)

    assert parent.status_code == 200
    assert parent.headers["Content-Type"].startswith("text/xml")
    assert _overall(parent) == "OK"
    assert _results(parent) == [(PARENT_MID, KEY, "Active")]
    assert _results(athletics) == [(ATHLETICS, KEY, "Held")]
    assert _overall(alumni) == "OK"
    assert _results(alumni) == []  # not found: no Results at all
    root = _xml(parent)
    assert root.findtext(".//p:Results/p:EmailAddress", namespaces=NS) == "ada@example.org"
    assert root.find(".//p:Results", NS).get(f"{{{NS['xsi']}}}type") == "Subscriber"
    assert standin.api_calls == 3
    assert standin.call_log[1:] == [
        ("Retrieve", PARENT_MID),
        ("Retrieve", ATHLETICS),
        ("Retrieve", ALUMNI),
    ]


def test_retrieve_without_client_ids_reads_the_tokens_own_business_unit(standin):
    standin.set_subscriber(KEY, "Bounced")
    standin.set_subscriber(KEY, "Unsubscribed", mid=ALUMNI)
    token = _token(standin)["access_token"]

    response = _soap(standin, "Retrieve", _retrieve_body([KEY]), token)

    assert _results(response) == [(PARENT_MID, KEY, "Bounced")]


def test_query_all_accounts_reads_every_business_unit_in_one_call(standin):
    standin.set_subscriber(KEY, "Active")
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    standin.set_subscriber(OTHER, "Deleted", mid=ALUMNI)
    token = _token(standin)["access_token"]

    response = _soap(standin, "Retrieve", _retrieve_body([KEY, OTHER], query_all=True), token)

    assert _results(response) == [
        (PARENT_MID, KEY, "Active"),
        (ALUMNI, OTHER, "Deleted"),
        (ATHLETICS, KEY, "Held"),
    ]
    assert standin.api_calls == 1


def test_only_the_properties_asked_for_come_back(standin):
    standin.set_subscriber(KEY, "Unsubscribed", email="ada@example.org")
    token = _token(standin)["access_token"]

    response = _soap(
        standin, "Retrieve", _retrieve_body([KEY], properties=("SubscriberKey", "Status")), token
    )

    result = _xml(response).find(".//p:Results", NS)
    names = [etree.QName(child).localname for child in result]
    assert names == ["PartnerKey", "ObjectID", "SubscriberKey", "Status"]


def test_a_token_for_a_child_business_unit_cannot_read_the_parent(standin):
    standin.set_subscriber(KEY, "Active")
    token = _token(standin, account_id=ALUMNI)["access_token"]

    response = _soap(standin, "Retrieve", _retrieve_body([KEY], [PARENT_MID]), token)

    assert response.status_code == 200
    assert _overall(response).startswith("Error: Invalid ClientID")
    assert _results(response) == []


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (_retrieve_body([KEY], ["999999"]), "Error: Invalid ClientID"),
        (_retrieve_body([KEY], properties=("Status", "Nickname")), "Error: The Request Property"),
        (_retrieve_body([KEY]).replace(">Subscriber<", ">List<"), "Error: The stand-in retrieves"),
        (
            _retrieve_body([KEY]).replace(">SubscriberKey</Property>", ">EmailAddress</Property>"),
            "Error: The stand-in filters on SubscriberKey only",
        ),
    ],
    ids=["unknown-mid", "unknown-property", "other-object", "other-filter"],
)
def test_a_retrieve_it_cannot_answer_has_an_error_overall_status(standin, operation, message):
    token = _token(standin)["access_token"]

    response = _soap(standin, "Retrieve", operation, token)

    assert response.status_code == 200
    assert _overall(response).startswith(message)


def test_the_envelope_is_not_expanded_with_entities(standin):
    standin.set_subscriber(KEY, "Active")
    token = _token(standin)["access_token"]
    envelope = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY key "' + KEY + '">'
        '<!ENTITY file SYSTEM "file:///etc/hostname">]>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><s:Header>'
        f'<fueloauth xmlns="http://exacttarget.com">{token}</fueloauth></s:Header><s:Body>'
        + _retrieve_body(["&key;&file;"])
        + "</s:Body></s:Envelope>"
    )

    response = _http(standin).post(
        standin.url + "/Service.asmx", data=envelope, headers={"SOAPAction": "Retrieve"}
    )

    assert response.status_code == 200
    assert _results(response) == []  # the entity was not replaced by the key


# --- Update -----------------------------------------------------------------------------------


def test_update_to_active_resubscribes_in_that_business_unit_only(standin):
    standin.set_subscriber(KEY, "Held")
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    token = _token(standin)["access_token"]

    response = _soap(standin, "Update", _update_body(KEY, "Active", ATHLETICS), token)

    root = _xml(response)
    assert response.status_code == 200
    assert root.findtext(".//p:UpdateResponse/p:OverallStatus", namespaces=NS) == "OK"
    assert root.findtext(".//p:Results/p:StatusCode", namespaces=NS) == "OK"
    assert root.findtext(".//p:Results/p:Object/p:Status", namespaces=NS) == "Active"
    assert standin.status(KEY, ATHLETICS) == "Active"
    assert standin.status(KEY) == "Held"
    assert standin.call_log[-1] == ("Update", ATHLETICS)


@pytest.mark.parametrize(
    ("setup", "status", "message"),
    [
        (None, "Active", "does not exist"),
        ("Deleted", "Active", "does not exist"),
        ("Active", "Held", "Status must be one of Active, Unsubscribed"),
    ],
    ids=["unknown", "deleted", "status-not-settable"],
)
def test_an_update_it_refuses_is_an_error_result(standin, setup, status, message):
    if setup:
        standin.set_subscriber(KEY, setup, mid=ALUMNI)
    token = _token(standin)["access_token"]

    response = _soap(standin, "Update", _update_body(KEY, status, ALUMNI), token)

    root = _xml(response)
    assert response.status_code == 200
    assert root.findtext(".//p:UpdateResponse/p:OverallStatus", namespaces=NS) == "Error"
    assert root.findtext(".//p:Results/p:StatusCode", namespaces=NS) == "Error"
    assert message in root.findtext(".//p:Results/p:StatusMessage", namespaces=NS)
    assert standin.status(KEY, ALUMNI) == setup


# --- SOAP faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-a-token"], ids=["missing", "unknown"])
def test_a_call_without_a_valid_token_is_a_login_failed_security_fault(standin, token):
    standin.set_subscriber(KEY, "Active")

    response = _soap(standin, "Retrieve", _retrieve_body([KEY]), token)

    assert response.status_code == 500
    assert _fault(response) == ("q0:Security", "Login Failed")
    assert standin.api_calls == 0


def test_expire_tokens_invalidates_every_token_issued_so_far(standin):
    old = _token(standin)["access_token"]

    standin.expire_tokens()

    assert _soap(standin, "Retrieve", _retrieve_body([KEY]), old).status_code == 500
    new = _token(standin)["access_token"]
    assert _soap(standin, "Retrieve", _retrieve_body([KEY]), new).status_code == 200


def test_a_token_stops_working_when_its_lifetime_is_over():
    with running_standin(token_lifetime=0.3) as server:
        token = _token(server)
        before = _soap(server, "Retrieve", _retrieve_body([KEY]), token["access_token"])
        time.sleep(0.35)
        after = _soap(server, "Retrieve", _retrieve_body([KEY]), token["access_token"])

    assert token["expires_in"] == 0  # whole seconds, as Marketing Cloud says it
    assert before.status_code == 200
    assert _fault(after) == ("q0:Security", "Login Failed")


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({}, None, "SOAP Action could not be determined"),
        ({"SOAPAction": "Delete"}, None, "did not recognize the value of HTTP Header SOAPAction"),
        ({"SOAPAction": "Update"}, None, "did not recognize the value of HTTP Header SOAPAction"),
        ({"SOAPAction": "Retrieve"}, b"<not-xml", "unable to read request"),
    ],
    ids=["no-action", "unknown-action", "action-for-another-body", "malformed"],
)
def test_a_request_it_cannot_read_is_a_client_fault(standin, headers, body, message):
    token = _token(standin)["access_token"]
    envelope = (
        body
        or (
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><s:Header>'
            f'<fueloauth xmlns="http://exacttarget.com">{token}</fueloauth></s:Header>'
            f"<s:Body>{_retrieve_body([KEY])}</s:Body></s:Envelope>"
        ).encode()
    )

    response = _http(standin).post(standin.url + "/Service.asmx", data=envelope, headers=headers)

    assert response.status_code == 500
    code, text = _fault(response)
    assert code == "soap:Client"
    assert message in text


# --- injected faults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "fault"),
    [
        ("http_500", 500, None),
        ("http_503", 503, None),
        ("server_fault", 500, ("soap:Server", "Unplanned Outage")),
        ("client_fault", 500, ("soap:Client", "User Not Authorized")),
        ("sync_unavailable", 500, ("soap:Client", "Synchronous request cannot be completed")),
        ("expire_tokens", 500, ("q0:Security", "Login Failed")),
    ],
)
def test_a_fault_fails_the_next_calls_then_clears(standin, kind, status, fault):
    standin.set_subscriber(KEY, "Active")
    token = _token(standin)["access_token"]
    standin.fail(kind, times=2)

    failures = [_soap(standin, "Retrieve", _retrieve_body([KEY]), token) for _ in range(2)]
    if kind == "expire_tokens":
        token = _token(standin)["access_token"]  # the old token is gone for good
    after = _soap(standin, "Retrieve", _retrieve_body([KEY]), token)

    assert [r.status_code for r in failures] == [status, status]
    if fault is None:
        assert failures[0].headers["Content-Type"].startswith("text/html")
    else:
        code, text = _fault(failures[0])
        assert code == fault[0]
        assert text.startswith(fault[1])
    assert _results(after) == [(PARENT_MID, KEY, "Active")]
    assert standin.api_calls == 1  # injected failures are not counted


def test_the_synchronous_request_fault_is_the_documented_client_fault(standin):
    # SOAP API, "SOAP Faults": "Synchronous Request Cannot Be Requested", a Client fault
    # (RemoteDBConnDetected_SyncAPICallUnsupported), resolved by waiting or going async.
    standin.set_subscriber(KEY, "Bounced", mid=ALUMNI)
    token = _token(standin)["access_token"]
    standin.fail("sync_unavailable", times=1, action="Update")

    refused = _soap(standin, "Update", _update_body(KEY, "Active", ALUMNI), token)
    retried = _soap(standin, "Update", _update_body(KEY, "Active", ALUMNI), token)

    assert refused.status_code == 500
    assert refused.headers["Content-Type"].startswith("text/xml")
    fault = _xml(refused).find("s:Body/s:Fault", NS)
    assert fault.findtext("faultcode") == "soap:Client"
    assert fault.findtext("faultstring") == SYNC_UNAVAILABLE
    assert SYNC_UNAVAILABLE == (
        "Synchronous request cannot be completed at this time due to database problems. "
        "This request was not processed."
    )
    detail = fault.find("detail")
    assert detail is not None and len(detail) == 0  # a Client fault carries no error code
    assert fault.findtext("faultactor") == standin.url + "/Service.asmx"
    assert standin.status(KEY, ALUMNI) == "Active"  # refused, then applied on the retry
    assert _overall(retried) == "OK"
    assert standin.api_calls == 1


def test_a_fault_can_target_one_operation_or_one_business_unit(standin):
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    token = _token(standin)["access_token"]
    standin.fail("server_fault", action="Update")
    standin.fail("http_503", mid=ALUMNI)

    athletics = _soap(standin, "Retrieve", _retrieve_body([KEY], [ATHLETICS]), token)
    alumni = _soap(standin, "Retrieve", _retrieve_body([KEY], [ALUMNI]), token)
    update = _soap(standin, "Update", _update_body(KEY, "Active", ATHLETICS), token)

    assert athletics.status_code == 200
    assert alumni.status_code == 503
    assert _fault(update)[0] == "soap:Server"
    assert standin.status(KEY, ATHLETICS) == "Held"


def test_faults_spare_the_token_endpoint_unless_it_is_named(standin):
    standin.fail("http_500")  # no path: the SOAP API only
    assert _token(standin)["access_token"]

    standin.fail("http_503", path_contains="/v2/token", times=1)
    refused = _http(standin).post(standin.url + "/v2/token", json={})

    assert refused.status_code == 503


def test_a_fault_for_seconds_ends_by_itself(standin):
    token = _token(standin)["access_token"]
    standin.fail("http_503", for_seconds=0.3)

    during = _soap(standin, "Retrieve", _retrieve_body([KEY]), token).status_code
    time.sleep(0.35)
    after = _soap(standin, "Retrieve", _retrieve_body([KEY]), token).status_code

    assert (during, after) == (503, 200)


def test_a_fault_until_a_condition_holds(standin):
    token = _token(standin)["access_token"]
    recovered = threading.Event()
    standin.fail("server_fault", until=recovered.is_set)

    during = [_soap(standin, "Retrieve", _retrieve_body([KEY]), token).status_code for _ in "ab"]
    recovered.set()

    assert during == [500, 500]
    assert _soap(standin, "Retrieve", _retrieve_body([KEY]), token).status_code == 200


def test_latency_delays_the_answer(standin):
    token = _token(standin)["access_token"]
    standin.fail("latency", seconds=0.3, times=1)

    started = time.monotonic()
    response = _soap(standin, "Retrieve", _retrieve_body([KEY]), token)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_a_timeout_fault_holds_the_request_past_the_clients_timeout(standin):
    token = _token(standin)["access_token"]
    standin.fail("timeout", seconds=30, times=1)

    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        _soap(standin, "Retrieve", _retrieve_body([KEY]), token, timeout=0.3)
    standin.stop()  # prompt even with the request still held

    assert time.monotonic() - started < 3


def test_an_unknown_fault_kind_is_refused(standin):
    with pytest.raises(ValueError, match="unknown fault kind"):
        standin.fail("unable_to_lock_row")


# --- helpers, control, processes, persistence -------------------------------------------------


def test_statuses_are_accepted_in_any_case_and_unknown_ones_are_refused(standin):
    standin.set_subscriber(KEY, "held", mid=ALUMNI)

    assert standin.status(KEY, ALUMNI) == "Held"
    assert standin.status(KEY) is None
    with pytest.raises(ValueError, match="unknown subscriber status"):
        standin.set_subscriber(KEY, "Grey")
    with pytest.raises(ValueError, match="not one of this account's"):
        standin.set_subscriber(KEY, "Active", mid="42")


def test_control_endpoints_need_the_client_secret(standin):
    http = _http(standin)

    anonymous = http.get(standin.url + "/__standin__/state")
    wrong = http.get(standin.url + "/__standin__/state", headers={SECRET_HEADER: "guess"})
    right = http.get(
        standin.url + "/__standin__/state", headers={SECRET_HEADER: standin.client_secret}
    )

    assert (anonymous.status_code, wrong.status_code, right.status_code) == (403, 403, 200)


def test_a_client_drives_the_standin_over_https(standin):
    remote = MarketingCloudStandInClient(
        standin.url, standin.ca_path, standin.client_secret, standin.client_id
    )
    remote.set_subscriber(KEY, "Held", mid=ATHLETICS, email="ada@example.org")
    remote.set_subscribers([{"key": OTHER, "status": "Bounced"}])
    token = _token(standin)["access_token"]

    remote.fail("http_503", times=1, mid=ATHLETICS)
    assert _soap(standin, "Retrieve", _retrieve_body([KEY], [ATHLETICS]), token).status_code == 503
    assert _results(_soap(standin, "Retrieve", _retrieve_body([KEY], [ATHLETICS]), token)) == [
        (ATHLETICS, KEY, "Held")
    ]
    remote.fail("server_fault")
    remote.clear_faults()
    assert _soap(standin, "Retrieve", _retrieve_body([OTHER]), token).status_code == 200

    assert remote.status(KEY, ATHLETICS) == "Held"
    assert remote.subscriber(KEY, ATHLETICS)["email"] == "ada@example.org"
    assert remote.status(OTHER) == "Bounced"
    assert remote.status(KEY) is None
    assert remote.api_calls == 2
    assert remote.token_calls == 1
    assert ("Retrieve", ATHLETICS) in remote.call_log
    remote.expire_tokens()
    assert _soap(standin, "Retrieve", _retrieve_body([OTHER]), token).status_code == 500

    remote.reset()
    assert remote.subscribers() == []
    assert remote.api_calls == 0
    remote.close()


def test_the_standin_runs_in_another_process_and_keeps_state_in_its_file(tmp_path):
    state = tmp_path / "marketing-cloud.json"
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            [
                {"key": KEY, "status": "Held", "mid": ATHLETICS},
                {"key": OTHER, "status": "Bounced"},
            ]
        )
    )
    args = ["--state-file", str(state), "--seed", str(seed)]

    with standin_process(args=args) as remote:
        first = remote.subscribers()
        remote.set_subscriber(KEY, "Active", mid=ATHLETICS)  # as a resubscribe would
        first_ca = remote.ca_path
    with standin_process(args=args) as remote:
        kept = remote.status(KEY, ATHLETICS)
        second_ca = remote.ca_path
        remote.fail("server_fault", times=1, action="Retrieve")
        faults = remote.state(records=False)["faults"]
        mids = remote.state(records=False)["mids"]

    assert sorted((s["mid"], s["key"], s["status"]) for s in first) == [
        (PARENT_MID, OTHER, "Bounced"),
        (ATHLETICS, KEY, "Held"),
    ]
    assert kept == "Active"  # the seed does not overwrite what the state file holds
    assert first_ca == second_ca  # the demo's MARKETING_CLOUD_CA_BUNDLE stays valid
    assert [(f["kind"], f["action"]) for f in faults] == [("server_fault", "Retrieve")]
    assert mids == [PARENT_MID, *CHILD_MIDS]


def test_concurrent_calls_are_all_answered_and_counted(standin):
    keys = [f"003Dn00000000{n:02d}AAA" for n in range(8)]
    for key in keys:
        standin.set_subscriber(key, "Held", mid=ALUMNI)
    token = _token(standin)["access_token"]
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            for _ in range(3):
                response = _soap(standin, "Retrieve", _retrieve_body([key], [ALUMNI]), token)
                assert _results(response) == [(ALUMNI, key, "Held")]
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert standin.api_calls == 24


def test_stop_is_prompt_with_an_idle_keep_alive_connection(standin):
    session = _http(standin)
    session.post(standin.url + "/v2/token", json={})

    started = time.monotonic()
    standin.stop()

    assert time.monotonic() - started < 1
