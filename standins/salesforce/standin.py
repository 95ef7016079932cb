"""SalesforceStandIn: the org's configuration, the helpers tests and the demo call, and the
wiring of store, OAuth, routes, faults and control to the shared HTTPS base."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from standins.common.control import DEFAULT_CLIENT_ID
from standins.common.faults import FaultBook
from standins.common.http import Reply, StandInHandler, StandInServer
from standins.common.standin import HttpStandIn
from standins.salesforce.bulk import CsvPage
from standins.salesforce.control import SalesforceControl
from standins.salesforce.faults import FAULT_KINDS, Rejections, SalesforceFault
from standins.salesforce.oauth import DEFAULT_JWT_AUDIENCES, OAuth
from standins.salesforce.query import DEFAULT_PAGE_SIZE
from standins.salesforce.routes import SalesforceRoutes
from standins.salesforce.rules import validation_rule_record, version_rule_record
from standins.salesforce.schema import (
    DEFAULT_ASCEND_ID_FIELD,
    DEFAULT_CATEGORY_FIELDS,
    DEFAULT_TASK_EXTERNAL_ID,
    VERSION_FIELD,
    Field,
    OrgSchema,
)
from standins.salesforce.store import (
    DEFAULT_API_ALLOWANCE,
    SalesforceStore,
    format_datetime,
    make_id,
    normalize_id,
)

# {object: {field: None (the org lacks it) | {property: value}}}, as OrgSchema.apply takes it.
SchemaChanges = Mapping[str, Mapping[str, Mapping[str, Any] | None]]


class _Handler(StandInHandler):
    def do_PATCH(self) -> None:  # sObject and Collections updates
        self.answer()


class _LoginHost:
    """The generic login host (login.salesforce.com) the same server also plays, on a port
    of its own: it has the token endpoint and nothing else, not even the control API."""

    def __init__(self, standin: SalesforceStandIn) -> None:
        self.standin = standin

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        split = urlsplit(raw_path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        routes = self.standin.routes
        return routes.serve(method, split.path, params, headers, body, login_host=True)

    def encode(self, reply: Reply) -> tuple[bytes, str]:
        return self.standin.encode(reply)


class SalesforceStandIn(HttpStandIn):
    """One Salesforce org with one API user, speaking HTTPS on loopback.

    Its ``url`` is the org's My Domain; ``login_url`` is the generic login host
    (login.salesforce.com), where a client-credentials token request is refused as
    Salesforce refuses it (oauth.py).

    Helpers for tests: ``add_contact``, ``add_contacts``, ``contact``, ``contacts``,
    ``tasks``, ``task``, ``external_update``, ``delete_contact``, ``undelete_contact``,
    ``merge_contacts``, ``add_lead``, ``add_leads``, ``lead``, ``leads``, ``convert_lead``,
    ``add_account``,
    ``add_person_account``, ``account``, ``accounts``, ``set_field``, ``remove_field``,
    ``describe``, ``add_validation_rule``, ``fail``, ``reject_record``, ``expire_sessions``,
    ``set_version_rule``,
    ``set_person_accounts``, ``configure``, ``api_calls``, ``call_log``, ``reset``. All are
    thread-safe.
    """

    name = "salesforce-standin"
    ca_name = "Preference Desk Salesforce stand-in CA"
    handler = _Handler
    json_content_type: ClassVar[str] = "application/json;charset=UTF-8"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        login_port: int = 0,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = None,
        jwt_public_key: str | bytes | None = None,
        jwt_username: str | None = None,
        jwt_audiences: Iterable[str] = DEFAULT_JWT_AUDIENCES,
        task_external_id: str = DEFAULT_TASK_EXTERNAL_ID,
        page_size: int = DEFAULT_PAGE_SIZE,
        api_allowance: int = DEFAULT_API_ALLOWANCE,
        contact_fields: Iterable[str] | None = None,
        category_fields: Iterable[str] = DEFAULT_CATEGORY_FIELDS,
        ascend_id_field: str = DEFAULT_ASCEND_ID_FIELD,
        schema: SchemaChanges | None = None,
        person_accounts: bool = False,
        auto_create: bool = False,
        whole_second_modstamps: bool = True,
        version_rule: bool = True,
        version_rule_active: bool = True,
        bulk_in_progress_polls: int = 0,
        state_file: str | Path | None = None,
        cert_dir: str | Path | None = None,
    ) -> None:
        """
        - ``login_port``: where the generic login host listens (0: any free port).
        - ``jwt_public_key``: PEM of the connected app's certificate key; enables the JWT
          bearer flow. ``jwt_username``: if set, the only ``sub`` accepted.
          ``jwt_audiences``: the ``aud`` values accepted, as Salesforce documents them:
          https://login.salesforce.com and https://test.salesforce.com by default (add an
          Experience Cloud site URL here); the My Domain URL never is.
        - ``contact_fields``: if given, the Contact's custom and standard fields beyond the
          built-in ones; writing or selecting any other field fails with ``INVALID_FIELD``,
          as a misconfigured category mapping would in a real org. Without it, Contact has
          the version field, the Ascend ID and the category checkboxes, and takes any other
          field a test writes.
        - ``category_fields``: the email categories' checkbox fields (on Contact, and
          ``__pc`` on person accounts); ``ascend_id_field``: the Contact's Ascend ID field;
          ``task_external_id``: the Task's External ID field for the notes.
        - ``schema``: changes to the objects' fields, ``{object: {field: None | {property:
          value}}}``: None leaves the field out of the org, a mapping sets describe's
          properties (``externalId``, ``updateable``, ``type``...). ``set_field`` and
          ``remove_field`` change it later.
        - ``person_accounts``: the org has person accounts enabled (off by default: then
          ``IsPersonAccount`` and the Person fields do not exist, and asking for them is
          ``INVALID_FIELD``).
        - ``auto_create``: an update to an unknown (well-formed, 003) Id creates the contact,
          as if the org already held every contact the app knows (demo, benchmark).
        - ``whole_second_modstamps``: real Salesforce stores SystemModstamp to the second,
          so several writes can share one, and so does the stand-in by default; False keeps
          milliseconds and makes every write call's stamp strictly greater than the last.
        - ``version_rule``: the org has the validation rule the README asks for
          (``Preference_Version_Not_Older``, rules.py): an update that would lower a
          contact's ``Preference_Version__c`` fails with FIELD_CUSTOM_VALIDATION_EXCEPTION.
          Installed by default, as in the documented set-up; ``set_version_rule(False)``
          runs an org without it. ``version_rule_active=False``: installed but deactivated
          (the Tooling API lists it with ``Active`` false; it refuses nothing).
        - ``bulk_in_progress_polls``: how many status reads a new Bulk API query job
          answers ``InProgress`` before it completes (0: it completes on the first).
        """
        super().__init__(
            host=host,
            port=port,
            client_id=client_id,
            client_secret=client_secret,
            state_file=state_file,
            cert_dir=cert_dir,
        )
        self.login_port = login_port
        self._login_url = ""
        self.jwt_username = jwt_username
        self.page_size = page_size
        self.auto_create = auto_create
        self.version_rule = version_rule
        self.version_rule_active = version_rule_active
        self.bulk_in_progress_polls = bulk_in_progress_polls
        self.schema = OrgSchema(
            contact_fields=contact_fields,
            category_fields=category_fields,
            ascend_id_field=ascend_id_field,
            task_external_id=task_external_id,
            person_accounts=person_accounts,
        )
        if schema is not None:
            self.schema.apply(schema)
        self.store = SalesforceStore(
            lock=self._lock,
            schema=self.schema,
            api_allowance=api_allowance,
            whole_second_modstamps=whole_second_modstamps,
        )
        self.faults = FaultBook(SalesforceFault, FAULT_KINDS, self._lock)
        self.rejections = Rejections(self._lock)
        self.oauth = OAuth(self, self._lock, jwt_audiences=jwt_audiences)
        if jwt_public_key is not None:
            self.set_jwt_public_key(jwt_public_key)
        self._listed_rules: list[dict[str, Any]] = []
        self.routes = SalesforceRoutes(self)
        self.control = SalesforceControl(self)
        self._load_state()

    @property
    def login_url(self) -> str:
        """The generic login host's URL (it stands for https://login.salesforce.com)."""
        if not self._login_url:
            raise RuntimeError("the stand-in is not started")
        return self._login_url

    def _more_servers(self, context: ssl.SSLContext) -> list[Any]:
        server = StandInServer((self.host, self.login_port), _LoginHost(self), _Handler, context)
        self.login_port = server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._login_url = f"https://{host}:{self.login_port}"
        return [server]

    @property
    def task_external_id(self) -> str:
        return self.store.task_external_id

    @property
    def whole_second_modstamps(self) -> bool:
        return self.store.whole_second_modstamps

    @property
    def person_accounts(self) -> bool:
        return self.schema.person_accounts

    @property
    def version_rule_enforced(self) -> bool:
        """The rule refuses Contact updates: installed, active, and the org has its field."""
        return self.version_rule_enforced_on("Contact")

    def version_rule_enforced_on(self, object_name: str) -> bool:
        """The rule refuses this object's updates (Contact or Lead, each with the field)."""
        found = self.schema.objects.get(object_name.lower())
        return (
            self.version_rule
            and self.version_rule_active
            and found is not None
            and object_name in ("Contact", "Lead")
            and found.has(VERSION_FIELD)
        )

    def validation_rules(self) -> list[dict[str, Any]]:
        """The org's validation rules as the Tooling API shows them: the ordering rule on
        Contact and on Lead (where each has the field), as the README's set-up installs it."""
        with self._lock:
            rules = list(self._listed_rules)
            if self.version_rule:
                for name in ("Lead", "Contact"):
                    if self.schema.objects[name.lower()].field(VERSION_FIELD) is not None:
                        record = version_rule_record(
                            active=self.version_rule_active, object_name=name
                        )
                        rules.insert(0, record)
            return rules

    def add_validation_rule(
        self,
        object_name: str,
        name: str,
        formula: str,
        message: str,
        *,
        display_field: str | None = None,
        active: bool = True,
        description: str | None = None,
    ) -> str:
        """List another validation rule in the Tooling API (an admin's own rule); it is
        only listed, never evaluated. Returns its Id. Kept across a reset."""
        with self._lock:
            schema = self.schema.object(object_name)
            if schema is None:
                raise KeyError(object_name)
            rule_id = make_id("03d", len(self._listed_rules) + 2)
            self._listed_rules.append(
                validation_rule_record(
                    rule_id=rule_id,
                    object_name=schema.name,
                    name=name,
                    formula=formula,
                    message=message,
                    display_field=display_field,
                    active=active,
                    description=description,
                )
            )
            return rule_id

    def encode(self, reply: Reply) -> tuple[bytes, str]:
        # A Bulk API result set is rendered here, as its answer is written: outside the
        # lock, from its job's snapshot.
        if isinstance(reply.body, CsvPage):
            return reply.body.render(), reply.content_type or "text/csv"
        return super().encode(reply)

    def json_default(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return format_datetime(value)
        return super().json_default(value)

    def _serve(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply | None:
        return self.routes.serve(method, path, params, headers, body)

    # -- helpers for tests and the demo -------------------------------------------------------

    def set_jwt_public_key(self, pem: str | bytes) -> None:
        self.oauth.set_jwt_public_key(pem)

    def configure(
        self,
        *,
        page_size: int | None = None,
        auto_create: bool | None = None,
        version_rule: bool | None = None,
        version_rule_active: bool | None = None,
        bulk_in_progress_polls: int | None = None,
        person_accounts: bool | None = None,
    ) -> None:
        with self._lock:
            if page_size is not None:
                self.page_size = page_size
            if auto_create is not None:
                self.auto_create = auto_create
            if version_rule is not None:
                self.version_rule = version_rule
            if version_rule_active is not None:
                self.version_rule_active = version_rule_active
            if bulk_in_progress_polls is not None:
                self.bulk_in_progress_polls = bulk_in_progress_polls
            if person_accounts is not None:
                self.schema.set_person_accounts(person_accounts)

    def set_version_rule(self, installed: bool, *, active: bool | None = None) -> None:
        """Install (True) or remove (False) the org's ``Preference_Version_Not_Older`` rule;
        ``active`` (de)activates it."""
        self.configure(version_rule=installed, version_rule_active=active)

    def set_person_accounts(self, enabled: bool) -> None:
        """Enable (or disable) person accounts in the org."""
        self.configure(person_accounts=enabled)

    def set_field(self, object_name: str, field_name: str, **properties: Any) -> Field:
        """Give an object a field, or change one's describe properties (``externalId``,
        ``updateable``, ``createable``, ``unique``, ``idLookup``, ``nillable``, ``type``,
        ``label``...)."""
        with self._lock:
            schema = self.schema.object(object_name)
            if schema is None:
                raise KeyError(object_name)
            return schema.set_field(field_name, **properties)

    def remove_field(self, object_name: str, field_name: str) -> None:
        """The org does not have this field (writing or selecting it is INVALID_FIELD)."""
        with self._lock:
            schema = self.schema.object(object_name)
            if schema is None:
                raise KeyError(object_name)
            schema.remove_field(field_name)

    def describe(self, object_name: str) -> dict[str, Any]:
        """What ``GET sobjects/<object>/describe`` answers."""
        with self._lock:
            schema = self.schema.object(object_name)
            if schema is None:
                raise KeyError(object_name)
            return schema.describe("v60.0")

    def add_contact(self, **fields: Any) -> str:
        """Create a contact (as a data load would) and return its 18-character Id."""
        return self.add_contacts([fields])[0]

    def add_contacts(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create many contacts as one data load (one stamp); a million take seconds."""
        ids = self.store.add_contacts(records)
        self.mark_changed()
        return ids

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        return self.store.contact(contact_id)

    def contacts(self) -> dict[str, dict[str, Any]]:
        return self.store.contact_copies()

    def tasks(self) -> list[dict[str, Any]]:
        return self.store.task_copies()

    def task(self, external_id: str) -> dict[str, Any] | None:
        """The Task whose ``task_external_id`` field holds this value."""
        return self.store.task(external_id)

    def add_lead(self, **fields: Any) -> str:
        """Create a lead (as a data load would) and return its Id (prefix 00Q)."""
        return self.add_leads([fields])[0]

    def add_leads(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        ids = self.store.add_records("Lead", records)
        self.mark_changed()
        return ids

    def lead(self, lead_id: str) -> dict[str, Any] | None:
        return self.store.record("Lead", lead_id)

    def leads(self) -> dict[str, dict[str, Any]]:
        return self.store.copies("Lead")

    def convert_lead(self, lead_id: str, contact_id: str | None = None, **fields: Any) -> str:
        """Convert a lead, as a user converting it in Salesforce: into a new contact (its
        name, email, phone, opt-outs and categories, and ``fields`` on top), or into the
        existing ``contact_id`` (only the contact's empty fields are filled). The lead gets
        ``IsConverted``, ``ConvertedContactId`` and ``ConvertedDate``, and can no longer be
        updated. Returns the contact's Id."""
        converted = self.store.convert_lead(lead_id, contact_id, fields)
        self.mark_changed()
        return converted

    def add_account(self, **fields: Any) -> str:
        """Create a business account (``Name`` and the like) and return its Id (001)."""
        ids = self.store.add_records("Account", [fields])
        self.mark_changed()
        return ids[0]

    def add_person_account(self, **fields: Any) -> str:
        """Create a person account (``FirstName``, ``LastName``, ``PersonEmail``,
        ``PersonHasOptedOutOfEmail``, ``PersonDoNotCall``, ``..__pc``) and its person
        contact; returns the account's Id (``PersonContactId`` names the contact). Needs
        person accounts enabled."""
        account_id = self.store.add_person_account(fields)
        self.mark_changed()
        return account_id

    def account(self, account_id: str) -> dict[str, Any] | None:
        return self.store.record("Account", account_id)

    def accounts(self) -> dict[str, dict[str, Any]]:
        return self.store.copies("Account")

    def external_update(self, contact_id: str, **fields: Any) -> datetime:
        """Change a contact as another integration would (Marketing Cloud Connect
        unsubscribing someone): LastModifiedById is the integration user, not the API user.
        Returns the new SystemModstamp."""
        stamp = self.store.external_update(contact_id, fields)
        self.mark_changed()
        return stamp

    def delete_contact(self, contact_id: str) -> None:
        self.store.delete_contact(contact_id)
        self.mark_changed()

    def undelete_contact(self, contact_id: str) -> None:
        self.store.undelete_contact(contact_id)
        self.mark_changed()

    def merge_contacts(self, survivor_id: str, loser_id: str) -> datetime:
        """Merge two contacts as a user would in Salesforce: the loser is deleted with
        ``MasterRecordId`` set to the survivor (``queryAll`` still finds it), the survivor
        is updated, and the loser's Tasks move to the survivor. Returns the stamp."""
        stamp = self.store.merge_contacts(survivor_id, loser_id)
        self.mark_changed()
        return stamp

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        until: Callable[[], bool] | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> int:
        """Make matching requests fail (or stall) while the fault lasts.

        ``kind``: latency (answer after ``seconds``), timeout (hold the request ``seconds``,
        default 60, then apply it anyway if still running — the client has given up by
        then, as with a real slow org), http_503, http_500, unable_to_lock_row (400),
        request_limit_exceeded (403), expire_sessions (invalidates every token; 401).
        Lasts ``times`` requests, ``for_seconds``, ``until`` the callable returns true, or
        (none given) until ``clear_faults``/``reset``. Without ``path_contains`` it hits
        every REST API path but not the token endpoint. Returns the fault's id.
        """
        return super().fail(
            kind,
            times=times,
            until=until,
            for_seconds=for_seconds,
            seconds=seconds,
            path_contains=path_contains,
        )

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
            self.rejections.clear()

    def reject_record(
        self,
        contact_id: str,
        code: str,
        message: str | None = None,
        *,
        fields: Iterable[str] = (),
        times: int | None = None,
    ) -> None:
        """Make updates of this record (a contact, or a lead or account) fail per record
        with ``code`` (INVALID_FIELD, FIELD_CUSTOM_VALIDATION_EXCEPTION, ENTITY_IS_DELETED,
        UNABLE_TO_LOCK_ROW...) — every time, or the next ``times`` times."""
        key = normalize_id(contact_id)
        if key is None:
            raise ValueError(f"not a Salesforce Id: {contact_id!r}")
        self.rejections.add(key, code, message, fields, times)

    def expire_sessions(self) -> None:
        """Invalidate every token issued so far; a fresh login works again."""
        self.oauth.expire_sessions()

    def set_api_usage(self, used: int | None = None, allowance: int | None = None) -> None:
        with self._lock:
            if used is not None:
                self.store.api_used = used
            if allowance is not None:
                self.store.api_allowance = allowance

    @property
    def api_calls(self) -> int:
        """REST API calls answered since start or reset (a composite is one; token requests,
        401s, injected faults and refusals for the limit are not counted)."""
        with self._lock:
            return self.store.api_calls

    @property
    def call_log(self) -> list[tuple[str, str]]:
        """(method, path) of every request, token requests (on either host) and failed
        calls included."""
        with self._lock:
            return list(self.store.log)

    def reset(self) -> None:
        """Forget records, Bulk API jobs, faults, counters. Issued tokens stay valid, so a
        worker holding one carries on (use expire_sessions() to test that); the org's
        configuration (page size, the validation rule, the schema...) stays as it is."""
        with self._lock:
            self.store.clear()
            self.routes.bulk.clear()
            self.faults.clear()
            self.rejections.clear()
            self.mark_changed()

    def state(self, *, records: bool = True) -> dict[str, Any]:
        with self._lock:
            store = self.store
            state: dict[str, Any] = {
                "api_calls": store.api_calls,
                "api_usage": [store.api_used, store.api_allowance],
                "faults": self.faults.describe(),
                "contact_count": len(store.contacts),
                "task_count": len(store.tasks),
                "lead_count": len(store.records["Lead"]),
                "account_count": len(store.records["Account"]),
                "page_size": self.page_size,
                "auto_create": self.auto_create,
                "version_rule": self.version_rule,
                "version_rule_active": self.version_rule_active,
                "person_accounts": self.person_accounts,
                "bulk_in_progress_polls": self.bulk_in_progress_polls,
                "query_job_count": len(self.routes.bulk.jobs),
                "login_url": self._login_url,
                "task_external_id": self.task_external_id,
            }
            if records:
                state["call_log"] = [list(entry) for entry in store.log]
                state["contacts"] = store.contact_copies()
                state["tasks"] = store.task_copies()
                state["leads"] = store.copies("Lead")
                state["accounts"] = store.copies("Account")
            return state

    # -- the state file ----------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return self.store.snapshot()

    def _restore(self, data: Mapping[str, Any]) -> None:
        self.store.restore(data)


@contextmanager
def running_standin(**options: Any) -> Iterator[SalesforceStandIn]:
    """A started stand-in for the duration of a ``with`` block (wrap in a pytest fixture)."""
    with SalesforceStandIn(**options) as standin:
        yield standin
