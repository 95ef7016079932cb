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
import time
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
from simple_salesforce.bulk2 import Operation
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
_BULK_WAIT_SECONDS = 3600.0  # how long wait_for_bulk_query waits for a job by default
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
# Salesforce's shared login hosts. The client credentials flow is refused there: it needs
# the org's My Domain URL; and they are what a JWT bearer assertion's aud names (OAuth 2.0
# Client Credentials Flow / OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration).
_LOGIN_HOST = "https://login.salesforce.com"
_TEST_HOST = "https://test.salesforce.com"
_GENERIC_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})

AuthFlow = Literal["client_credentials", "jwt"]
# How a note's Task is matched to its change: upserted on an External ID field, or, in an
# org whose Activity field cannot be one, looked for with a query and created if missing.
TaskMatch = Literal["upsert", "query"]
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

    login_url: str = ""  # the org's My Domain URL, https://<domain>.my.salesforce.com
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
    jwt_audience: str = ""  # empty: login.salesforce.com (test. for a sandbox)
    # The Contact field each push writes the contact's version to, which the org's
    # validation rule keeps from going down; empty: the org has no such field.
    version_field: str = "Preference_Version__c"
    task_match: TaskMatch = "upsert"

    def __post_init__(self) -> None:
        url = urlsplit(self.login_url)
        if url.scheme != "https" or not url.hostname:
            raise ImproperlyConfigured(
                "SALESFORCE_LOGIN_URL must be the org's https:// My Domain URL, "
                "like https://example.my.salesforce.com"
            )
        if self.auth not in ("client_credentials", "jwt"):
            raise ImproperlyConfigured("SALESFORCE_AUTH must be 'client_credentials' or 'jwt'")
        if self.auth == "client_credentials" and url.hostname in _GENERIC_HOSTS:
            raise ImproperlyConfigured(
                f"SALESFORCE_LOGIN_URL is {url.hostname}, but Salesforce grants the client "
                "credentials flow only at the org's My Domain URL: set it to "
                "https://<your domain>.my.salesforce.com (Setup > My Domain shows it)"
            )
        audience = urlsplit(self.jwt_audience).hostname or ""
        if audience.endswith(".my.salesforce.com"):
            raise ImproperlyConfigured(
                f"SALESFORCE_JWT_AUDIENCE is {self.jwt_audience}, a My Domain URL, which "
                "Salesforce refuses as a JWT audience: leave it empty, or use "
                "https://login.salesforce.com, https://test.salesforce.com or the "
                "Experience Cloud site URL"
            )
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
        if self.task_match not in ("upsert", "query"):
            raise ImproperlyConfigured("SALESFORCE_TASK_MATCH must be 'upsert' or 'query'")
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
                task_match=get("SALESFORCE_TASK_MATCH", cls.task_match),
            )
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"Salesforce settings: {exc}") from None

    def audience(self) -> str:
        """The JWT bearer assertion's aud: the generic login host, never the My Domain URL
        the token is requested from (a sandbox's is test.salesforce.com)."""
        if self.jwt_audience:
            return self.jwt_audience.rstrip("/")
        host = urlsplit(self.login_url).hostname or ""
        if host == "test.salesforce.com" or host.endswith(".sandbox.my.salesforce.com"):
            return _TEST_HOST
        return _LOGIN_HOST

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

    ``object_name``: the sObject the record is (Contact, Lead, or Account for a Person
    Account); ``fields`` are that object's fields. ``tasks``: Task fields by API name, each
    with its change id under the SALESFORCE_TASK_EXTERNAL_ID field (``note_task()`` builds
    one). WhoId defaults to ``who_id``, else this record, and Status to Completed; dates may
    be ``date`` objects. A Person Account's Tasks name its PersonContactId: Task.WhoId
    takes a Contact or a Lead ("Task", Object Reference for the Salesforce Platform).
    ``version_field``: the field ``version`` goes to on this object; None:
    SALESFORCE_VERSION_FIELD; empty: none.
    """

    salesforce_id: str
    fields: dict[str, bool]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    version: int | None = None  # the app's version of the contact these values are
    object_name: str = "Contact"
    who_id: str = ""
    version_field: str | None = None


# What became of a contact's notes: all in Salesforce (sent, or found there), or not.
NotesStatus = Literal["ok", "transient", "permanent"]
# An sObject Collections request takes records of several types, processed in chunks of
# one type each, at most 10 a request ("Update Records Using sObject Collections").
_MAX_CHUNKS = 10


@dataclass(frozen=True)
class _Subrequest:
    """One sObject Collections subrequest of a composite call."""

    reference: str
    method: str
    url: str
    records: list[dict[str, Any]]


@dataclass(frozen=True)
class PushResult:
    """What Salesforce did with one record's fields (status, code, message) and, apart, with
    its notes (notes_status, notes_code, notes_message). With allOrNone false every
    subrequest of the composite call, and every record of a collection, stands on its own
    ("allOrNone Parameters in Composite and Collections Requests", REST API Developer
    Guide): a refused Task leaves the field update standing."""

    salesforce_id: str
    status: PushStatus
    code: str = ""
    message: str = ""
    notes_status: NotesStatus = "ok"
    notes_code: str = ""
    notes_message: str = ""

    @property
    def ok(self) -> bool:
        """The fields and every note landed."""
        return self.status == "ok" and self.notes_sent

    @property
    def held(self) -> bool:
        """Salesforce holds these values or newer ones (whatever became of the notes)."""
        return self.status in ("ok", "superseded")

    @property
    def notes_sent(self) -> bool:
        """Salesforce holds every note of this push."""
        return self.notes_status == "ok"


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
            "aud": config.audience(),
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
        """Update up to 200 records' fields and send their notes as Tasks in one composite
        call, allOrNone false.

        Returns one result per record, in order. Its fields: ok; superseded (the org's
        ordering rule refused them because Salesforce holds a newer version); or failed
        with Salesforce's code and message, transient for UNABLE_TO_LOCK_ROW and the like,
        permanent otherwise. Its notes apart (notes_status): with allOrNone false a failed
        subrequest or record does not undo the others ("allOrNone Parameters in Composite
        and Collections Requests"), so a refused Task leaves the fields held. A repeat is
        harmless: absolute values, and Tasks matched on their change id.

        Notes go by SALESFORCE_TASK_MATCH: "upsert" on the change id's External ID field
        ("Upsert Records Using sObject Collections"); "query", for an org where that Task
        field cannot be an External ID: the Tasks already carrying these change ids are
        queried first (200 ids a query) and only the missing ones created ("Create Records
        Using sObject Collections"). In query mode the caller must hold back the notes of a
        contact whose earlier push may still land (docs/design.md, "Sent is not held"):
        the query cannot see a Task that request has yet to create.

        Contacts, Leads and Person Accounts share one update, grouped by object: Salesforce
        processes a mixed list in chunks of one type, at most 10 a request ("Update Records
        Using sObject Collections"). Each record's version goes to its version field.
        Raises TransientError / PermanentError when the call as a whole, or the records'
        subrequest, fails. Only past 800 tasks does it need a second call.
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
            _check_object(record.object_name)
            if record.who_id:
                _check_id(record.who_id)
            for name in [*record.fields, record.version_field or ""]:
                if name and (not _FIELD_NAME.match(name) or name.lower() == "id"):
                    raise ValueError(f"not a {record.object_name} field to update: {name!r}")
        # Each object's records together, in push order within it: one chunk per object.
        rank: dict[str, int] = {}
        for record in records:
            rank.setdefault(record.object_name, len(rank))
        if len(rank) > _MAX_CHUNKS:
            raise ValueError(f"push at most {_MAX_CHUNKS} objects at a time")
        order = sorted(range(len(records)), key=lambda i: rank[records[i].object_name])

        external_id = self.config.task_external_id
        contacts = [self._update_record(records[index]) for index in order]
        tasks: dict[str, dict[str, Any]] = {}
        owners: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            for task in record.tasks:
                body = self._task_record(task, record.who_id or record.salesforce_id)
                tasks[body[external_id]] = body  # the same note twice: send it once
                owners.setdefault(body[external_id], []).append(index)

        prefix = f"/services/data/v{self.config.api_version}/composite/sobjects"
        if self.config.task_match == "query":
            present = self._tasks_present(list(tasks))
            sending = [body for key, body in tasks.items() if key.lower() not in present]
            task_method, task_url = "POST", prefix
        else:
            sending = list(tasks.values())
            task_method, task_url = "PATCH", f"{prefix}/Task/{external_id}"
        subrequests = [_Subrequest("contacts", "PATCH", prefix, contacts)]
        for number, start in enumerate(range(0, len(sending), MAX_RECORDS)):
            chunk = sending[start : start + MAX_RECORDS]
            subrequests.append(_Subrequest(f"tasks{number}", task_method, task_url, chunk))

        fields: list[tuple[PushStatus, str, str]] = [("ok", "", "")] * len(records)
        notes: list[tuple[NotesStatus, str, str]] = [("ok", "", "")] * len(records)
        for start in range(0, len(subrequests), _MAX_COLLECTIONS_PER_CALL):
            batch = subrequests[start : start + _MAX_COLLECTIONS_PER_CALL]
            body = {
                "allOrNone": False,
                "compositeRequest": [
                    {
                        "method": sub.method,
                        "url": sub.url,
                        "referenceId": sub.reference,
                        "body": {"allOrNone": False, "records": sub.records},
                    }
                    for sub in batch
                ],
            }
            response = self._call(
                partial(Salesforce.restful, path="composite", method="POST", json=body)
            )
            for sub in batch:
                if sub.reference == "contacts":
                    results = _subrequest_results(response, sub.reference, len(sub.records))
                    for index, result in zip(order, results, strict=True):
                        fields[index] = _record_outcome(result, self._version_field(records[index]))
                    continue
                for key, outcome in _task_outcomes(response, sub, external_id):
                    for index in owners[key]:
                        notes[index] = _worse(notes[index], outcome)
        return [
            PushResult(salesforce_id, status, code, message, *notes[index])
            for index, (salesforce_id, (status, code, message)) in enumerate(
                zip(ids, fields, strict=True)
            )
        ]

    def _update_record(self, record: ContactPush) -> dict[str, Any]:
        body: dict[str, Any] = {
            "attributes": {"type": record.object_name},
            "id": record.salesforce_id,
            **record.fields,
        }
        version_field = self._version_field(record)
        if version_field and record.version is not None:
            body[version_field] = record.version
        return body

    def _version_field(self, record: ContactPush) -> str:
        if record.version_field is None:
            return self.config.version_field
        return record.version_field

    def _tasks_present(self, change_ids: Sequence[str]) -> set[str]:
        """The change ids, lower-cased, that Tasks in Salesforce already carry (SOQL compares
        text ignoring case), 200 a query."""
        name = self.config.task_external_id
        found: set[str] = set()
        for start in range(0, len(change_ids), _IDS_PER_QUERY):
            values = ", ".join(_soql_string(v) for v in change_ids[start : start + _IDS_PER_QUERY])
            soql = f"SELECT Id, {name} FROM Task WHERE {name} IN ({values})"
            for task in self._query(soql, include_deleted=False):
                found.add(str(task.get(name) or "").lower())
        return found

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
        """Contacts whose SystemModstamp is in (since, until]: see changed_records()."""
        return self.changed_records(
            "Contact", since, until, fields, include_deleted=include_deleted
        )

    def changed_records(
        self,
        object_name: str,
        since: datetime,
        until: datetime | None = None,
        fields: Iterable[str] = (),
        *,
        where: str = "",
        include_deleted: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Records of an object whose SystemModstamp is in (since, until], oldest first (ties
        by Id), across as many pages as it takes. Each is a dict of the fields asked for plus
        Id, SystemModstamp (an aware datetime) and LastModifiedById (tells the app's own
        writes from others'). ``where`` is a fixed filter of the app's own (never input);
        include_deleted reads through queryAll, so deleted and merged records come too,
        with IsDeleted and MasterRecordId.

        Real Salesforce stores SystemModstamp to the second and stamps a transaction when it
        starts, so a later-committing write can carry an earlier stamp: pass an ``until`` a
        little in the past and resume from the last stamp seen.
        """
        _check_object(object_name)
        extra = ["IsDeleted", "MasterRecordId"] if include_deleted else []
        names = _field_list(["Id", "SystemModstamp", "LastModifiedById", *extra, *fields])
        conditions = [f"SystemModstamp > {_soql_datetime(since)}"]
        if until is not None:
            conditions.append(f"SystemModstamp <= {_soql_datetime(until)}")
        if where:
            conditions.append(where)
        soql = (
            f"SELECT {', '.join(names)} FROM {object_name} WHERE {' AND '.join(conditions)} "
            "ORDER BY SystemModstamp, Id"
        )
        return self._query(soql, include_deleted)

    def get_contacts(
        self, salesforce_ids: Iterable[str], fields: Iterable[str]
    ) -> list[dict[str, Any]]:
        """The named contacts that exist (deleted ones left out), 200 ids a query."""
        return self.get_records("Contact", salesforce_ids, fields)

    def get_records(
        self, object_name: str, salesforce_ids: Iterable[str], fields: Iterable[str]
    ) -> list[dict[str, Any]]:
        """The named records of an object that exist (deleted ones left out), 200 ids a
        query."""
        _check_object(object_name)
        ids = list(dict.fromkeys(salesforce_ids))
        for salesforce_id in ids:
            _check_id(salesforce_id)
        names = _field_list(["Id", "SystemModstamp", "LastModifiedById", *fields])
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), _IDS_PER_QUERY):
            quoted = ", ".join(f"'{i}'" for i in ids[start : start + _IDS_PER_QUERY])
            soql = f"SELECT {', '.join(names)} FROM {object_name} WHERE Id IN ({quoted})"
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

    def describe(self, object_name: str) -> dict[str, Any]:
        """An object's describe as the run-as user sees it (REST API Developer Guide,
        "sObject Describe"): object flags (queryable, updateable, createable...) and its
        ``fields``, each with type, updateable, createable, externalId, filterable. A field
        the user's field-level security hides is left out, as if the org had none."""
        _check_object(object_name)
        body = self._call(lambda api: api.restful(f"sobjects/{object_name}/describe"))
        if not isinstance(body, dict) or not isinstance(body.get("fields"), list):
            raise PermanentError("INVALID_RESPONSE", f"expected {object_name}'s describe")
        return body

    def tooling_query(self, soql: str) -> list[dict[str, Any]]:
        """Every record of a Tooling API query (Tooling API Developer Guide, "REST
        Resources": ``/tooling/query/?q=``), across pages; ``soql`` is the app's own, never
        input. Which user permission a query needs varies by object (same page); without it
        Salesforce refuses the query, a PermanentError."""
        page = self._call(lambda api: api.toolingexecute("query/", params={"q": soql}))
        records: list[dict[str, Any]] = []
        while True:
            if not isinstance(page, dict):
                raise PermanentError("INVALID_RESPONSE", "expected a Tooling API query result")
            records.extend(_plain(record) for record in page.get("records", []))
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return records
            page = self._call(
                partial(
                    Salesforce.query_more,
                    next_records_identifier=page["nextRecordsUrl"],
                    identifier_is_url=True,
                )
            )

    def bulk_query(
        self,
        object_name: str,
        fields: Iterable[str],
        *,
        where: str = "",
        page_size: int = BULK_PAGE_SIZE,
    ) -> Iterator[str]:
        """Every record of an object through a Bulk API 2.0 query job, page by page: CSV
        text, header row first, booleans as true/false (Bulk API 2.0 Developer Guide, "Get
        Results for a Query Job"). A handful of calls for millions of rows, where the REST
        query would spend one call per 2,000. Through simple-salesforce's bulk2 client,
        on this client's session and timeouts. A session that expires before the first page
        starts the job again (a query job only reads); after it, the reading fails as
        transient, since the caller holds part of the result."""
        _check_object(object_name)
        soql = f"SELECT {', '.join(_field_list(fields))} FROM {object_name}"
        if where:  # a fixed filter of the app's own, never input
            soql += f" WHERE {where}"
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

    # The initial load reads a query job page by page across processes: it keeps the job id
    # and the next page's locator in the database, and a rerun after a kill carries on with
    # them (docs/design.md, "Initial load"). A job's results stay for 7 days (Bulk API 2.0
    # Developer Guide, "Get Results for a Query Job").

    def create_bulk_query(self, object_name: str, fields: Iterable[str], *, where: str = "") -> str:
        """Create a Bulk API 2.0 query job for every record of an object; returns its id.
        ``where`` is a fixed filter of the app's own, never input."""
        _check_object(object_name)
        soql = f"SELECT {', '.join(_field_list(fields))} FROM {object_name}"
        if where:
            soql += f" WHERE {where}"
        job = self._call(
            lambda api: getattr(api.bulk2, object_name)._client.create_job(_BULK_QUERY, soql)
        )
        job_id = job.get("id") if isinstance(job, Mapping) else None
        if not isinstance(job_id, str) or not job_id:
            raise PermanentError("INVALID_RESPONSE", "the new query job has no id")
        return job_id

    def wait_for_bulk_query(
        self,
        object_name: str,
        job_id: str,
        *,
        timeout: float = _BULK_WAIT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> int:
        """Wait until a query job is JobComplete; returns how many records it found.
        A job that failed or was aborted is PermanentError BULK_JOB_FAILED; one still running
        after ``timeout`` seconds is TransientError BULK_JOB_TIMEOUT (waiting again later is
        harmless)."""
        _check_object(object_name)
        _check_id(job_id)  # it goes into the URL
        deadline = time.monotonic() + timeout
        delay = 0.0
        while True:
            info = self._call(
                lambda api: getattr(api.bulk2, object_name)._client.get_job(job_id, True)
            )
            state = info.get("state") if isinstance(info, Mapping) else None
            if state == "JobComplete":
                return int(info.get("numberRecordsProcessed") or 0)
            if state in ("Aborted", "Failed"):
                detail = info.get("errorMessage") or state
                raise PermanentError("BULK_JOB_FAILED", f"query job {job_id}: {detail}"[:500])
            if time.monotonic() + delay > deadline:
                raise TransientError("BULK_JOB_TIMEOUT", f"query job {job_id} is still {state}")
            # Salesforce answers a status read in no time; polling a large job every second
            # for minutes would only spend API calls, so the wait grows to 10 s.
            delay = min(max(delay * 2, 0.25), 10.0)
            sleep(delay)

    def bulk_page(
        self, object_name: str, job_id: str, locator: str = "", page_size: int = BULK_PAGE_SIZE
    ) -> tuple[str, str]:
        """One page of a complete query job's results: (CSV text, header row first; the
        next page's locator, empty after the last page). ``locator`` empty: the first page.
        Reading a page changes nothing, so an expired session is signed in again and the
        page read again (_call)."""
        _check_object(object_name)
        _check_id(job_id)
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        result = self._call(
            lambda api: getattr(api.bulk2, object_name)._client.get_query_results(
                job_id, locator, page_size
            )
        )
        return str(result["records"]), str(result["locator"] or "")

    def count_requests(self) -> RequestCount:
        """From now on, count the API requests this client sends (token requests are not
        API calls, as Salesforce counts them)."""
        counter = RequestCount()
        self._http.hooks["response"].append(counter)
        return counter

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


_BULK_QUERY = Operation.query
_OAUTH_ENDPOINT = "/services/oauth2/token"


class RequestCount:
    """A response hook on the client's session that counts its API requests."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> None:
        if not urlsplit(str(response.request.url)).path.endswith(_OAUTH_ENDPOINT):
            self.calls += 1


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


def _task_outcomes(
    response: Any, sub: _Subrequest, external_id: str
) -> Iterator[tuple[str, tuple[NotesStatus, str, str]]]:
    """(change id, outcome) of each Task a subrequest sent. A subrequest refused as a whole
    (an upsert on a field that is not an External ID answers 404 NOT_FOUND: "Insert or
    Update (Upsert) a Record Using an External ID", its error responses) fails each of its
    Tasks, and nothing else: the fields went in a subrequest of their own."""
    try:
        results = _subrequest_results(response, sub.reference, len(sub.records))
    except ConnectorError as error:
        status: NotesStatus = "transient" if isinstance(error, TransientError) else "permanent"
        outcomes = [(status, error.code, error.message)] * len(sub.records)
    else:
        outcomes = [_task_outcome(result) for result in results]
    for task, (status, code, message) in zip(sub.records, outcomes, strict=True):
        key = str(task[external_id])
        yield key, (status, code, f"Task {key}: {message}" if status != "ok" else "")


def _task_outcome(result: Mapping[str, Any]) -> tuple[NotesStatus, str, str]:
    status, code, message = _record_outcome(result)
    if status == "ok":
        return ("ok", "", "")
    # "superseded" is the contact's ordering rule; a Task's refusal is a refusal.
    return ("transient" if status == "transient" else "permanent", code, message)


_SEVERITY = {"ok": 0, "superseded": 1, "transient": 2, "permanent": 3}
S = TypeVar("S", bound=str)


def _worse(current: tuple[S, str, str], new: tuple[S, str, str]) -> tuple[S, str, str]:
    return new if _SEVERITY[new[0]] > _SEVERITY[current[0]] else current


def _soql_string(value: str) -> str:
    """A SOQL string literal: quotes and backslashes escaped (SOQL and SOSL Reference,
    "Quoted String Escape Sequences")."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_object(name: str) -> None:
    if not _FIELD_NAME.match(name):
        raise ValueError(f"not a Salesforce object name: {name!r}")


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
    """A SOQL dateTime literal as the SOQL reference documents it ("Date Formats and Date
    Literals"): whole seconds, UTC, Z. Truncated, not rounded: a window (since, until]
    drawn with these literals may read a record of the same second twice, never miss one."""
    if value.tzinfo is None:
        raise ValueError("use an aware datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
