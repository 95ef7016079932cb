"""What can be made to go wrong: faults on whole requests (the shared rule, scoped to the
REST API) and rejections of single records.

Fault kinds: latency (answer after ``seconds``), timeout (hold the request ``seconds``,
default 60, then apply it anyway if still running: the client has given up by then, as
with a real slow org), http_503, http_500, unable_to_lock_row (400), request_limit_exceeded
(403), expire_sessions (invalidates every token, so the call gets a 401).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from standins.common.faults import DELAY_KINDS, FaultRule
from standins.common.http import Reply
from standins.salesforce.errors import Refusal

DATA_PREFIX = "/services/data/"

FAULT_KINDS = frozenset(
    {
        "latency",
        "timeout",
        "http_503",
        "http_500",
        "unable_to_lock_row",
        "request_limit_exceeded",
        "expire_sessions",
    }
)
# expire_sessions is no answer of its own: it ends the sessions and the call then fails
# as any call with a stale token does.
EXPIRE_SESSIONS = frozenset({"expire_sessions"})
ANSWER_KINDS = FAULT_KINDS - DELAY_KINDS - EXPIRE_SESSIONS

_ANSWERS = {
    "http_503": (503, "SERVER_UNAVAILABLE", "Service unavailable (stand-in fault)"),
    "http_500": (500, "UNKNOWN_EXCEPTION", "An unexpected error occurred (stand-in fault)"),
    "unable_to_lock_row": (
        400,
        "UNABLE_TO_LOCK_ROW",
        "unable to obtain exclusive access to this record",
    ),
    "request_limit_exceeded": (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
}


class SalesforceFault(FaultRule):
    def in_default_scope(self, path: str) -> bool:
        return path.startswith(DATA_PREFIX)


def fault_reply(kind: str) -> Reply:
    return Refusal(*_ANSWERS[kind]).reply()


@dataclass
class Rejection:
    code: str
    message: str
    fields: list[str]
    times: int | None


class Rejections:
    """Per contact, the rejections its updates meet, oldest first."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._rules: dict[str, list[Rejection]] = {}

    def add(
        self,
        contact_key: str,
        code: str,
        message: str | None,
        fields: Iterable[str],
        times: int | None,
    ) -> None:
        rejection = Rejection(code, message or f"{code} (stand-in rejection)", list(fields), times)
        with self._lock:
            self._rules.setdefault(contact_key, []).append(rejection)

    def take(self, contact_key: str) -> Rejection | None:
        with self._lock:
            rules = self._rules.get(contact_key)
            if not rules:
                return None
            rule = rules[0]
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    rules.pop(0)
            return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
