"""SalesforceStandIn: the org's configuration, the helpers tests and the demo call, and the
wiring of store, OAuth, routes, faults and control to the shared HTTPS base."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from standins.common.control import DEFAULT_CLIENT_ID
from standins.common.faults import FaultBook
from standins.common.http import Reply, StandInHandler
from standins.common.standin import HttpStandIn
from standins.salesforce.bulk import CsvPage
from standins.salesforce.control import SalesforceControl
from standins.salesforce.faults import FAULT_KINDS, Rejections, SalesforceFault
from standins.salesforce.oauth import OAuth
from standins.salesforce.query import DEFAULT_PAGE_SIZE
from standins.salesforce.routes import SalesforceRoutes
from standins.salesforce.store import (
    DEFAULT_API_ALLOWANCE,
    DEFAULT_TASK_EXTERNAL_ID,
    SalesforceStore,
    format_datetime,
    normalize_id,
)


class _Handler(StandInHandler):
    def do_PATCH(self) -> None:  # sObject and Collections updates
        self.answer()


class SalesforceStandIn(HttpStandIn):
    """One Salesforce org with one API user, speaking HTTPS on loopback.

    Helpers for tests: ``add_contact``, ``add_contacts``, ``contact``, ``tasks``,
    ``external_update``, ``delete_contact``, ``fail``, ``reject_record``,
    ``expire_sessions``, ``set_version_rule``, ``configure``, ``api_calls``, ``call_log``,
    ``reset``. All are thread-safe.
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
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = None,
        jwt_public_key: str | bytes | None = None,
        jwt_username: str | None = None,
        jwt_audiences: Iterable[str] = (),
        task_external_id: str = DEFAULT_TASK_EXTERNAL_ID,
        page_size: int = DEFAULT_PAGE_SIZE,
        api_allowance: int = DEFAULT_API_ALLOWANCE,
        contact_fields: Iterable[str] | None = None,
        auto_create: bool = False,
        whole_second_modstamps: bool = False,
        version_rule: bool = True,
        bulk_in_progress_polls: int = 0,
        state_file: str | Path | None = None,
        cert_dir: str | Path | None = None,
    ) -> None:
        """
        - ``jwt_public_key``: PEM of the connected app's certificate key; enables the JWT
          bearer flow. ``jwt_username``: if set, the only ``sub`` accepted.
        - ``contact_fields``: if given, the Contact's custom and standard fields beyond the
          built-in ones; writing or selecting any other field fails with ``INVALID_FIELD``,
          as a misconfigured category mapping would in a real org.
        - ``auto_create``: an update to an unknown (well-formed, 003) Id creates the contact,
          as if the org already held every contact the app knows (demo, benchmark).
        - ``whole_second_modstamps``: real Salesforce stores SystemModstamp to the second,
          so several writes can share one; by default the stand-in keeps milliseconds and
          makes every write call's stamp strictly greater than the last.
        - ``version_rule``: the org has the validation rule the README asks for
          (``Preference_Version_Not_Older``, rules.py): an update that would lower a
          contact's ``Preference_Version__c`` fails with FIELD_CUSTOM_VALIDATION_EXCEPTION.
          Installed by default, as in the documented set-up; ``set_version_rule(False)``
          runs an org without it.
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
        self.jwt_username = jwt_username
        self.page_size = page_size
        self.auto_create = auto_create
        self.version_rule = version_rule
        self.bulk_in_progress_polls = bulk_in_progress_polls
        self.store = SalesforceStore(
            lock=self._lock,
            task_external_id=task_external_id,
            api_allowance=api_allowance,
            contact_fields=contact_fields,
            whole_second_modstamps=whole_second_modstamps,
        )
        self.faults = FaultBook(SalesforceFault, FAULT_KINDS, self._lock)
        self.rejections = Rejections(self._lock)
        self.oauth = OAuth(self, self._lock, jwt_audiences=jwt_audiences)
        if jwt_public_key is not None:
            self.set_jwt_public_key(jwt_public_key)
        self.routes = SalesforceRoutes(self)
        self.control = SalesforceControl(self)
        self._load_state()

    @property
    def task_external_id(self) -> str:
        return self.store.task_external_id

    @property
    def whole_second_modstamps(self) -> bool:
        return self.store.whole_second_modstamps

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
        bulk_in_progress_polls: int | None = None,
    ) -> None:
        with self._lock:
            if page_size is not None:
                self.page_size = page_size
            if auto_create is not None:
                self.auto_create = auto_create
            if version_rule is not None:
                self.version_rule = version_rule
            if bulk_in_progress_polls is not None:
                self.bulk_in_progress_polls = bulk_in_progress_polls

    def set_version_rule(self, installed: bool) -> None:
        """Install (True) or remove (False) the org's ``Preference_Version_Not_Older`` rule."""
        self.configure(version_rule=installed)

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
        return self.store.task(external_id)

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
        """Make updates of this contact fail per record with ``code`` (INVALID_FIELD,
        FIELD_CUSTOM_VALIDATION_EXCEPTION, ENTITY_IS_DELETED, UNABLE_TO_LOCK_ROW...) — every
        time, or the next ``times`` times."""
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
        """(method, path) of every request, token requests and failed calls included."""
        with self._lock:
            return list(self.store.log)

    @property
    def api_usage(self) -> tuple[int, int]:
        with self._lock:
            return self.store.api_used, self.store.api_allowance

    def reset(self) -> None:
        """Forget contacts, tasks, Bulk API jobs, faults, counters. Issued tokens stay
        valid, so a worker holding one carries on (use expire_sessions() to test that); the
        org's configuration (page size, the validation rule...) stays as it is."""
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
                "page_size": self.page_size,
                "auto_create": self.auto_create,
                "version_rule": self.version_rule,
                "bulk_in_progress_polls": self.bulk_in_progress_polls,
                "query_job_count": len(self.routes.bulk.jobs),
            }
            if records:
                state["call_log"] = [list(entry) for entry in store.log]
                state["contacts"] = store.contact_copies()
                state["tasks"] = store.task_copies()
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
