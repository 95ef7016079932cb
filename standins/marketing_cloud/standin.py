"""MarketingCloudStandIn: the account's configuration, the helpers tests and the demo call,
and the wiring of store, routes, faults and control to the shared HTTPS base."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from standins.common.control import DEFAULT_CLIENT_ID
from standins.common.faults import FaultBook
from standins.common.http import Reply
from standins.common.standin import HttpStandIn
from standins.marketing_cloud.control import MarketingCloudControl
from standins.marketing_cloud.faults import FAULT_KINDS, MarketingCloudFault
from standins.marketing_cloud.routes import PAGE_SIZE, TOKEN_LIFETIME, MarketingCloudRoutes
from standins.marketing_cloud.store import CHILD_MIDS, PARENT_MID, SubscriberStore


class MarketingCloudStandIn(HttpStandIn):
    """One Marketing Cloud enterprise account (a parent business unit and its children) with
    one installed package, speaking HTTPS on loopback.

    Helpers for tests and the demo: ``set_subscriber``, ``subscriber``, ``status``,
    ``subscribers``, ``add_tracking_event``, ``add_tracking_events``, ``tracking_events``,
    ``fail``, ``clear_faults``, ``expire_tokens``, ``token_calls``,
    ``api_calls``, ``ens_verifications``, ``call_log``, ``reset``. All are thread-safe.
    """

    name = "marketing-cloud"
    ca_name = "Preference Desk Marketing Cloud stand-in CA"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = None,
        parent_mid: str = PARENT_MID,
        child_mids: Iterable[str] = CHILD_MIDS,
        token_lifetime: float = TOKEN_LIFETIME,
        page_size: int = PAGE_SIZE,
        state_file: str | Path | None = None,
        cert_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            client_id=client_id,
            client_secret=client_secret,
            state_file=state_file,
            cert_dir=cert_dir,
        )
        self.token_lifetime = token_lifetime
        self.page_size = page_size  # results per Retrieve answer; small ones test paging
        self.store = SubscriberStore(lock=self._lock, parent_mid=parent_mid, child_mids=child_mids)
        self.faults = FaultBook(MarketingCloudFault, FAULT_KINDS, self._lock)
        self.routes = MarketingCloudRoutes(self)
        self.control = MarketingCloudControl(self)
        self._load_state()

    @property
    def parent_mid(self) -> str:
        return self.store.parent_mid

    @property
    def child_mids(self) -> tuple[str, ...]:
        return self.store.child_mids

    @property
    def mids(self) -> tuple[str, ...]:
        return self.store.mids

    def _serve(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply | None:
        return self.routes.serve(method, path, headers, body)

    # -- helpers for tests and the demo -------------------------------------------------------

    def set_subscriber(
        self, key: str, status: str, *, mid: str | None = None, email: str | None = None
    ) -> None:
        """Give ``key`` this status (Active, Bounced, Held, Unsubscribed, Deleted; any case)
        in one business unit (default: the parent), creating the subscriber if need be."""
        self.set_subscribers([{"key": key, "status": status, "mid": mid, "email": email}])

    def set_subscribers(
        self, records: Iterable[Mapping[str, Any]], *, only_new: bool = False
    ) -> int:
        """Several at once: ``{"key", "status", "mid"?, "email"?}`` each. With ``only_new``,
        subscribers that exist already keep their state (a demo seed over a state file).
        Returns how many were written."""
        written = self.store.set_subscribers(records, only_new=only_new)
        self.mark_changed()
        return written

    def subscriber(self, key: str, mid: str | None = None) -> dict[str, Any] | None:
        return self.store.subscriber(key, mid)

    def status(self, key: str, mid: str | None = None) -> str | None:
        """The status in that business unit (default: the parent), or None if unknown."""
        record = self.subscriber(key, mid)
        return record["status"] if record is not None else None

    def subscribers(self) -> list[dict[str, Any]]:
        return self.store.subscribers()

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
        """Record a tracking event of a commercial send: ``kind`` UnsubEvent or BounceEvent,
        in business unit ``mid``, at ``event_date`` (an aware datetime, an ISO date in server
        time, or now). ``bounce_category``: Hard bounce, Soft bounce, Block bounce,
        Technical bounce or Unknown bounce (BounceEvent only)."""
        date = event_date.isoformat() if isinstance(event_date, datetime) else event_date
        self.add_tracking_events(
            [
                {
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
            ]
        )

    def add_tracking_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Several at once, as ``SubscriberStore.add_tracking_events`` takes them."""
        added = self.store.add_tracking_events(events)
        self.mark_changed()
        return added

    def tracking_events(self) -> list[dict[str, Any]]:
        """Every tracking event held, as recorded (dates in server time)."""
        return self.store.tracking_events()

    def fail(
        self,
        kind: str,
        *,
        times: int | None = None,
        until: Callable[[], bool] | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
        action: str | None = None,
        mid: str | None = None,
    ) -> int:
        """Make matching requests fail (or stall) while the fault lasts.

        ``kind``: latency (answer after ``seconds``), timeout (hold the request ``seconds``,
        default 60, then answer anyway if still running: the client has given up by then),
        http_500 / http_503 (an HTML error page, as from a load balancer), expire_tokens
        (invalidates every token; the call gets a Security fault "Login Failed"),
        server_fault (soap:Server "Unplanned Outage": transient), client_fault (soap:Client
        "User Not Authorized": will not heal by itself), sync_unavailable (soap:Client
        "Synchronous request cannot be completed at this time due to database problems. This
        request was not processed.": a client fault that heals, to be retried).

        Lasts ``times`` requests, ``for_seconds``, ``until`` the callable returns true, or
        (none given) until ``clear_faults``/``reset``. Without ``path_contains`` it hits the
        SOAP API only, not the token endpoint (``path_contains="/v2/token"`` for that; only
        latency, timeout and the HTTP kinds apply there). ``action`` (Retrieve, Update) and
        ``mid`` narrow it to one operation or business unit. Returns the fault's id.
        """
        return self.faults.add(
            kind,
            times=times,
            until=until,
            for_seconds=for_seconds,
            seconds=seconds,
            path_contains=path_contains,
            action=action,
            mid=mid,
        )

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far; a new token works again."""
        self.routes.expire_tokens()

    @property
    def token_calls(self) -> int:
        """Token requests answered, refused ones included (injected faults are not)."""
        with self._lock:
            return self.store.token_calls

    @property
    def api_calls(self) -> int:
        """SOAP calls answered (Login Failed and injected faults are not counted)."""
        with self._lock:
            return self.store.api_calls

    @property
    def ens_verifications(self) -> list[dict[str, str]]:
        """Each ``POST /platform/v1/ens-verify`` accepted: ``{"callbackId",
        "verificationKey", "mid"}`` (the MID of the token that made it), in order."""
        with self._lock:
            return [dict(entry) for entry in self.store.ens_verifications]

    @property
    def call_log(self) -> list[tuple[str, str]]:
        """(operation, MID) of every request: ("token", account_id), ("Retrieve", mid),
        ("Update", mid), in arrival order; failed ones included. A request naming several
        business units is one entry per MID."""
        with self._lock:
            return list(self.store.log)

    def reset(self) -> None:
        """Forget subscribers, tracking events, faults, counters. Issued tokens stay valid,
        so a worker holding one carries on (use expire_tokens() to test that)."""
        with self._lock:
            self.store.clear()
            self.faults.clear()
            self.mark_changed()

    def state(self, *, records: bool = True) -> dict[str, Any]:
        with self._lock:
            state: dict[str, Any] = {
                "token_calls": self.store.token_calls,
                "api_calls": self.store.api_calls,
                "faults": self.faults.describe(),
                "subscriber_count": len(self.store.records),
                "tracking_event_count": len(self.store.tracking),
                "mids": list(self.mids),
            }
            if records:
                state["call_log"] = [list(entry) for entry in self.store.log]
                state["ens_verifications"] = [dict(e) for e in self.store.ens_verifications]
                state["subscribers"] = self.store.subscribers()
                state["tracking_events"] = [dict(event) for event in self.store.tracking]
            return state

    # -- the state file ----------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return self.store.snapshot()

    def _restore(self, data: Mapping[str, Any]) -> None:
        self.store.restore(data)


@contextmanager
def running_standin(**options: Any) -> Iterator[MarketingCloudStandIn]:
    """A started stand-in for the duration of a ``with`` block (wrap in a pytest fixture)."""
    with MarketingCloudStandIn(**options) as standin:
        yield standin
