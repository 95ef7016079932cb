"""The Salesforce stand-in's control endpoints, the client that drives them from another
process, and ``standin_process`` to run one there.

Beyond the common endpoints: ``POST rejections``, ``POST contacts``, ``GET contacts/<id>``,
``POST contacts/<id>/external-update``, ``POST contacts/<id>/delete``, ``GET tasks``,
``POST expire-sessions`` and ``POST config`` (page size, auto-create, API usage, the
validation rule ``version_rule``, ``bulk_in_progress_polls``).

``POST contacts`` takes ``{"contacts": [{field: value}, ...]}``, or a data load's compact
form ``{"fields": [name, ...], "rows": [[value, ...], ...]}`` (one list of values per
contact, in the order of ``fields``), which the client sends: a million contacts are then a
JSON array of arrays, not a million objects repeating every field name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from standins.common.control import ControlAPI, Controllable, StandInClient, client_process
from standins.common.http import Reply
from standins.salesforce.store import parse_datetime, revive


class Org(Controllable, Protocol):
    """The helpers the endpoints below call: SalesforceStandIn's."""

    def reject_record(
        self,
        contact_id: str,
        code: str,
        message: str | None = None,
        *,
        fields: Iterable[str] = (),
        times: int | None = None,
    ) -> None: ...

    def add_contacts(self, records: Iterable[Mapping[str, Any]]) -> list[str]: ...

    def contact(self, contact_id: str) -> dict[str, Any] | None: ...

    def external_update(self, contact_id: str, **fields: Any) -> datetime: ...

    def delete_contact(self, contact_id: str) -> None: ...

    def tasks(self) -> list[dict[str, Any]]: ...

    def expire_sessions(self) -> None: ...

    def configure(
        self,
        *,
        page_size: int | None = None,
        auto_create: bool | None = None,
        version_rule: bool | None = None,
        bulk_in_progress_polls: int | None = None,
    ) -> None: ...

    def set_api_usage(self, used: int | None = None, allowance: int | None = None) -> None: ...


class SalesforceControl(ControlAPI):
    standin: Org

    def route(
        self, method: str, parts: list[str], params: Mapping[str, str], data: Any
    ) -> Reply | None:
        standin = self.standin
        match [method, *parts]:
            case ["POST", "rejections"]:
                standin.reject_record(
                    data["contact_id"],
                    data["code"],
                    data.get("message"),
                    fields=data.get("fields", ()),
                    times=data.get("times"),
                )
                return Reply(204)
            case ["POST", "contacts"]:
                if "rows" in data:
                    names = [str(name) for name in data["fields"]]
                    records = (dict(zip(names, row, strict=True)) for row in data["rows"])
                    return Reply(201, {"ids": standin.add_contacts(records)})
                return Reply(201, {"ids": standin.add_contacts(data["contacts"])})
            case ["GET", "contacts", contact_id]:
                record = standin.contact(contact_id)
                return Reply(200, record) if record else Reply(404, {"error": "not found"})
            case ["POST", "contacts", contact_id, "external-update"]:
                stamp = standin.external_update(contact_id, **data)
                return Reply(200, {"SystemModstamp": stamp})
            case ["POST", "contacts", contact_id, "delete"]:
                standin.delete_contact(contact_id)
                return Reply(204)
            case ["GET", "tasks"]:
                return Reply(200, standin.tasks())
            case ["POST", "expire-sessions"]:
                standin.expire_sessions()
                return Reply(204)
            case ["POST", "config"]:
                polls = data.get("bulk_in_progress_polls")
                standin.configure(
                    page_size=int(data["page_size"]) if "page_size" in data else None,
                    auto_create=bool(data["auto_create"]) if "auto_create" in data else None,
                    version_rule=bool(data["version_rule"]) if "version_rule" in data else None,
                    bulk_in_progress_polls=int(polls) if polls is not None else None,
                )
                standin.set_api_usage(data.get("api_used"), data.get("api_allowance"))
                return Reply(204)
        return super().route(method, parts, params, data)


