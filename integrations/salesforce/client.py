"""The Salesforce connector: sign in, push contacts' preferences and notes, read changes.

Built on simple-salesforce, which always speaks https, sets no timeout and re-logs in only
when it did the login itself. So this module obtains tokens itself (OAuth client
credentials, or the JWT bearer flow for production) from ``SALESFORCE_LOGIN_URL``, hands
simple-salesforce a ``requests.Session`` with timeouts and the CA bundle, signs in again
once when a session has expired, and classifies every failure as transient or permanent
(integrations/base.py). It does not retry otherwise: the sync core owns the retry policy.

The same code runs against the stand-in (``standins.salesforce``): only the login URL, the
credentials and the CA bundle differ. A client is meant for one thread (one task run); the
access token is shared by every client in the process, since Salesforce limits logins.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import jwt
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError as LibraryError
from simple_salesforce.exceptions import SalesforceOperationError

from integrations import base
from integrations.base import ConnectorError, PermanentError, TimeoutSession, TransientError
from lib.salesforce_ids import SALESFORCE_ID

logger = logging.getLogger(__name__)

MAX_RECORDS = 200  # sObject Collections take at most 200 records a call
_MAX_COLLECTIONS_PER_CALL = 5  # composite: at most 5 collection subrequests of its 25
_IDS_PER_QUERY = 200  # keeps "Id IN (...)" far below SOQL's 100,000-character limit
BULK_PAGE_SIZE = 50_000  # rows per Bulk API 2.0 result page (the API's own default)
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")

AuthFlow = Literal["client_credentials", "jwt"]
# superseded: Salesforce refused the write because it holds a newer version of the contact
# (the ordering guard, docs/design.md "Sent is not held"); nothing is lost.
PushStatus = Literal["ok", "superseded", "transient", "permanent"]
# The validation rule's message starts with this (README, "Salesforce set-up").
SUPERSEDED_MARKER = "PD_SUPERSEDED"
# A gateway in front of Salesforce may answer these after giving up on a request that
# Salesforce goes on running.
_GATEWAY_GAVE_UP = frozenset({500, 502, 504})
T = TypeVar("T")


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SalesforceSettings:
    """Where and how to reach Salesforce. Secrets stay out of repr()."""

    login_url: str = "https://login.salesforce.com"
    auth: AuthFlow = "client_credentials"
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    username: str = ""  # the integration user the JWT bearer flow signs in as
    private_key: str = field(default="", repr=False)  # PEM text, or a path to a PEM file
    ca_bundle: str = ""  # empty: the system's CAs
    api_version: str = "60.0"
    timeout: float = 30.0  # seconds to wait for Salesforce to answer (read timeout)
    connect_timeout: float = 5.0
    task_external_id: str = "Preference_Change_Id__c"
    jwt_audience: str = ""  # empty: the login URL
    # The Contact field each push writes the contact's version to, which the org's
    # validation rule keeps from going down; empty: the org has no such field.
    version_field: str = "Preference_Version__c"

    def __post_init__(self) -> None:
        url = urlsplit(self.login_url)
        if url.scheme != "https" or not url.hostname:
            raise ImproperlyConfigured("SALESFORCE_LOGIN_URL must be an https:// URL")
        if self.auth not in ("client_credentials", "jwt"):
            raise ImproperlyConfigured("SALESFORCE_AUTH must be 'client_credentials' or 'jwt'")
        if not self.client_id:
            raise ImproperlyConfigured("SALESFORCE_CLIENT_ID is required")
        if self.auth == "client_credentials" and not self.client_secret:
            raise ImproperlyConfigured(
                "SALESFORCE_CLIENT_SECRET is required for client_credentials"
            )
        if self.auth == "jwt" and not (self.username and self.private_key):
            raise ImproperlyConfigured(
                "SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY are required for jwt"
            )
        if not re.fullmatch(r"\d+\.\d", self.api_version):
            raise ImproperlyConfigured("SALESFORCE_API_VERSION looks like '60.0'")
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ImproperlyConfigured("SALESFORCE_TIMEOUT and _CONNECT_TIMEOUT must be > 0")
        if not _FIELD_NAME.match(self.task_external_id):
            raise ImproperlyConfigured("SALESFORCE_TASK_EXTERNAL_ID must be a field API name")
        if self.version_field and not _FIELD_NAME.match(self.version_field):
            raise ImproperlyConfigured("SALESFORCE_VERSION_FIELD must be a field API name")
        if self.ca_bundle and not Path(self.ca_bundle).exists():
            raise ImproperlyConfigured(f"SALESFORCE_CA_BUNDLE {self.ca_bundle} does not exist")

    @classmethod
    def from_django(cls) -> SalesforceSettings:
        def get(name: str, default: Any) -> Any:
            return getattr(settings, name, default)

        try:
            return cls(
                login_url=str(get("SALESFORCE_LOGIN_URL", cls.login_url)).rstrip("/"),
                auth=get("SALESFORCE_AUTH", cls.auth),
                client_id=str(get("SALESFORCE_CLIENT_ID", "")),
                client_secret=str(get("SALESFORCE_CLIENT_SECRET", "")),
                username=str(get("SALESFORCE_USERNAME", "")),
                private_key=str(get("SALESFORCE_PRIVATE_KEY", "")),
                ca_bundle=str(get("SALESFORCE_CA_BUNDLE", "") or ""),
                api_version=str(get("SALESFORCE_API_VERSION", cls.api_version)).lstrip("v"),
                timeout=float(get("SALESFORCE_TIMEOUT", cls.timeout)),
                connect_timeout=float(get("SALESFORCE_CONNECT_TIMEOUT", cls.connect_timeout)),
                task_external_id=str(get("SALESFORCE_TASK_EXTERNAL_ID", cls.task_external_id)),
                jwt_audience=str(get("SALESFORCE_JWT_AUDIENCE", "") or ""),
                version_field=str(get("SALESFORCE_VERSION_FIELD", cls.version_field) or ""),
            )
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"Salesforce settings: {exc}") from None

    def private_key_pem(self) -> str:
        value = self.private_key.strip()
        if value.startswith("-----BEGIN"):
            # An environment variable often carries the PEM on one line with literal "\n".
            return value.replace("\\n", "\n")
        return Path(value).read_text()


# --- errors ----------------------------------------------------------------------------------

# Salesforce's errorCode values, by what retrying them can do (network and TLS failures are
# classified the same way for every connector, in integrations/base.py).
TRANSIENT_CODES = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",
        "REQUEST_LIMIT_EXCEEDED",
        "INVALID_SESSION_ID",  # only reaches a caller when a fresh login did not help
        "SERVER_UNAVAILABLE",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",  # the record was fine; another one was not
        "PROCESSING_HALTED",
    }
)
PERMANENT_CODES = frozenset(
    {
        "INVALID_FIELD",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "ENTITY_IS_DELETED",
        "NOT_FOUND",
        "MALFORMED_QUERY",
        "MALFORMED_ID",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "INVALID_CROSS_REFERENCE_KEY",
        "FIELD_INTEGRITY_EXCEPTION",
        "DUPLICATE_EXTERNAL_ID",
        "INVALID_PRIVATE_KEY",
        "invalid_client",
        "invalid_client_id",
        "invalid_grant",
    }
)


def classify(status_code: int | None, error_code: str | None) -> type[ConnectorError]:
    """Transient or permanent, by Salesforce's error code first, then by HTTP status
    (None: no answer at all). A per-record error is classified as a 400 with its code."""
    return base.classify(
        status_code, error_code, transient=TRANSIENT_CODES, permanent=PERMANENT_CODES
    )


def _network_error(exc: OSError) -> ConnectorError:
    return base.network_error(exc, system="Salesforce", ca_setting="SALESFORCE_CA_BUNDLE")


class _SessionExpired(Exception):
    pass


# --- pushes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContactPush:
    """One contact's current state (absolute values) and the notes not yet in Salesforce.

    ``tasks``: Task fields by API name, each with its external id value under the
    SALESFORCE_TASK_EXTERNAL_ID field (``note_task()`` builds one). WhoId defaults to this
    contact and Status to Completed; dates may be ``date`` objects.
    """

    salesforce_id: str
    fields: dict[str, bool]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    version: int | None = None  # the app's version of the contact these values are


@dataclass(frozen=True)
class PushResult:
    salesforce_id: str
    status: PushStatus
    code: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def held(self) -> bool:
        """Salesforce holds these values or newer ones."""
        return self.status in ("ok", "superseded")


def note_task(
    *,
    change_id: str,
    who_id: str,
    subject: str,
    description: str,
    activity_date: date,
    external_id_field: str | None = None,
) -> dict[str, Any]:
    """The Task that carries a change's note to Salesforce, upserted on the change's id."""
    name = external_id_field or str(
        getattr(settings, "SALESFORCE_TASK_EXTERNAL_ID", SalesforceSettings.task_external_id)
    )
    return {
        name: change_id,
        "WhoId": who_id,
        "Subject": subject[:255],  # Task.Subject holds 255 characters
        "Description": description,
        "ActivityDate": activity_date.isoformat(),
        "Status": "Completed",
    }


# --- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Session:
    access_token: str = field(repr=False)
    instance_url: str
    # The run-as user, from the identity URL (".../id/<org id>/<user id>"): what the app
    # itself wrote carries it as LastModifiedById.
    user_id: str = ""


_sessions: base.TokenCache[_Session] = base.TokenCache()


def forget_sessions() -> None:
    """Drop cached access tokens (tests; or after rotating credentials)."""
    _sessions.forget()


# --- the client ------------------------------------------------------------------------------


class SalesforceClient:
    """One connection to Salesforce (for one thread). Use as a context manager or close()."""

    def __init__(self, config: SalesforceSettings | None = None) -> None:
        self.config = config or SalesforceSettings.from_django()
        self._http = TimeoutSession(
            (self.config.connect_timeout, self.config.timeout), self.config.ca_bundle or True
        )
        self._http.hooks["response"].append(self._remember_usage)
        self._api: Salesforce | None = None
        self._usage: tuple[int, int] | None = None
        self.user_id = ""  # known once connected

    def __enter__(self) -> SalesforceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- session ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Have a session: the process's cached token, or a fresh login."""
        self._open()

    def _open(self, *, expired: str | None = None) -> Salesforce:
        config = self.config
        session = _sessions.get(
            (config.login_url, config.auth, config.client_id, config.username),
            fresh=self._login,
            stale=lambda cached: cached.access_token == expired,
        )
        self.user_id = session.user_id
        self._api = Salesforce(
            instance_url=session.instance_url,
            session_id=session.access_token,
            session=self._http,
            version=config.api_version,
            object_pairs_hook=dict,
        )
        # Pretty-printed answers only make a 200-record composite response bigger.
        self._api.headers.pop("X-PrettyPrint", None)
        return self._api

    def _login(self) -> _Session:
        config = self.config
        url = config.login_url.rstrip("/") + "/services/oauth2/token"
        try:
            response = self._http.post(
                url, data=self._token_form(), headers={"Accept": "application/json"}
            )
        except OSError as exc:  # requests' own errors included
            raise _network_error(exc) from exc
        body = base.token_answer(response, classify, refused="login refused")
        token, instance_url = body.get("access_token"), body.get("instance_url")
        if not isinstance(token, str) or not token or not isinstance(instance_url, str):
            raise PermanentError("INVALID_RESPONSE", "the token response lacks a token")
        if urlsplit(instance_url).scheme != "https":
            raise PermanentError("INVALID_RESPONSE", f"instance_url is not https: {instance_url}")
        logger.info("Signed in to Salesforce (%s) at %s", config.auth, instance_url)
        identity = body.get("id")
        user_id = identity.rstrip("/").rsplit("/", 1)[-1] if isinstance(identity, str) else ""
        return _Session(token, instance_url, user_id)

    def _token_form(self) -> dict[str, str]:
        config = self.config
        if config.auth == "client_credentials":
            return {
                "grant_type": "client_credentials",
                "client_id": config.client_id,
                "client_secret": config.client_secret,
            }
        claims = {
            "iss": config.client_id,
            "sub": config.username,
            "aud": config.jwt_audience or config.login_url.rstrip("/"),
            # Salesforce accepts assertions that expire within 3 minutes.
            "exp": int((datetime.now(UTC) + timedelta(minutes=3)).timestamp()),
        }
        try:
            assertion = jwt.encode(claims, config.private_key_pem(), algorithm="RS256")
        except (OSError, ValueError, TypeError, jwt.PyJWTError):
            # "from None": the underlying error may quote the key material.
            raise PermanentError(
                "INVALID_PRIVATE_KEY", "SALESFORCE_PRIVATE_KEY is not a readable RSA private key"
            ) from None
        return {"grant_type": _JWT_GRANT, "assertion": assertion}

    def _call(self, operation: Callable[[Salesforce], T]) -> T:
        """Run one API call; on an expired session sign in again once and repeat it (a 401
        means Salesforce did nothing, so repeating is safe)."""
        api = self._api or self._open()
        try:
            return _translated(operation, api)
        except _SessionExpired:
            logger.info("Salesforce session expired; signing in again")
        api = self._open(expired=api.session_id)
        try:
            return _translated(operation, api)
        except _SessionExpired as exc:
            raise TransientError("INVALID_SESSION_ID", str(exc), 401) from None

    def _remember_usage(self, response: Any, *args: Any, **kwargs: Any) -> None:
        match = _LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self._usage = (int(match[1]), int(match[2]))

    def api_usage(self) -> tuple[int, int] | None:
        """(used, allowance) of the org's daily API calls, from the last answer that said."""
        return self._usage

    # -- outbound ----------------------------------------------------------------------------

    def push(self, records: Sequence[ContactPush]) -> list[PushResult]:
        """Update up to 200 contacts and upsert their note Tasks in one composite call.

        Returns one result per contact, in order: ok; superseded (the org's ordering rule
        refused it because Salesforce holds a newer version); or failed with Salesforce's
        code and message — transient for UNABLE_TO_LOCK_ROW, permanent otherwise. A contact
        whose Task failed is failed too (a repeat push is harmless: absolute values, upserts).
        Each contact's version goes in the version field, when the org has one.
        Raises TransientError / PermanentError when the call as a whole fails. Only past
        800 tasks does it need a second call.
        """
        if not records:
            return []
        if len(records) > MAX_RECORDS:
            raise ValueError(f"push at most {MAX_RECORDS} contacts at a time")
        ids = [record.salesforce_id for record in records]
        for salesforce_id in ids:
            _check_id(salesforce_id)
        if len(set(ids)) != len(ids):
            raise ValueError("each contact may appear once in a push")
        for record in records:
            for name in record.fields:
                if not _FIELD_NAME.match(name) or name.lower() == "id":
                    raise ValueError(f"not a Contact field to update: {name!r}")

        external_id = self.config.task_external_id
        version_field = self.config.version_field
        contacts = [
            {
                "attributes": {"type": "Contact"},
                "id": record.salesforce_id,
                **record.fields,
                **(
                    {version_field: record.version}
                    if version_field and record.version is not None
                    else {}
                ),
            }
            for record in records
        ]
        tasks: dict[str, dict[str, Any]] = {}
        owners: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            for task in record.tasks:
                body = self._task_record(task, record.salesforce_id)
                tasks[body[external_id]] = body  # the same note twice: send it once
                owners.setdefault(body[external_id], []).append(index)

        version = self.config.api_version
        subrequests: list[tuple[str, str, list[dict[str, Any]]]] = [
            ("contacts", f"/services/data/v{version}/composite/sobjects", contacts)
        ]
        task_list = list(tasks.values())
        for number, start in enumerate(range(0, len(task_list), MAX_RECORDS)):
            subrequests.append(
                (
                    f"tasks{number}",
                    f"/services/data/v{version}/composite/sobjects/Task/{external_id}",
                    task_list[start : start + MAX_RECORDS],
                )
            )

        outcomes: list[tuple[PushStatus, str, str]] = [("ok", "", "")] * len(records)
        for start in range(0, len(subrequests), _MAX_COLLECTIONS_PER_CALL):
            batch = subrequests[start : start + _MAX_COLLECTIONS_PER_CALL]
            body = {
                "allOrNone": False,
                "compositeRequest": [
                    {
                        "method": "PATCH",
                        "url": url,
                        "referenceId": reference,
                        "body": {"allOrNone": False, "records": sub_records},
                    }
                    for reference, url, sub_records in batch
                ],
            }
            response = self._call(
                partial(Salesforce.restful, path="composite", method="POST", json=body)
            )
            for reference, _url, sub_records in batch:
                results = _subrequest_results(response, reference, len(sub_records))
                for position, (sub_record, result) in enumerate(
                    zip(sub_records, results, strict=True)
                ):
                    outcome = _record_outcome(result, version_field)
                    if reference == "contacts":
                        targets = [position]  # the contacts subrequest is in push order
                    else:
                        key = sub_record[external_id]
                        targets = owners[key]
                        if outcome[0] != "ok":
                            outcome = (outcome[0], outcome[1], f"Task {key}: {outcome[2]}")
                    for index in targets:
                        outcomes[index] = _worse(outcomes[index], outcome)
        return [
            PushResult(salesforce_id, status, code, message)
            for salesforce_id, (status, code, message) in zip(ids, outcomes, strict=True)
        ]

    def _task_record(self, task: Mapping[str, Any], who_id: str) -> dict[str, Any]:
        name = self.config.task_external_id
        value = task.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"every task needs its {name} value")
        record: dict[str, Any] = {
            "attributes": {"type": "Task"},
            "WhoId": who_id,
            "Status": "Completed",
        }
        for key, field_value in task.items():
            if key != "attributes":
                record[key] = (
                    field_value.isoformat() if isinstance(field_value, date) else field_value
                )
        return record

    # -- inbound -----------------------------------------------------------------------------

    def changed_contacts(
        self,
        since: datetime,
        until: datetime | None = None,
        fields: Iterable[str] = (),
        *,
        include_deleted: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Contacts whose SystemModstamp is in (since, until], oldest first (ties by Id),
        across as many pages as it takes. Each is a dict of the fields asked for plus Id,
        SystemModstamp (an aware datetime) and LastModifiedById (tells the app's own writes
        from others').

        Real Salesforce stores SystemModstamp to the second and stamps a transaction when it
        starts, so a later-committing write can carry an earlier stamp: pass an ``until`` a
        little in the past and resume from the last stamp seen.
        """
        names = _field_list(["Id", "SystemModstamp", "LastModifiedById", *fields])
        where = f"SystemModstamp > {_soql_datetime(since)}"
        if until is not None:
            where += f" AND SystemModstamp <= {_soql_datetime(until)}"
        soql = f"SELECT {', '.join(names)} FROM Contact WHERE {where} ORDER BY SystemModstamp, Id"
        return self._query(soql, include_deleted)

    def get_contacts(
        self, salesforce_ids: Iterable[str], fields: Iterable[str]
    ) -> list[dict[str, Any]]:
        """The named contacts that exist (deleted ones left out), 200 ids a query."""
        ids = list(dict.fromkeys(salesforce_ids))
        for salesforce_id in ids:
            _check_id(salesforce_id)
        names = _field_list(["Id", "SystemModstamp", "LastModifiedById", *fields])
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), _IDS_PER_QUERY):
            quoted = ", ".join(f"'{i}'" for i in ids[start : start + _IDS_PER_QUERY])
            soql = f"SELECT {', '.join(names)} FROM Contact WHERE Id IN ({quoted})"
            found.extend(self._query(soql, include_deleted=False))
        return found

    def get_contact(self, salesforce_id: str, fields: Iterable[str]) -> dict[str, Any]:
        """One contact's fields; PermanentError NOT_FOUND / ENTITY_IS_DELETED if gone."""
        _check_id(salesforce_id)
        names = _field_list(["Id", *fields])
        body = self._call(
            lambda api: api.restful(
                f"sobjects/Contact/{salesforce_id}", params={"fields": ",".join(names)}
            )
        )
        if not isinstance(body, dict):
            raise PermanentError("INVALID_RESPONSE", "expected a contact record")
        return _plain(body)

    def updated_contact_ids(self, start: datetime, end: datetime) -> tuple[list[str], datetime]:
        """getUpdated: ids of contacts changed in [start, end], and the latest date covered."""
        params = {"start": _iso(start), "end": _iso(end)}
        body = self._call(lambda api: api.restful("sobjects/Contact/updated/", params=params))
        if not isinstance(body, dict):
            raise PermanentError("INVALID_RESPONSE", "expected ids and latestDateCovered")
        return list(body.get("ids", [])), _parse_datetime(str(body["latestDateCovered"]))

    def bulk_query(
        self, object_name: str, fields: Iterable[str], *, page_size: int = BULK_PAGE_SIZE
    ) -> Iterator[str]:
        """Every record of an object through a Bulk API 2.0 query job, page by page: CSV
        text, header row first, booleans as true/false (Bulk API 2.0 Developer Guide, "Get
        Results for a Query Job"). A handful of calls for millions of rows, where the REST
        query would spend one call per 2,000. Through simple-salesforce's bulk2 client,
        on this client's session and timeouts. A session that expires before the first page
        starts the job again (a query job only reads); after it, the reading fails as
        transient, since the caller holds part of the result."""
        if not _FIELD_NAME.match(object_name):
            raise ValueError(f"not a Salesforce object name: {object_name!r}")
        soql = f"SELECT {', '.join(_field_list(fields))} FROM {object_name}"
        yielded = False
        for attempt in (1, 2):
            api = self._api or self._open()
            pages = getattr(api.bulk2, object_name).query(soql, max_records=page_size, wait=1)
            try:
                while True:
                    try:
                        page = _translated(partial(_next_page, pages), api)
                    except StopIteration:
                        return
                    yielded = True
                    yield page
            except _SessionExpired:
                if yielded or attempt == 2:
                    raise TransientError("INVALID_SESSION_ID", "session expired", 401) from None
                logger.info("Salesforce session expired before a bulk query's first page")
                self._open(expired=api.session_id)

    def _query(self, soql: str, include_deleted: bool) -> Iterator[dict[str, Any]]:
        # Pages one at a time, each call with its own re-login, rather than
        # simple-salesforce's query_all_iter, whose later pages would escape _call.
        page = self._call(lambda api: api.query(soql, include_deleted=include_deleted))
        while True:
            for record in page.get("records", []):
                yield _plain(record)
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return
            next_url = page["nextRecordsUrl"]
            page = self._call(
                partial(
                    Salesforce.query_more, next_records_identifier=next_url, identifier_is_url=True
                )
            )


# --- helpers ---------------------------------------------------------------------------------


def _translated(operation: Callable[[Salesforce], T], api: Salesforce) -> T:
    try:
        return operation(api)
    except LibraryError as exc:
        code, message = _error_detail(exc.content, exc.status)
        if exc.status == 401 and code == "INVALID_SESSION_ID":
            raise _SessionExpired(message) from exc
        unknown = exc.status in _GATEWAY_GAVE_UP  # it may still be running in Salesforce
        raise classify(exc.status, code)(
            code, message, exc.status, outcome_unknown=unknown
        ) from exc
    except SalesforceOperationError as exc:  # a Bulk API job that failed or was aborted
        raise PermanentError("BULK_JOB_FAILED", str(exc)[:500]) from exc
    except OSError as exc:  # requests' own errors included
        raise _network_error(exc) from exc


def _next_page(pages: Iterator[str], _api: Salesforce) -> str:
    return next(pages)


def _error_detail(content: Any, status: int | None) -> tuple[str, str]:
    code: Any = None
    message: Any = None
    if isinstance(content, list) and content and isinstance(content[0], dict):
        code = content[0].get("errorCode") or content[0].get("statusCode")
        message = content[0].get("message")
    elif isinstance(content, dict):
        code = content.get("errorCode") or content.get("error")
        message = content.get("message") or content.get("error_description")
    if message is None:
        raw = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        message = raw[:500]
    return str(code or f"HTTP_{status}"), str(message)


def _subrequest_results(response: Any, reference: str, expected: int) -> list[Mapping[str, Any]]:
    entries = response.get("compositeResponse") if isinstance(response, dict) else None
    entry = next(
        (e for e in entries or [] if isinstance(e, dict) and e.get("referenceId") == reference),
        None,
    )
    if entry is None:
        raise PermanentError("INVALID_RESPONSE", f"no answer for subrequest {reference}")
    status = int(entry.get("httpStatusCode") or 0)
    body = entry.get("body")
    if status >= 400:
        code, message = _error_detail(body, status)
        raise classify(status, code)(code, message, status)
    if not isinstance(body, list) or len(body) != expected:
        raise PermanentError("INVALID_RESPONSE", f"expected {expected} results for {reference}")
    return body


def _record_outcome(
    result: Mapping[str, Any], version_field: str = ""
) -> tuple[PushStatus, str, str]:
    if result.get("success"):
        return ("ok", "", "")
    errors = result.get("errors") or [{}]
    first = errors[0] if isinstance(errors[0], dict) else {}
    code = str(first.get("statusCode") or "UNKNOWN_EXCEPTION")
    message = str(first.get("message") or "")
    fields = [str(name) for name in first.get("fields") or []]
    if code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" and (
        message.startswith(SUPERSEDED_MARKER) or (version_field and version_field in fields)
    ):
        return ("superseded", code, message)
    if fields:
        message += f" (fields: {', '.join(fields)})"
    status: PushStatus = "transient" if classify(400, code) is TransientError else "permanent"
    return (status, code, message)


_SEVERITY = {"ok": 0, "superseded": 1, "transient": 2, "permanent": 3}


def _worse(
    current: tuple[PushStatus, str, str], new: tuple[PushStatus, str, str]
) -> tuple[PushStatus, str, str]:
    return new if _SEVERITY[new[0]] > _SEVERITY[current[0]] else current


def _check_id(value: str) -> None:
    # Ids go into URLs and SOQL: anything but a Salesforce Id is refused outright.
    if not SALESFORCE_ID.match(value):
        raise ValueError(f"not a Salesforce Id: {value!r}")


def _field_list(names: Iterable[str]) -> list[str]:
    result: dict[str, str] = {}
    for name in names:
        if not _FIELD_NAME.match(name):
            raise ValueError(f"not a Salesforce field name: {name!r}")
        result.setdefault(name.lower(), name)  # SOQL refuses a field selected twice
    return list(result.values())


def _soql_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("use an aware datetime")
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("use an aware datetime")
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _parse_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    plain = {key: value for key, value in record.items() if key != "attributes"}
    if isinstance(plain.get("SystemModstamp"), str):
        plain["SystemModstamp"] = _parse_datetime(plain["SystemModstamp"])
    return plain
