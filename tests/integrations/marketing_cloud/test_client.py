"""The Marketing Cloud connector, over real HTTPS, against the stand-in.

No mocking: every test talks to a stand-in started for it (token endpoint and SOAP API), so
what passes here is what the re-subscribe queue gets from a real account that behaves the
same way.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured

from integrations.base import ConnectorError, PermanentError, TransientError
from integrations.marketing_cloud.client import (
    MarketingCloudClient,
    MarketingCloudSettings,
    classify,
    forget_tokens,
)
from lib.salesforce_ids import salesforce_id_18
from preferences.models import SubscriberStatusValue
from standins.marketing_cloud import (
    CHILD_MIDS,
    PARENT_MID,
    MarketingCloudStandIn,
    running_standin,
)

ALUMNI, ATHLETICS = CHILD_MIDS
ALL_MIDS = [PARENT_MID, ALUMNI, ATHLETICS]
KEY = salesforce_id_18("003Dn0000000001")
OTHER = salesforce_id_18("003Dn0000000002")
TOKEN = ("token", PARENT_MID)


@pytest.fixture(autouse=True)
def _no_cached_tokens() -> Iterator[None]:
    # Tokens are cached per process and auth URL; a port reused by a later stand-in must
    # not inherit an earlier stand-in's token.
    forget_tokens()
    yield
    forget_tokens()


@pytest.fixture
def standin() -> Iterator[MarketingCloudStandIn]:
    with running_standin() as server:
        yield server


def _point_at(settings, server: MarketingCloudStandIn) -> None:
    settings.MARKETING_CLOUD_AUTH_URL = server.url
    settings.MARKETING_CLOUD_CLIENT_ID = server.client_id
    settings.MARKETING_CLOUD_CLIENT_SECRET = server.client_secret
    settings.MARKETING_CLOUD_ACCOUNT_ID = PARENT_MID
    settings.MARKETING_CLOUD_CA_BUNDLE = server.ca_path
    settings.MARKETING_CLOUD_TIMEOUT = 5
    settings.MARKETING_CLOUD_CONNECT_TIMEOUT = 5


@pytest.fixture
def mc_settings(settings, standin):
    _point_at(settings, standin)
    return settings


@pytest.fixture
def client(mc_settings) -> Iterator[MarketingCloudClient]:
    with MarketingCloudClient() as connector:
        yield connector


# --- statuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mid", ALL_MIDS, ids=["parent", "alumni", "athletics"])
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Active", "active"),
        ("Bounced", "bounced"),
        ("Held", "held"),
        ("Unsubscribed", "unsubscribed"),
        ("Deleted", "not_found"),
    ],
)
def test_each_status_reads_as_its_value_in_parent_and_child_business_units(
    standin, client, mid, status, expected
):
    standin.set_subscriber(KEY, status, mid=mid)

    assert client.subscriber_status(KEY, mid) == expected
    assert expected in SubscriberStatusValue.values


@pytest.mark.parametrize("mid", ALL_MIDS, ids=["parent", "alumni", "athletics"])
def test_a_subscriber_unknown_in_a_business_unit_is_not_found(standin, client, mid):
    standin.set_subscriber(OTHER, "Held", mid=mid)  # someone else's status is not theirs

    assert client.subscriber_status(KEY, mid) == "not_found"


def test_active_in_the_parent_and_held_in_a_child_reads_per_business_unit(standin, client):
    standin.set_subscriber(KEY, "Active")
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)

    statuses = client.subscriber_statuses(KEY, ALL_MIDS)

    assert statuses == {PARENT_MID: "active", ALUMNI: "not_found", ATHLETICS: "held"}
    assert list(statuses) == ALL_MIDS
    assert standin.call_log == [TOKEN, *[("Retrieve", mid) for mid in ALL_MIDS]]


def test_a_business_unit_named_twice_is_read_once(standin, client):
    standin.set_subscriber(KEY, "Bounced", mid=ALUMNI)

    assert client.subscriber_statuses(KEY, [ALUMNI, ALUMNI]) == {ALUMNI: "bounced"}
    assert standin.api_calls == 1


def test_one_token_serves_many_lookups_and_the_next_clients_in_the_process(standin, mc_settings):
    standin.set_subscriber(KEY, "Held", mid=ALUMNI)

    for _ in range(3):
        with MarketingCloudClient() as client:
            client.subscriber_statuses(KEY, ALL_MIDS)

    assert standin.token_calls == 1
    assert standin.api_calls == 9


# --- resubscribing ----------------------------------------------------------------------------


def test_resubscribe_sets_active_in_that_business_unit_and_a_reread_says_so(standin, client):
    standin.set_subscriber(KEY, "Active")
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    standin.set_subscriber(KEY, "Unsubscribed", mid=ALUMNI)

    client.resubscribe(KEY, ATHLETICS)

    assert client.subscriber_statuses(KEY, ALL_MIDS) == {
        PARENT_MID: "active",
        ALUMNI: "unsubscribed",
        ATHLETICS: "active",
    }
    assert ("Update", ATHLETICS) in standin.call_log


def test_resubscribing_an_active_subscriber_again_is_harmless(standin, client):
    standin.set_subscriber(KEY, "Bounced", mid=ALUMNI)

    client.resubscribe(KEY, ALUMNI)
    client.resubscribe(KEY, ALUMNI)

    assert standin.status(KEY, ALUMNI) == "Active"


@pytest.mark.parametrize("existing", [None, "Deleted"], ids=["unknown", "deleted"])
def test_resubscribing_a_subscriber_the_business_unit_does_not_have_is_permanent(
    standin, client, existing
):
    standin.set_subscriber(KEY, "Held")  # in the parent, not in Alumni
    if existing:
        standin.set_subscriber(KEY, existing, mid=ALUMNI)

    with pytest.raises(PermanentError) as failure:
        client.resubscribe(KEY, ALUMNI)

    assert failure.value.code == "UPDATE_ERROR"
    assert "does not exist" in failure.value.message
    assert standin.status(KEY) == "Held"


# --- tokens -----------------------------------------------------------------------------------


def test_an_expired_token_is_replaced_once_and_the_call_repeated(standin, client):
    standin.set_subscriber(KEY, "Held", mid=ALUMNI)
    client.connect()
    standin.fail("expire_tokens", times=1)

    assert client.subscriber_status(KEY, ALUMNI) == "held"
    assert standin.call_log == [TOKEN, ("Retrieve", ALUMNI), TOKEN, ("Retrieve", ALUMNI)]
    assert standin.api_calls == 1


def test_a_resubscribe_refused_for_its_token_is_repeated_with_a_new_one(standin, client):
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    client.connect()
    standin.expire_tokens()

    client.resubscribe(KEY, ATHLETICS)

    assert standin.status(KEY, ATHLETICS) == "Active"
    assert standin.token_calls == 2


def test_a_token_refused_even_after_renewal_is_transient(standin, client):
    standin.fail("expire_tokens", times=2)

    with pytest.raises(TransientError) as failure:
        client.subscriber_status(KEY, PARENT_MID)

    assert failure.value.code == "LOGIN_FAILED"
    assert standin.token_calls == 2  # one renewal, no loop
    assert standin.api_calls == 0


def test_a_client_holding_a_refused_token_takes_the_one_renewed_by_another(standin, mc_settings):
    with MarketingCloudClient() as first, MarketingCloudClient() as second:
        first.connect()
        standin.expire_tokens()

        first.subscriber_status(KEY, PARENT_MID)  # Login Failed, gets a new token
        second.subscriber_status(KEY, PARENT_MID)  # uses that one straight away

    assert standin.token_calls == 2
    assert standin.call_log.count(("Retrieve", PARENT_MID)) == 3


def test_a_token_is_renewed_before_it_expires(mc_settings):
    with running_standin(token_lifetime=2) as server:
        _point_at(mc_settings, server)
        server.set_subscriber(KEY, "Held")
        with MarketingCloudClient() as client:
            client.subscriber_status(KEY, PARENT_MID)
            time.sleep(1.1)  # past half of a 2-second lifetime, before its end
            status = client.subscriber_status(KEY, PARENT_MID)

        log = server.call_log

    assert status == "held"
    # Renewed ahead of time: no call was refused for an expired token on the way.
    assert log == [TOKEN, ("Retrieve", PARENT_MID), TOKEN, ("Retrieve", PARENT_MID)]
    assert server.api_calls == 2


# --- failures ---------------------------------------------------------------------------------


def test_a_timeout_is_transient_and_does_not_wait_for_marketing_cloud(standin, mc_settings):
    mc_settings.MARKETING_CLOUD_TIMEOUT = 0.3
    standin.fail("timeout", seconds=20, times=1)

    started = time.monotonic()
    with MarketingCloudClient() as client, pytest.raises(TransientError) as failure:
        client.subscriber_status(KEY, PARENT_MID)

    assert failure.value.code == "TIMEOUT"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [
        ("http_500", "HTTP_500", 500),
        ("http_503", "HTTP_503", 503),
        ("server_fault", "SERVER_FAULT", 500),
    ],
)
def test_server_failures_are_transient_and_the_callers_retry_lands(
    standin, client, kind, code, status
):
    standin.set_subscriber(KEY, "Held", mid=ALUMNI)
    standin.fail(kind, times=1)

    with pytest.raises(TransientError) as failure:
        client.subscriber_status(KEY, ALUMNI)

    assert (failure.value.code, failure.value.status) == (code, status)
    assert client.subscriber_status(KEY, ALUMNI) == "held"


def test_a_server_failure_during_resubscribe_is_transient_and_changes_nothing(standin, client):
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    standin.fail("server_fault", times=1, action="Update")

    with pytest.raises(TransientError):
        client.resubscribe(KEY, ATHLETICS)

    assert standin.status(KEY, ATHLETICS) == "Held"
    client.resubscribe(KEY, ATHLETICS)
    assert standin.status(KEY, ATHLETICS) == "Active"


def test_one_failing_business_unit_fails_the_whole_lookup(standin, client):
    standin.fail("http_503", mid=ATHLETICS)

    with pytest.raises(TransientError):
        client.subscriber_statuses(KEY, ALL_MIDS)


def test_a_token_endpoint_outage_is_transient(standin, client):
    standin.fail("http_503", path_contains="/v2/token", times=1)

    with pytest.raises(TransientError) as failure:
        client.connect()

    assert failure.value.code == "HTTP_503"


def test_bad_credentials_are_permanent(standin, mc_settings):
    mc_settings.MARKETING_CLOUD_CLIENT_SECRET = "not-the-secret"

    with MarketingCloudClient() as client, pytest.raises(PermanentError) as failure:
        client.subscriber_status(KEY, PARENT_MID)

    assert (failure.value.code, failure.value.status) == ("invalid_client", 401)
    assert standin.api_calls == 0


def test_an_account_the_package_is_not_installed_in_is_permanent(standin, mc_settings):
    mc_settings.MARKETING_CLOUD_ACCOUNT_ID = "999999"

    with MarketingCloudClient() as client, pytest.raises(PermanentError) as failure:
        client.connect()

    assert (failure.value.code, failure.value.status) == ("unauthorized_client", 403)


def test_a_soap_client_fault_is_permanent(standin, client):
    standin.fail("client_fault")

    with pytest.raises(PermanentError) as failure:
        client.subscriber_status(KEY, PARENT_MID)

    assert failure.value.code == "CLIENT_FAULT"
    assert "User Not Authorized" in failure.value.message


def test_the_busy_client_fault_is_transient_unlike_other_client_faults(standin, client):
    # The SOAP API's "SOAP Faults" page: "Synchronous request cannot be completed at this
    # time" is a soap:Client fault that a later attempt gets past.
    standin.set_subscriber(KEY, "Held", mid=ATHLETICS)
    standin.fail("sync_unavailable", times=1, action="Update")

    with pytest.raises(TransientError) as failure:
        client.resubscribe(KEY, ATHLETICS)

    assert failure.value.code == "BUSY"
    assert standin.status(KEY, ATHLETICS) == "Held"
    client.resubscribe(KEY, ATHLETICS)
    assert standin.status(KEY, ATHLETICS) == "Active"


def test_the_token_request_sends_the_account_id_as_a_number(standin, client):
    # "Access Token for Server-to-Server Integrations": account_id is a number (the MID);
    # the stand-in refuses a string (or a boolean, or a fraction) with invalid_request.
    client.connect()

    assert standin.call_log == [("token", PARENT_MID)]
    assert standin.token_calls == 1


def test_a_business_unit_the_account_does_not_have_is_permanent(standin, client):
    with pytest.raises(PermanentError) as failure:
        client.subscriber_status(KEY, "999999")

    assert failure.value.code == "RETRIEVE_ERROR"
    assert "999999" in failure.value.message


def test_tls_is_verified_a_client_without_the_ca_bundle_fails(standin, mc_settings):
    mc_settings.MARKETING_CLOUD_CA_BUNDLE = ""  # the system's CAs do not know the stand-in's

    with MarketingCloudClient() as client, pytest.raises(PermanentError) as failure:
        client.subscriber_status(KEY, PARENT_MID)

    assert failure.value.code == "CERTIFICATE_VERIFY_FAILED"
    assert standin.call_log == []  # refused before any request was made


def test_an_unreachable_marketing_cloud_is_transient(mc_settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mc_settings.MARKETING_CLOUD_AUTH_URL = f"https://127.0.0.1:{port}"

    with MarketingCloudClient() as client, pytest.raises(TransientError) as failure:
        client.connect()

    assert failure.value.code == "CONNECTION_ERROR"


@pytest.mark.parametrize(
    "key",
    [
        KEY[:15],  # the 15-character form
        KEY.lower(),  # right length, wrong case: the checksum says so
        KEY[:17] + "Z",
        "",
        "003Dn00000000</Value>",
        KEY + "\n",
    ],
    ids=["15-characters", "wrong-case", "bad-checksum", "empty", "markup", "newline"],
)
def test_a_key_that_is_not_an_18_character_contact_id_is_refused_before_any_call(
    standin, client, key
):
    for call in (
        lambda: client.subscriber_status(key, PARENT_MID),
        lambda: client.subscriber_statuses(key, ALL_MIDS),
        lambda: client.resubscribe(key, PARENT_MID),
    ):
        with pytest.raises(PermanentError) as failure:
            call()
        assert failure.value.code == "INVALID_SUBSCRIBER_KEY"

    assert standin.call_log == []


@pytest.mark.parametrize("mid", ["", "51000000x", "1 OR 1", "510000002\n"])
def test_a_mid_that_is_not_a_number_is_refused_before_any_call(standin, client, mid):
    with pytest.raises(PermanentError) as failure:
        client.subscriber_statuses(KEY, [PARENT_MID, mid])

    assert failure.value.code == "INVALID_MID"
    assert standin.call_log == []


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (None, "TIMEOUT", TransientError),
        (None, "CONNECTION_ERROR", TransientError),
        (500, "SERVER_FAULT", TransientError),
        (500, "LOGIN_FAILED", TransientError),
        (503, "HTTP_503", TransientError),
        (502, None, TransientError),
        (429, None, TransientError),
        (408, None, TransientError),
        (500, "CLIENT_FAULT", PermanentError),
        (200, "RETRIEVE_ERROR", PermanentError),
        (200, "UPDATE_ERROR", PermanentError),
        (401, "invalid_client", PermanentError),
        (403, "HTTP_403", PermanentError),
        (None, "CERTIFICATE_VERIFY_FAILED", PermanentError),
        (400, "SOMETHING_NEW", PermanentError),
    ],
)
def test_classify(status, code, expected):
    assert classify(status, code) is expected


def test_errors_say_whether_they_are_worth_retrying():
    assert TransientError("TIMEOUT", "slow").transient is True
    assert PermanentError("CLIENT_FAULT", "no").transient is False
    assert issubclass(TransientError, ConnectorError)
    assert issubclass(PermanentError, ConnectorError)


def test_secrets_and_tokens_never_reach_the_log(standin, client, caplog):
    caplog.set_level(logging.DEBUG)
    standin.set_subscriber(KEY, "Held", mid=ALUMNI)
    standin.fail("expire_tokens", times=1)  # forces a second token too

    client.subscriber_status(KEY, ALUMNI)
    client.resubscribe(KEY, ALUMNI)

    assert caplog.text.count("Got a Marketing Cloud token") == 2
    assert standin.client_secret not in caplog.text
    assert standin.client_secret not in repr(client.config)
    assert not re.search(r"[A-Za-z0-9_-]{40,}", caplog.text)  # no access token either


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MARKETING_CLOUD_AUTH_URL", "http://mc.auth.marketingcloudapis.com"),
        ("MARKETING_CLOUD_AUTH_URL", ""),
        ("MARKETING_CLOUD_CLIENT_ID", ""),
        ("MARKETING_CLOUD_CLIENT_SECRET", ""),
        ("MARKETING_CLOUD_ACCOUNT_ID", "University"),
        ("MARKETING_CLOUD_TIMEOUT", "soon"),
        ("MARKETING_CLOUD_CONNECT_TIMEOUT", 0),
        ("MARKETING_CLOUD_CA_BUNDLE", "/nowhere/ca.pem"),
    ],
)
def test_misconfiguration_is_refused_at_once(mc_settings, name, value):
    setattr(mc_settings, name, value)

    with pytest.raises(ImproperlyConfigured):
        MarketingCloudClient()


def test_settings_have_working_defaults_and_hide_secrets(settings):
    for name in ("MARKETING_CLOUD_TIMEOUT", "MARKETING_CLOUD_CONNECT_TIMEOUT"):
        if hasattr(settings, name):
            delattr(settings, name)
    settings.MARKETING_CLOUD_AUTH_URL = "https://mc123.auth.marketingcloudapis.com/"
    settings.MARKETING_CLOUD_CLIENT_ID = "id"
    settings.MARKETING_CLOUD_CLIENT_SECRET = "very-secret"
    settings.MARKETING_CLOUD_ACCOUNT_ID = " 510000001 "
    settings.MARKETING_CLOUD_CA_BUNDLE = ""

    config = MarketingCloudSettings.from_django()

    assert config.auth_url == "https://mc123.auth.marketingcloudapis.com"
    assert config.account_id == "510000001"
    assert (config.timeout, config.connect_timeout) == (30.0, 10.0)
    assert "very-secret" not in repr(config)
