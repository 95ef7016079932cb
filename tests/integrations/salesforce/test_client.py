"""The Salesforce connector, through simple-salesforce over real HTTPS, against the stand-in.

No mocking: every test talks to a stand-in started for it, so what passes here is what the
sync tasks get from a real org that behaves the same way.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.exceptions import ImproperlyConfigured

from integrations.base import PermanentError, TransientError
from integrations.salesforce.client import (
    ContactPush,
    PushResult,
    SalesforceClient,
    SalesforceSettings,
    classify,
    forget_sessions,
    note_task,
)
from standins.salesforce import (
    API_USER_ID,
    INTEGRATION_USER_ID,
    ORG_ID,
    SalesforceStandIn,
    running_standin,
)

TOKEN = ("POST", "/services/oauth2/token")
COMPOSITE = ("POST", "/services/data/v60.0/composite")


@pytest.fixture(autouse=True)
def _no_cached_tokens() -> Iterator[None]:
    # Tokens are cached per process and login URL; a port reused by a later stand-in must
    # not inherit an earlier stand-in's token.
    forget_sessions()
    yield
    forget_sessions()


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


@pytest.fixture
def sf_settings(settings, standin):
    settings.SALESFORCE_LOGIN_URL = standin.url
    settings.SALESFORCE_AUTH = "client_credentials"
    settings.SALESFORCE_CLIENT_ID = standin.client_id
    settings.SALESFORCE_CLIENT_SECRET = standin.client_secret
    settings.SALESFORCE_CA_BUNDLE = standin.ca_path
    settings.SALESFORCE_TIMEOUT = 5
    return settings


@pytest.fixture
def client(sf_settings) -> Iterator[SalesforceClient]:
    with SalesforceClient() as connector:
        yield connector


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _push(contact_id: str, change: str, *, opted_out: bool = True) -> ContactPush:
    return ContactPush(
        salesforce_id=contact_id,
        fields={"HasOptedOutOfEmail": opted_out, "Newsletter__c": False},
        tasks=[
            note_task(
                change_id=change,
                who_id=contact_id,
                subject="Email opt-out",
                description="Caller asked to stop all email.",
                activity_date=date(2026, 3, 2),
            )
        ],
    )


# --- signing in -------------------------------------------------------------------------------


def test_client_credentials_sign_in_reads_a_contact(standin, client):
    contact_id = standin.add_contact(LastName="Okafor", HasOptedOutOfEmail=True)

    contact = client.get_contact(contact_id, ["LastName", "HasOptedOutOfEmail"])

    assert contact["Id"] == contact_id
    assert contact["LastName"] == "Okafor"
    assert contact["HasOptedOutOfEmail"] is True
    assert standin.call_log == [
        TOKEN,
        ("GET", f"/services/data/v60.0/sobjects/Contact/{contact_id}"),
    ]


@pytest.mark.parametrize("as_path", [False, True], ids=["pem-in-setting", "pem-file"])
def test_jwt_bearer_sign_in_with_the_private_key(settings, rsa_key, tmp_path, as_path):
    with running_standin(
        jwt_public_key=_public_pem(rsa_key), jwt_username="sync@university.edu"
    ) as server:
        key = _pem(rsa_key)
        if as_path:
            (tmp_path / "key.pem").write_text(key)
            key = str(tmp_path / "key.pem")
        else:
            key = key.replace("\n", "\\n")  # as an environment variable carries it
        settings.SALESFORCE_LOGIN_URL = server.url
        settings.SALESFORCE_AUTH = "jwt"
        settings.SALESFORCE_CLIENT_ID = server.client_id
        settings.SALESFORCE_USERNAME = "sync@university.edu"
        settings.SALESFORCE_PRIVATE_KEY = key
        settings.SALESFORCE_CA_BUNDLE = server.ca_path
        contact_id = server.add_contact(LastName="Garcia")

        with SalesforceClient() as client:
            contact = client.get_contact(contact_id, ["LastName"])

    assert contact["LastName"] == "Garcia"


def test_jwt_aud_names_the_login_host_not_the_my_domain_the_token_comes_from(settings, rsa_key):
    # "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration": aud is
    # https://login.salesforce.com, https://test.salesforce.com or a community URL; the
    # stand-in, like Salesforce, refuses its own My Domain URL there.
    with running_standin(jwt_public_key=_public_pem(rsa_key)) as server:
        settings.SALESFORCE_LOGIN_URL = server.url
        settings.SALESFORCE_AUTH = "jwt"
        settings.SALESFORCE_CLIENT_ID = server.client_id
        settings.SALESFORCE_USERNAME = "sync@university.edu"
        settings.SALESFORCE_PRIVATE_KEY = _pem(rsa_key)
        settings.SALESFORCE_CA_BUNDLE = server.ca_path
        with SalesforceClient() as client:
            client.connect()  # the default audience

        forget_sessions()
        settings.SALESFORCE_JWT_AUDIENCE = server.url  # the org's My Domain
        with SalesforceClient() as client, pytest.raises(PermanentError) as refused:
            client.connect()

    assert refused.value.code == "invalid_grant"


@pytest.mark.parametrize(
    ("login_url", "audience"),
    [
        ("https://example.my.salesforce.com", "https://login.salesforce.com"),
        ("https://example--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
    ],
)
def test_the_default_jwt_audience_follows_the_kind_of_org(settings, login_url, audience):
    settings.SALESFORCE_LOGIN_URL = login_url
    settings.SALESFORCE_AUTH = "jwt"
    settings.SALESFORCE_CLIENT_ID = "id"
    settings.SALESFORCE_USERNAME = "sync@university.edu"
    settings.SALESFORCE_PRIVATE_KEY = "key.pem"

    assert SalesforceSettings.from_django().audience() == audience


def test_a_my_domain_jwt_audience_is_refused_at_once(settings):
    settings.SALESFORCE_LOGIN_URL = "https://example.my.salesforce.com"
    settings.SALESFORCE_AUTH = "jwt"
    settings.SALESFORCE_CLIENT_ID = "id"
    settings.SALESFORCE_USERNAME = "sync@university.edu"
    settings.SALESFORCE_PRIVATE_KEY = "key.pem"
    settings.SALESFORCE_JWT_AUDIENCE = "https://example.my.salesforce.com"

    with pytest.raises(ImproperlyConfigured, match="My Domain URL"):
        SalesforceSettings.from_django()


@pytest.mark.parametrize("host", ["login.salesforce.com", "test.salesforce.com"])
def test_client_credentials_at_a_generic_login_host_are_refused(settings, host):
    # "OAuth 2.0 Client Credentials Flow for Server-to-Server Integration": the token
    # request goes to the org's My Domain; the shared hosts answer invalid_grant.
    settings.SALESFORCE_LOGIN_URL = f"https://{host}"
    settings.SALESFORCE_CLIENT_ID = "id"
    settings.SALESFORCE_CLIENT_SECRET = "secret"

    with pytest.raises(ImproperlyConfigured, match="My Domain URL"):
        SalesforceSettings.from_django()


def test_client_credentials_at_the_login_host_are_what_salesforce_refuses(standin, sf_settings):
    # Why the app refuses that set-up: the stand-in's login host answers as Salesforce does.
    sf_settings.SALESFORCE_LOGIN_URL = standin.login_url

    with SalesforceClient() as client, pytest.raises(PermanentError) as failure:
        client.connect()

    assert failure.value.code == "invalid_grant"


def test_a_process_will_not_start_with_client_credentials_at_the_login_host():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "x",
        "SALESFORCE_ENABLED": "true",
        "SALESFORCE_LOGIN_URL": "https://login.salesforce.com",
        "SALESFORCE_CLIENT_ID": "id",
        "SALESFORCE_CLIENT_SECRET": "secret",
    }

    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parents[3],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode != 0
    assert "My Domain URL" in done.stderr


def test_jwt_signed_with_another_key_is_a_permanent_error(settings, rsa_key):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with running_standin(jwt_public_key=_public_pem(rsa_key)) as server:
        settings.SALESFORCE_LOGIN_URL = server.url
        settings.SALESFORCE_AUTH = "jwt"
        settings.SALESFORCE_CLIENT_ID = server.client_id
        settings.SALESFORCE_USERNAME = "sync@university.edu"
        settings.SALESFORCE_PRIVATE_KEY = _pem(other)
        settings.SALESFORCE_CA_BUNDLE = server.ca_path

        with SalesforceClient() as client, pytest.raises(PermanentError) as failure:
            client.connect()

    assert failure.value.code == "invalid_grant"


def test_wrong_client_secret_is_a_permanent_error(sf_settings):
    sf_settings.SALESFORCE_CLIENT_SECRET = "not-the-secret"

    with SalesforceClient() as client, pytest.raises(PermanentError) as failure:
        client.connect()

    assert failure.value.code == "invalid_client"
    assert failure.value.status == 400


def test_tls_is_verified_a_client_without_the_ca_bundle_fails(standin, sf_settings):
    sf_settings.SALESFORCE_CA_BUNDLE = ""  # the system's CAs do not know the stand-in's

    with SalesforceClient() as client, pytest.raises(PermanentError) as failure:
        client.connect()

    assert failure.value.code == "CERTIFICATE_VERIFY_FAILED"
    assert standin.call_log == []  # refused before any request was made


def test_the_token_is_reused_by_the_next_client_in_the_process(standin, sf_settings):
    contact_id = standin.add_contact()

    for _ in range(3):
        with SalesforceClient() as client:
            client.get_contact(contact_id, ["LastName"])

    assert standin.call_log.count(TOKEN) == 1


def test_secrets_and_tokens_never_reach_the_log(standin, client, caplog):
    caplog.set_level(logging.DEBUG)
    contact_id = standin.add_contact()
    standin.fail("expire_sessions", times=1)  # forces a second login too

    client.push([_push(contact_id, "change-1")])

    assert caplog.text.count("Signed in to Salesforce") == 2
    assert standin.client_secret not in caplog.text
    assert ORG_ID[:15] + "!" not in caplog.text  # how every access token starts
    assert standin.client_secret not in repr(client.config)


# --- pushing ----------------------------------------------------------------------------------


def test_push_of_200_contacts_and_their_notes_is_one_api_call(standin, client):
    ids = [standin.add_contact(LastName=f"C{n}") for n in range(200)]

    results = client.push([_push(contact_id, f"change-{n}") for n, contact_id in enumerate(ids)])

    assert results == [PushResult(contact_id, "ok") for contact_id in ids]
    assert standin.api_calls == 1
    assert standin.call_log == [TOKEN, COMPOSITE]
    contacts = standin.contacts()
    assert all(contacts[i]["HasOptedOutOfEmail"] is True for i in ids)
    assert all(contacts[i]["LastModifiedById"] == API_USER_ID for i in ids)
    tasks = {task["Preference_Change_Id__c"]: task for task in standin.tasks()}
    assert len(tasks) == 200
    assert tasks["change-7"]["WhoId"] == ids[7]
    assert tasks["change-7"]["Status"] == "Completed"
    assert tasks["change-7"]["ActivityDate"] == "2026-03-02"
    assert tasks["change-7"]["Description"] == "Caller asked to stop all email."
    assert client.api_usage() == (1, 100_000)


def test_a_repeated_push_creates_no_duplicate_task(standin, client):
    ids = [standin.add_contact() for _ in range(3)]
    batch = [_push(contact_id, f"change-{n}") for n, contact_id in enumerate(ids)]

    client.push(batch)
    results = client.push(batch)

    assert all(result.ok for result in results)
    assert len(standin.tasks()) == 3


def test_a_contact_with_several_notes_gets_them_all(standin, client):
    contact_id = standin.add_contact()
    push = _push(contact_id, "change-1")
    push.tasks.append(
        note_task(
            change_id="change-2",
            who_id=contact_id,
            subject="Email opt-in",
            description="Asked to be put back.",
            activity_date=date(2026, 3, 3),
        )
    )

    assert client.push([push]) == [PushResult(contact_id, "ok")]
    assert sorted(t["Preference_Change_Id__c"] for t in standin.tasks()) == [
        "change-1",
        "change-2",
    ]


def test_more_than_800_notes_take_a_second_call(standin, client):
    ids = [standin.add_contact() for _ in range(200)]
    pushes = [
        ContactPush(
            contact_id,
            {"DoNotCall": True},
            [
                note_task(
                    change_id=f"change-{n}-{k}",
                    who_id=contact_id,
                    subject="Do not call",
                    description="Asked twice.",
                    activity_date=date(2026, 3, 2),
                )
                for k in range(5)
            ],
        )
        for n, contact_id in enumerate(ids)
    ]

    results = client.push(pushes)

    assert all(result.ok for result in results)
    assert standin.api_calls == 2  # 1 contact + 5 task collections; 5 fit in a call
    assert len(standin.tasks()) == 1000


def test_a_client_holding_an_expired_token_takes_the_one_renewed_by_another(standin, sf_settings):
    contact_id = standin.add_contact()
    with SalesforceClient() as first, SalesforceClient() as second:
        first.connect()
        second.connect()
        standin.expire_sessions()

        first.get_contact(contact_id, ["LastName"])  # 401, signs in again
        second.get_contact(contact_id, ["LastName"])  # 401, takes first's new token

    assert standin.call_log.count(TOKEN) == 2


def test_permanent_record_errors_fail_those_contacts_while_the_rest_of_the_batch_lands(
    standin, client
):
    ids = [standin.add_contact() for _ in range(6)]
    invalid, validation, deleted, locked = ids[1], ids[2], ids[3], ids[4]
    standin.reject_record(invalid, "INVALID_FIELD", "No such column 'Newsletter__c'")
    standin.reject_record(validation, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Region is required")
    standin.delete_contact(deleted)
    standin.reject_record(locked, "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")

    results = client.push([_push(contact_id, f"change-{n}") for n, contact_id in enumerate(ids)])

    by_id = {result.salesforce_id: result for result in results}
    assert [r.salesforce_id for r in results] == ids
    assert by_id[ids[0]].ok and by_id[ids[5]].ok
    assert (by_id[invalid].status, by_id[invalid].code) == ("permanent", "INVALID_FIELD")
    assert "No such column" in by_id[invalid].message
    assert by_id[validation].status == "permanent"
    assert by_id[validation].code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert by_id[validation].message == "Region is required"
    assert (by_id[deleted].status, by_id[deleted].code) == ("permanent", "ENTITY_IS_DELETED")
    assert (by_id[locked].status, by_id[locked].code) == ("transient", "UNABLE_TO_LOCK_ROW")
    contacts = standin.contacts()
    assert contacts[ids[0]]["HasOptedOutOfEmail"] and contacts[ids[5]]["HasOptedOutOfEmail"]
    assert not contacts[invalid]["HasOptedOutOfEmail"]
    assert standin.api_calls == 1


def test_a_note_that_fails_is_reported_apart_from_its_contacts_update(standin, client):
    contact_id = standin.add_contact()
    push = ContactPush(
        contact_id,
        {"DoNotCall": True},
        [{"Preference_Change_Id__c": "change-1", "CreatedDate": "2026-01-01"}],  # read-only
    )

    [result] = client.push([push])

    # allOrNone false: the refused Task does not undo the update, nor is it reported as one.
    assert (result.status, result.code, result.held) == ("ok", "", True)
    assert result.notes_status == "permanent"
    assert result.notes_code == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert result.notes_message.startswith("Task change-1: ")
    assert not result.ok
    assert standin.contact(contact_id)["DoNotCall"] is True  # the update itself landed
    assert standin.tasks() == []


def test_push_refuses_more_than_200_contacts_or_the_same_contact_twice(client):
    with pytest.raises(ValueError, match="at most 200"):
        client.push([ContactPush(f"003Sb{n:010d}", {}) for n in range(201)])
    with pytest.raises(ValueError, match="once"):
        client.push([ContactPush("003Sb0000000001", {}), ContactPush("003Sb0000000001", {})])


# --- whole-call failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [
        ("http_503", "SERVER_UNAVAILABLE", 503),
        ("http_500", "UNKNOWN_EXCEPTION", 500),
        ("unable_to_lock_row", "UNABLE_TO_LOCK_ROW", 400),
        ("request_limit_exceeded", "REQUEST_LIMIT_EXCEEDED", 403),
    ],
)
def test_whole_call_failures_are_transient(standin, client, kind, code, status):
    contact_id = standin.add_contact()
    standin.fail(kind, times=1)

    with pytest.raises(TransientError) as failure:
        client.push([_push(contact_id, "change-1")])

    assert (failure.value.code, failure.value.status) == (code, status)
    assert client.push([_push(contact_id, "change-1")])[0].ok  # the caller's retry lands


def test_exhausted_daily_allowance_is_transient_and_reported(standin, client):
    contact_id = standin.add_contact()
    standin.set_api_usage(used=100_000)

    with pytest.raises(TransientError) as failure:
        client.push([_push(contact_id, "change-1")])

    assert failure.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert client.api_usage() == (100_000, 100_000)


def test_a_timeout_is_transient_and_does_not_wait_for_salesforce(standin, sf_settings):
    sf_settings.SALESFORCE_TIMEOUT = 0.3
    contact_id = standin.add_contact()
    standin.fail("timeout", seconds=20, times=1)

    started = time.monotonic()
    with SalesforceClient() as client, pytest.raises(TransientError) as failure:
        client.push([_push(contact_id, "change-1")])

    assert failure.value.code == "TIMEOUT"
    assert time.monotonic() - started < 3


def test_an_unreachable_salesforce_is_transient(sf_settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sf_settings.SALESFORCE_LOGIN_URL = f"https://127.0.0.1:{port}"

    with SalesforceClient() as client, pytest.raises(TransientError) as failure:
        client.connect()

    assert failure.value.code == "CONNECTION_ERROR"


def test_an_expired_session_is_renewed_by_one_login_and_the_call_repeated(standin, client):
    contact_id = standin.add_contact()
    client.connect()
    standin.fail("expire_sessions", times=1)

    [result] = client.push([_push(contact_id, "change-1")])

    assert result.ok
    assert standin.call_log == [TOKEN, COMPOSITE, TOKEN, COMPOSITE]
    assert standin.api_calls == 1
    assert len(standin.tasks()) == 1


def test_a_session_that_stays_expired_after_the_new_login_is_transient(standin, client):
    contact_id = standin.add_contact()
    standin.fail("expire_sessions", times=2)

    with pytest.raises(TransientError) as failure:
        client.push([_push(contact_id, "change-1")])

    assert failure.value.code == "INVALID_SESSION_ID"
    assert standin.call_log.count(TOKEN) == 2  # one re-login, no loop
    assert standin.api_calls == 0


def test_a_missing_contact_is_a_permanent_error(standin, client):
    contact_id = standin.add_contact()
    standin.delete_contact(contact_id)

    with pytest.raises(PermanentError) as failure:
        client.get_contact(contact_id, ["LastName"])

    assert failure.value.code == "ENTITY_IS_DELETED"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "SERVER_UNAVAILABLE", TransientError),
        (500, "UNKNOWN_EXCEPTION", TransientError),
        (None, "TIMEOUT", TransientError),
        (400, "UNABLE_TO_LOCK_ROW", TransientError),
        (403, "REQUEST_LIMIT_EXCEEDED", TransientError),
        (401, "INVALID_SESSION_ID", TransientError),
        (429, None, TransientError),
        (400, "INVALID_FIELD", PermanentError),
        (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", PermanentError),
        (404, "ENTITY_IS_DELETED", PermanentError),
        (404, "NOT_FOUND", PermanentError),
        (400, "MALFORMED_QUERY", PermanentError),
        (403, "INSUFFICIENT_ACCESS", PermanentError),
        (400, "SOMETHING_NEW", PermanentError),
    ],
)
def test_classify(status, code, expected):
    assert classify(status, code) is expected


# --- reading changes --------------------------------------------------------------------------


def test_changed_contacts_pages_through_every_change_in_stamp_order(sf_settings):
    with running_standin(page_size=4) as server:
        sf_settings.SALESFORCE_LOGIN_URL = server.url
        sf_settings.SALESFORCE_CLIENT_ID = server.client_id
        sf_settings.SALESFORCE_CLIENT_SECRET = server.client_secret
        sf_settings.SALESFORCE_CA_BUNDLE = server.ca_path
        old = server.add_contact(LastName="Old")
        since = server.contact(old)["SystemModstamp"]
        # Stamps are whole seconds, as a real org's: each step waits for the next second, so
        # the ten contacts are stamped after `since` and the update after them.
        while datetime.now(UTC) < since + timedelta(seconds=1):
            time.sleep(0.01)
        ids = [server.add_contact(LastName=f"C{n}") for n in range(10)]
        while datetime.now(UTC) < server.contact(ids[-1])["SystemModstamp"] + timedelta(seconds=1):
            time.sleep(0.01)
        server.external_update(ids[0], HasOptedOutOfEmail=True)  # now the newest change
        server.fail("expire_sessions", times=1, path_contains="/query/01g")  # between pages

        with SalesforceClient() as client:
            changes = list(client.changed_contacts(since, None, ["HasOptedOutOfEmail", "LastName"]))
            usage = client.api_usage()

    assert [c["Id"] for c in changes] == [*ids[1:], ids[0]]
    assert changes[-1]["HasOptedOutOfEmail"] is True
    assert changes[-1]["LastModifiedById"] == INTEGRATION_USER_ID
    assert changes[0]["LastModifiedById"] != INTEGRATION_USER_ID
    stamps = [c["SystemModstamp"] for c in changes]
    assert stamps == sorted(stamps) and stamps[0] > since
    assert all(isinstance(s, datetime) and s.tzinfo is not None for s in stamps)
    assert usage == (3, 100_000)  # three pages; the 401 in between is not counted


def test_changed_contacts_stops_at_until(standin, client):
    start = datetime.now(UTC) - timedelta(seconds=1)
    first = standin.add_contact()
    until = standin.contact(first)["SystemModstamp"]
    while datetime.now(UTC) < until + timedelta(seconds=1):  # stamps are whole seconds
        time.sleep(0.01)
    standin.add_contact()  # stamped in a later second: after `until`

    changes = list(client.changed_contacts(start, until))

    assert [c["Id"] for c in changes] == [first]


def test_get_contacts_by_id(standin, client):
    ids = [standin.add_contact(LastName=f"C{n}") for n in range(5)]
    standin.delete_contact(ids[4])

    found = client.get_contacts([ids[0], ids[2], ids[4]], ["LastName"])

    assert sorted(c["Id"] for c in found) == sorted([ids[0], ids[2]])


def test_updated_contact_ids(standin, client):
    start = datetime.now(UTC) - timedelta(seconds=1)
    contact_id = standin.add_contact()
    end = datetime.now(UTC) + timedelta(seconds=1)

    ids, covered = client.updated_contact_ids(start, end)

    assert ids == [contact_id]
    assert abs(covered - end) < timedelta(seconds=1)


def test_changed_contacts_refuses_field_names_that_are_not_api_names(client):
    with pytest.raises(ValueError):
        list(client.changed_contacts(datetime.now(UTC), None, ["Id FROM User --"]))


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SALESFORCE_LOGIN_URL", "http://login.salesforce.com"),
        ("SALESFORCE_AUTH", "password"),
        ("SALESFORCE_CLIENT_SECRET", ""),
        ("SALESFORCE_TIMEOUT", "soon"),
        ("SALESFORCE_CA_BUNDLE", "/nowhere/ca.pem"),
    ],
)
def test_misconfiguration_is_refused_at_once(sf_settings, name, value):
    setattr(sf_settings, name, value)

    with pytest.raises(ImproperlyConfigured):
        SalesforceClient()


def test_settings_have_working_defaults_and_hide_secrets(settings):
    for name in ("SALESFORCE_API_VERSION", "SALESFORCE_TIMEOUT"):
        if hasattr(settings, name):
            delattr(settings, name)
    settings.SALESFORCE_LOGIN_URL = "https://example.my.salesforce.com/"
    settings.SALESFORCE_CLIENT_ID = "id"
    settings.SALESFORCE_CLIENT_SECRET = "very-secret"

    config = SalesforceSettings.from_django()

    assert config.login_url == "https://example.my.salesforce.com"
    assert config.api_version == "60.0"
    assert config.task_external_id == "Preference_Change_Id__c"
    assert "very-secret" not in repr(config)


def test_there_is_no_default_login_url_since_salesforce_needs_the_orgs_own(settings):
    settings.SALESFORCE_LOGIN_URL = ""
    settings.SALESFORCE_CLIENT_ID = "id"
    settings.SALESFORCE_CLIENT_SECRET = "secret"

    with pytest.raises(ImproperlyConfigured, match="My Domain URL"):
        SalesforceSettings.from_django()
