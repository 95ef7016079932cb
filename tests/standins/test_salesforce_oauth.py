"""The stand-in's OAuth is Salesforce's as documented, on the org's two hosts: its My Domain
(the stand-in's ``url``) and the generic login host (``login_url``, for
login.salesforce.com), over real HTTPS.

- "OAuth 2.0 Client Credentials Flow for Server-to-Server Integration": only the My Domain
  takes a client-credentials token request; the login host refuses it with ``invalid_grant``
  "request not supported on this domain".
- "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration": ``aud`` is
  https://login.salesforce.com, https://test.salesforce.com or an Experience Cloud site URL,
  never the My Domain URL; otherwise ``invalid_grant`` "audience is invalid".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from standins.salesforce import (
    DEFAULT_JWT_AUDIENCES,
    JWT_GRANT,
    SECRET_HEADER,
    SalesforceStandIn,
    running_standin,
    standin_process,
)
from tests.standins.salesforce_api import API, TOKEN, client_credentials, http

SITE = "https://alumni.my.site.com/community"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def standin(rsa_key: rsa.RSAPrivateKey) -> Iterator[SalesforceStandIn]:
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with running_standin(jwt_public_key=public, jwt_username="sync@u.edu") as server:
        yield server


def _assertion(server: Any, key: rsa.RSAPrivateKey, aud: str) -> str:
    claims = {
        "iss": server.client_id,
        "sub": "sync@u.edu",
        "aud": aud,
        "exp": int(time.time()) + 180,
    }
    return jwt.encode(claims, key, algorithm="RS256")


def _jwt_login(server: Any, key: rsa.RSAPrivateKey, aud: str, url: str) -> Any:
    return http(server).post(
        url + TOKEN,
        data={"grant_type": JWT_GRANT, "assertion": _assertion(server, key, aud)},
    )


# --- two hosts --------------------------------------------------------------------------------


def test_the_standin_is_the_my_domain_and_also_listens_as_the_login_host(standin):
    assert standin.login_url.startswith("https://127.0.0.1:")
    assert standin.login_url != standin.url


def test_client_credentials_work_against_the_my_domain(standin):
    response = client_credentials(standin)

    assert response.status_code == 200
    assert response.json()["instance_url"] == standin.url


def test_client_credentials_at_the_login_host_are_refused_as_salesforce_refuses_them(standin):
    response = client_credentials(standin, standin.login_url)

    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "request not supported on this domain",
    }
    assert standin.call_log == [("POST", TOKEN)]  # logged like any token request
    assert standin.api_calls == 0


def test_the_login_host_serves_the_token_endpoint_only(standin):
    session = http(standin)
    session.headers["Authorization"] = (
        "Bearer " + client_credentials(standin).json()["access_token"]
    )

    api_call = session.get(f"{standin.login_url}{API}/sobjects/Contact/describe")
    control = session.get(
        standin.login_url + "/__standin__/state",
        headers={SECRET_HEADER: standin.client_secret},
    )

    assert api_call.status_code == 404
    assert control.status_code == 404
    assert session.get(f"{standin.url}{API}/sobjects/Contact/describe").status_code == 200


def test_a_fault_on_the_token_path_meets_the_login_host_too(standin, rsa_key):
    standin.fail("http_503", times=1, path_contains=TOKEN)

    refused = _jwt_login(standin, rsa_key, "https://login.salesforce.com", standin.login_url)
    accepted = _jwt_login(standin, rsa_key, "https://login.salesforce.com", standin.login_url)

    assert (refused.status_code, accepted.status_code) == (503, 200)


# --- JWT bearer audiences ---------------------------------------------------------------------


def test_by_default_the_login_and_test_hosts_are_the_audiences():
    assert DEFAULT_JWT_AUDIENCES == ("https://login.salesforce.com", "https://test.salesforce.com")


@pytest.mark.parametrize(
    "aud", ["https://login.salesforce.com", "https://test.salesforce.com", "login-host"]
)
@pytest.mark.parametrize("host", ["my-domain", "login-host"])
def test_a_jwt_for_the_login_or_test_host_signs_in_at_either_host(standin, rsa_key, aud, host):
    audience = standin.login_url if aud == "login-host" else aud
    url = standin.login_url if host == "login-host" else standin.url

    response = _jwt_login(standin, rsa_key, audience, url)

    assert response.status_code == 200, response.text
    assert response.json()["instance_url"] == standin.url  # the org's My Domain, always
    session = http(standin)
    session.headers["Authorization"] = "Bearer " + response.json()["access_token"]
    assert session.get(f"{standin.url}{API}/sobjects/Task/describe").status_code == 200


@pytest.mark.parametrize("aud", ["my-domain", "my-domain/", "https://login.example.com"])
def test_a_jwt_for_any_other_audience_is_refused(standin, rsa_key, aud):
    audience = {"my-domain": standin.url, "my-domain/": standin.url + "/"}.get(aud, aud)

    response = _jwt_login(standin, rsa_key, audience, standin.url)

    assert response.status_code == 400
    assert response.json() == {"error": "invalid_grant", "error_description": "audience is invalid"}


def test_an_experience_cloud_site_is_an_audience_when_the_org_has_it(rsa_key):
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with running_standin(jwt_public_key=public, jwt_audiences=[SITE]) as server:
        site = _jwt_login(server, rsa_key, SITE, server.url)
        login = _jwt_login(server, rsa_key, "https://login.salesforce.com", server.url)

    assert site.status_code == 200
    assert login.status_code == 400  # this org was told to accept its site only


def test_configuring_the_my_domain_as_an_audience_does_not_make_it_one(rsa_key):
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with running_standin(jwt_public_key=public) as server:
        server.oauth.jwt_audiences = (*DEFAULT_JWT_AUDIENCES, server.url)

        response = _jwt_login(server, rsa_key, server.url, server.url)

    assert response.json()["error_description"] == "audience is invalid"


def test_a_standin_in_another_process_names_its_login_host():
    with standin_process() as remote:
        login_url = remote.login_url
        refused = client_credentials(remote, login_url)
        accepted = client_credentials(remote)

    assert login_url.startswith("https://127.0.0.1:") and login_url != remote.url
    assert refused.json()["error_description"] == "request not supported on this domain"
    assert accepted.status_code == 200
