"""What the newer Salesforce stand-in tests share: an HTTPS session that verifies the
stand-in's CA, a signed-in API session, SOQL dateTime literals, and reading a query through
the REST API or a Bulk API 2.0 job. Each is written against the protocol, not the
connector, so a connector bug cannot hide a stand-in bug."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

API = "/services/data/v60.0"
TOKEN = "/services/oauth2/token"


def http(server: Any) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides session.verify
    session.verify = server.ca_path
    return session


def client_credentials(server: Any, url: str | None = None) -> requests.Response:
    return http(server).post(
        (url or server.url) + TOKEN,
        data={
            "grant_type": "client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
        },
    )


def api(server: Any) -> requests.Session:
    response = client_credentials(server)
    assert response.status_code == 200, response.text
    session = http(server)
    session.headers["Authorization"] = "Bearer " + response.json()["access_token"]
    return session


def soql_time(value: datetime) -> str:
    """A SOQL dateTime literal as the SOQL reference documents it: whole seconds, UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_second(stamp: datetime) -> datetime:
    """The first whole second after a stamp, once the clock has reached it.

    SystemModstamp is stored to the whole second, as a real org stores it, so writes made
    within one second share a stamp: only a record written from now on is stamped after
    ``stamp`` (at this second or later)."""
    boundary = stamp.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    while datetime.now(UTC) < boundary:
        time.sleep(0.01)
    return boundary


def window_start(stamp: datetime) -> str:
    """A record's SystemModstamp as the lower bound of a window ``SystemModstamp > since``
    (a SOQL literal: whole seconds, as the stamp is), once the clock has moved past its
    second: records written up to now are outside the window, those written from now on
    inside it."""
    assert stamp.microsecond == 0, f"not a whole-second stamp: {stamp}"
    next_second(stamp)
    return soql_time(stamp)


def query(
    session: requests.Session, server: Any, soql: str, endpoint: str = "query"
) -> requests.Response:
    return session.get(f"{server.url}{API}/{endpoint}/", params={"q": soql})


def records(session: requests.Session, server: Any, soql: str, endpoint: str = "query") -> list:
    response = query(session, server, soql, endpoint)
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def bulk_job(
    session: requests.Session, server: Any, soql: str, operation: str = "query"
) -> requests.Response:
    return session.post(
        f"{server.url}{API}/jobs/query", json={"operation": operation, "query": soql}
    )


def bulk_rows(
    session: requests.Session, server: Any, soql: str, operation: str = "query"
) -> list[dict[str, str]]:
    """Every row a Bulk API 2.0 query job answers, as CSV dicts."""
    created = bulk_job(session, server, soql, operation)
    assert created.status_code == 200, created.text
    job = f"{server.url}{API}/jobs/query/{created.json()['id']}"
    assert session.get(job).json()["state"] == "JobComplete"
    results = session.get(job + "/results")
    assert results.status_code == 200, results.text
    return list(csv.DictReader(io.StringIO(results.text)))


def error_code(response: requests.Response) -> str:
    return str(response.json()[0]["errorCode"])
