"""The Salesforce stand-in's control endpoints, the client that drives them from another
process, and ``standin_process`` to run one there.

Beyond the common endpoints: ``POST rejections``, ``POST contacts``, ``GET contacts/<id>``,
``POST contacts/<id>/external-update``, ``POST contacts/<id>/delete``, ``POST
contacts/<id>/undelete``, ``POST contacts/<survivor id>/merge`` (``{"loser_id"}``), ``GET
tasks``, ``POST leads`` (``{"leads": [...]}``), ``GET leads/<id>``, ``POST
leads/<id>/convert`` (``{"contact_id"?, "fields"?}``), ``POST accounts`` (``{"fields",
"person"?}``), ``GET accounts/<id>``, ``GET describe/<object>``, ``POST
schema/<object>/<field>`` (describe properties) and ``DELETE schema/<object>/<field>``,
``POST validation-rules`` (a rule the Tooling API lists), ``POST expire-sessions`` and
``POST config`` (page size, auto-create, API usage, the validation rule ``version_rule`` and
``version_rule_active``, ``bulk_in_progress_polls``, ``person_accounts``).

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

    def undelete_contact(self, contact_id: str) -> None: ...

    def tasks(self) -> list[dict[str, Any]]: ...

    def merge_contacts(self, survivor_id: str, loser_id: str) -> datetime: ...

    def add_leads(self, records: Iterable[Mapping[str, Any]]) -> list[str]: ...

    def lead(self, lead_id: str) -> dict[str, Any] | None: ...

    def convert_lead(self, lead_id: str, contact_id: str | None = None, **fields: Any) -> str: ...

    def add_account(self, **fields: Any) -> str: ...

    def add_person_account(self, **fields: Any) -> str: ...

    def account(self, account_id: str) -> dict[str, Any] | None: ...

    def describe(self, object_name: str) -> dict[str, Any]: ...

    def set_field(self, object_name: str, field_name: str, **properties: Any) -> Any: ...

    def remove_field(self, object_name: str, field_name: str) -> None: ...

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
    ) -> str: ...

    def expire_sessions(self) -> None: ...

    def configure(
        self,
        *,
        page_size: int | None = None,
        auto_create: bool | None = None,
        version_rule: bool | None = None,
        version_rule_active: bool | None = None,
        bulk_in_progress_polls: int | None = None,
        person_accounts: bool | None = None,
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
            case ["POST", "contacts", contact_id, "undelete"]:
                standin.undelete_contact(contact_id)
                return Reply(204)
                return Reply(204)
            case ["POST", "contacts", survivor_id, "merge"]:
                stamp = standin.merge_contacts(survivor_id, data["loser_id"])
                return Reply(200, {"SystemModstamp": stamp})
            case ["GET", "tasks"]:
                return Reply(200, standin.tasks())
            case ["POST", "leads"]:
                return Reply(201, {"ids": standin.add_leads(data["leads"])})
            case ["GET", "leads", lead_id]:
                record = standin.lead(lead_id)
                return Reply(200, record) if record else Reply(404, {"error": "not found"})
            case ["POST", "leads", lead_id, "convert"]:
                fields = dict(data.get("fields") or {})
                converted = standin.convert_lead(lead_id, data.get("contact_id"), **fields)
                return Reply(200, {"contact_id": converted})
            case ["POST", "accounts"]:
                fields = dict(data.get("fields") or {})
                if data.get("person"):
                    return Reply(201, {"id": standin.add_person_account(**fields)})
                return Reply(201, {"id": standin.add_account(**fields)})
            case ["GET", "accounts", account_id]:
                record = standin.account(account_id)
                return Reply(200, record) if record else Reply(404, {"error": "not found"})
            case ["GET", "describe", object_name]:
                return Reply(200, standin.describe(object_name))
            case ["POST", "schema", object_name, field_name]:
                standin.set_field(object_name, field_name, **data)
                return Reply(204)
            case ["DELETE", "schema", object_name, field_name]:
                standin.remove_field(object_name, field_name)
                return Reply(204)
            case ["POST", "validation-rules"]:
                rule_id = standin.add_validation_rule(
                    data["object"],
                    data["name"],
                    data["formula"],
                    data["message"],
                    display_field=data.get("display_field"),
                    active=bool(data.get("active", True)),
                    description=data.get("description"),
                )
                return Reply(201, {"id": rule_id})
            case ["POST", "expire-sessions"]:
                standin.expire_sessions()
                return Reply(204)
            case ["POST", "config"]:
                polls = data.get("bulk_in_progress_polls")

                def flag(name: str) -> bool | None:
                    return bool(data[name]) if name in data else None

                standin.configure(
                    page_size=int(data["page_size"]) if "page_size" in data else None,
                    auto_create=flag("auto_create"),
                    version_rule=flag("version_rule"),
                    version_rule_active=flag("version_rule_active"),
                    bulk_in_progress_polls=int(polls) if polls is not None else None,
                    person_accounts=flag("person_accounts"),
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

    def undelete_contact(self, contact_id: str) -> None:
        self._request("POST", f"contacts/{contact_id}/undelete")

    def merge_contacts(self, survivor_id: str, loser_id: str) -> datetime:
        answer = self._request("POST", f"contacts/{survivor_id}/merge", {"loser_id": loser_id})
        return parse_datetime(answer["SystemModstamp"])

    def task(self, external_id: str) -> dict[str, Any] | None:
        """The Task whose ``task_external_id`` field holds this value."""
        name = str(self.state(records=False)["task_external_id"])
        return next((task for task in self.tasks() if task.get(name) == external_id), None)

    def add_lead(self, **fields: Any) -> str:
        return self.add_leads([fields])[0]

    def add_leads(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        payload = {"leads": [dict(record) for record in records]}
        return list(self._request("POST", "leads", payload)["ids"])

    def lead(self, lead_id: str) -> dict[str, Any] | None:
        return self._record("leads", lead_id)

    def leads(self) -> dict[str, dict[str, Any]]:
        return {k: revive(v) for k, v in self.state()["leads"].items()}

    def convert_lead(self, lead_id: str, contact_id: str | None = None, **fields: Any) -> str:
        payload = {"contact_id": contact_id, "fields": fields}
        return str(self._request("POST", f"leads/{lead_id}/convert", payload)["contact_id"])

    def add_account(self, **fields: Any) -> str:
        return str(self._request("POST", "accounts", {"fields": fields})["id"])

    def add_person_account(self, **fields: Any) -> str:
        payload = {"fields": fields, "person": True}
        return str(self._request("POST", "accounts", payload)["id"])

    def account(self, account_id: str) -> dict[str, Any] | None:
        return self._record("accounts", account_id)

    def accounts(self) -> dict[str, dict[str, Any]]:
        return {k: revive(v) for k, v in self.state()["accounts"].items()}

    def _record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        try:
            return revive(self._request("GET", f"{kind}/{record_id}"))
        except RuntimeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def describe(self, object_name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"describe/{object_name}"))

    def set_field(self, object_name: str, field_name: str, **properties: Any) -> None:
        self._request("POST", f"schema/{object_name}/{field_name}", properties)

    def remove_field(self, object_name: str, field_name: str) -> None:
        self._request("DELETE", f"schema/{object_name}/{field_name}")

    def set_person_accounts(self, enabled: bool) -> None:
        self.configure(person_accounts=enabled)

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
        payload = {
            "object": object_name,
            "name": name,
            "formula": formula,
            "message": message,
            "display_field": display_field,
            "active": active,
            "description": description,
        }
        return str(self._request("POST", "validation-rules", payload)["id"])

    @property
    def login_url(self) -> str:
        """The generic login host's URL (it stands for https://login.salesforce.com)."""
        return str(self.state(records=False)["login_url"])

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
        version_rule_active: bool | None = None,
        bulk_in_progress_polls: int | None = None,
        person_accounts: bool | None = None,
    ) -> None:
        options = {
            "page_size": page_size,
            "auto_create": auto_create,
            "version_rule": version_rule,
            "version_rule_active": version_rule_active,
            "bulk_in_progress_polls": bulk_in_progress_polls,
            "person_accounts": person_accounts,
        }
        payload = {key: value for key, value in options.items() if value is not None}
        self._request("POST", "config", payload)

    def set_version_rule(self, installed: bool, *, active: bool | None = None) -> None:
        """Install (True) or remove (False) the org's ``Preference_Version_Not_Older`` rule;
        ``active`` (de)activates it."""
        self.configure(version_rule=installed, version_rule_active=active)

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