class SalesforceStandInClient(StandInClient):
    """Drives a Salesforce stand-in in another process through its HTTPS control
    endpoints. The same helpers as SalesforceStandIn, except ``fail(until=...)`` (a callable
    cannot cross processes: use ``times`` or ``for_seconds``). Timestamps come back as
    datetimes."""

    def reject_record(
        self,
        contact_id: str,
        code: str,
        message: str | None = None,
        *,
        fields: Iterable[str] = (),
        times: int | None = None,
    ) -> None:
        payload = {
            "contact_id": contact_id,
            "code": code,
            "message": message,
            "fields": list(fields),
            "times": times,
        }
        self._request("POST", "rejections", payload)

    def add_contact(self, **fields: Any) -> str:
        return self.add_contacts([fields])[0]

    def add_contacts(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        # The compact form, one list of values per contact; records with different fields
        # go as separate loads, each field as given (a missing one is not sent as null).
        ids: list[str] = []
        batch: list[list[Any]] = []
        fields: tuple[str, ...] | None = None
        for record in records:
            keys = tuple(record)
            if keys != fields and batch:
                ids += self._load(fields or (), batch)
                batch = []
            fields = keys
            batch.append(list(record.values()))
        if batch:
            ids += self._load(fields or (), batch)
        return ids

    def _load(self, fields: tuple[str, ...], rows: list[list[Any]]) -> list[str]:
        payload = {"fields": list(fields), "rows": rows}
        return list(self._request("POST", "contacts", payload)["ids"])

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        try:
            return revive(self._request("GET", f"contacts/{contact_id}"))
        except RuntimeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def contacts(self) -> dict[str, dict[str, Any]]:
        return {k: revive(v) for k, v in self.state()["contacts"].items()}

    def tasks(self) -> list[dict[str, Any]]:
        return [revive(task) for task in self._request("GET", "tasks")]

    def external_update(self, contact_id: str, **fields: Any) -> datetime:
        answer = self._request("POST", f"contacts/{contact_id}/external-update", fields)
        return parse_datetime(answer["SystemModstamp"])

    def delete_contact(self, contact_id: str) -> None:
        self._request("POST", f"contacts/{contact_id}/delete")

    def expire_sessions(self) -> None:
        self._request("POST", "expire-sessions")

    def set_api_usage(self, used: int | None = None, allowance: int | None = None) -> None:
        payload = {
            key: value
            for key, value in (("api_used", used), ("api_allowance", allowance))
            if value is not None
        }
        self._request("POST", "config", payload)

    def configure(
        self,
        *,
        page_size: int | None = None,
        auto_create: bool | None = None,
        version_rule: bool | None = None,
        bulk_in_progress_polls: int | None = None,
    ) -> None:
        options = {
            "page_size": page_size,
            "auto_create": auto_create,
            "version_rule": version_rule,
            "bulk_in_progress_polls": bulk_in_progress_polls,
        }
        payload = {key: value for key, value in options.items() if value is not None}
        self._request("POST", "config", payload)

    def set_version_rule(self, installed: bool) -> None:
        """Install (True) or remove (False) the org's ``Preference_Version_Not_Older`` rule."""
        self.configure(version_rule=installed)

    @property
    def version_rule(self) -> bool:
        return bool(self.state(records=False)["version_rule"])

    @property
    def api_usage(self) -> tuple[int, int]:
        used, allowance = self.state(records=False)["api_usage"]
        return int(used), int(allowance)


@contextmanager
def standin_process(
    *, port: int = 0, args: Iterable[str] = (), startup_timeout: float = 20.0
) -> Iterator[SalesforceStandInClient]:
    """Run ``python -m standins.salesforce`` in a subprocess and yield a client for it."""
    with client_process(
        SalesforceStandInClient,
        "standins.salesforce",
        label="Salesforce",
        env_name="SALESFORCE_CLIENT_SECRET",
        clear_env=["SALESFORCE_CLIENT_ID"],
        port=port,
        args=args,
        startup_timeout=startup_timeout,
    ) as client:
        yield client
