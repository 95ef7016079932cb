"""The Marketing Cloud stand-in's control endpoints, the client that drives them from
another process, and ``standin_process`` to run one there.

Beyond the common endpoints: ``POST subscribers`` (one, or ``{"subscribers": [...],
"only_new"}``), ``GET subscribers/<mid>/<key>``, ``POST tracking-events`` (one, or
``{"events": [...]}``, as ``SubscriberStore.add_tracking_events`` takes them) and ``POST
expire-tokens``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from standins.common.control import ControlAPI, Controllable, StandInClient, client_process
from standins.common.http import Reply


class Account(Controllable, Protocol):
    """The helpers the endpoints below call: MarketingCloudStandIn's."""

    def set_subscribers(
        self, records: Iterable[Mapping[str, Any]], *, only_new: bool = False
    ) -> int: ...

    def subscriber(self, key: str, mid: str | None = None) -> dict[str, Any] | None: ...

    def expire_tokens(self) -> None: ...

    def add_tracking_events(self, events: Iterable[Mapping[str, Any]]) -> int: ...


class MarketingCloudControl(ControlAPI):
    standin: Account

    def route(
        self, method: str, parts: list[str], params: Mapping[str, str], data: Any
    ) -> Reply | None:
        standin = self.standin
        match [method, *parts]:
            case ["POST", "subscribers"]:
                records = data.get("subscribers", [data])
                written = standin.set_subscribers(records, only_new=bool(data.get("only_new")))
                return Reply(201, {"written": written})
            case ["GET", "subscribers", mid, key]:
                record = standin.subscriber(key, mid)
                if record is None:
                    return Reply(404, {"error": "not found"})
                return Reply(200, record)
            case ["POST", "tracking-events"]:
                events = data.get("events", [data])
                return Reply(201, {"added": standin.add_tracking_events(events)})
            case ["POST", "expire-tokens"]:
                standin.expire_tokens()
                return Reply(204)
        return super().route(method, parts, params, data)


class MarketingCloudStandInClient(StandInClient):
    """Drives a Marketing Cloud stand-in in another process through its HTTPS control
    endpoints. The same helpers as MarketingCloudStandIn, except ``fail(until=...)`` (a
    callable cannot cross processes: use ``times`` or ``for_seconds``)."""

    def set_subscriber(
        self, key: str, status: str, *, mid: str | None = None, email: str | None = None
    ) -> None:
        self._request(
            "POST", "subscribers", {"key": key, "status": status, "mid": mid, "email": email}
        )

    def set_subscribers(
        self, records: Iterable[Mapping[str, Any]], *, only_new: bool = False
    ) -> int:
        payload = {"subscribers": [dict(r) for r in records], "only_new": only_new}
        return int(self._request("POST", "subscribers", payload)["written"])

    def subscriber(self, key: str, mid: str | None = None) -> dict[str, Any] | None:
        mid = mid or str(self.state(records=False)["mids"][0])
        try:
            return dict(self._request("GET", f"subscribers/{mid}/{key}"))
        except RuntimeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def status(self, key: str, mid: str | None = None) -> str | None:
        record = self.subscriber(key, mid)
        return str(record["status"]) if record is not None else None

    def subscribers(self) -> list[dict[str, Any]]:
        return list(self.state()["subscribers"])

    def add_tracking_event(
        self,
        kind: str,
        mid: str,
        subscriber_key: str,
        email: str | None = None,
        event_date: datetime | str | None = None,
        *,
        bounce_category: str = "Hard bounce",
        send_id: int | str | None = None,
        smtp_code: str | None = None,
        smtp_reason: str | None = None,
    ) -> None:
        date = event_date.isoformat() if isinstance(event_date, datetime) else event_date
        event = {
            "object": kind,
            "mid": mid,
            "key": subscriber_key,
            "email": email,
            "date": date,
            "send_id": send_id,
            "bounce_category": bounce_category,
            "smtp_code": smtp_code,
            "smtp_reason": smtp_reason,
        }
        self.add_tracking_events([event])

    def add_tracking_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        payload = {"events": [dict(event) for event in events]}
        return int(self._request("POST", "tracking-events", payload)["added"])

    def tracking_events(self) -> list[dict[str, Any]]:
        return list(self.state()["tracking_events"])

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
        action: str | None = None,
        mid: str | None = None,
    ) -> int:
        return self._add_fault(
            kind,
            times=times,
            for_seconds=for_seconds,
            seconds=seconds,
            path_contains=path_contains,
            action=action,
            mid=mid,
        )

    def expire_tokens(self) -> None:
        self._request("POST", "expire-tokens")

    @property
    def token_calls(self) -> int:
        return int(self.state(records=False)["token_calls"])

    @property
    def ens_verifications(self) -> list[dict[str, str]]:
        return list(self.state()["ens_verifications"])


@contextmanager
def standin_process(
    *, port: int = 0, args: Iterable[str] = (), startup_timeout: float = 20.0
) -> Iterator[MarketingCloudStandInClient]:
    """Run ``python -m standins.marketing_cloud`` in a subprocess and yield a client for it."""
    with client_process(
        MarketingCloudStandInClient,
        "standins.marketing_cloud",
        label="Marketing Cloud",
        env_name="MARKETING_CLOUD_CLIENT_SECRET",
        clear_env=["MARKETING_CLOUD_CLIENT_ID", "MARKETING_CLOUD_ACCOUNT_ID"],
        port=port,
        args=args,
        startup_timeout=startup_timeout,
    ) as client:
        yield client
