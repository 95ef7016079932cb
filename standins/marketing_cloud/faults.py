"""What can be made to go wrong, on the shared fault rule: scoped to the SOAP API, and
narrowed to one operation (``action``) or business unit (``mid``) if asked.

Kinds: latency (answer after ``seconds``), timeout (hold the request ``seconds``, default
60, then answer anyway if still running: the client has given up by then), http_500 /
http_503 (an HTML error page, as from a load balancer), expire_tokens (invalidates every
token; the call gets a Security fault "Login Failed"), server_fault (soap:Server "Unplanned
Outage": transient), client_fault (soap:Client "User Not Authorized": will not heal by
itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from standins.common.faults import FaultRule
from standins.common.http import Reply
from standins.marketing_cloud.soap import SOAP_PATH, SoapFault, html_reply

FAULT_KINDS = frozenset(
    {
        "latency",
        "timeout",
        "http_500",
        "http_503",
        "expire_tokens",
        "server_fault",
        "client_fault",
        "sync_unavailable",
    }
)
HTTP_KINDS = frozenset({"http_500", "http_503"})
SOAP_KINDS = frozenset({"server_fault", "client_fault", "sync_unavailable"})
SYNC_UNAVAILABLE = (
    "Synchronous request cannot be completed at this time due to database problems. "
    "This request was not processed."
)
EXPIRE_TOKENS = frozenset({"expire_tokens"})

_SOAP_FAULTS = {
    "server_fault": ("Server", "Unplanned Outage", 2),
    "client_fault": ("Client", "User Not Authorized: web service access has not been set", 11),
    "sync_unavailable": ("Client", SYNC_UNAVAILABLE, None),
}


@dataclass
class MarketingCloudFault(FaultRule):
    action: str | None = None  # Retrieve or Update
    mid: str | None = None

    filters: ClassVar[tuple[str, ...]] = ("action", "mid")

    def in_default_scope(self, path: str) -> bool:
        return path == SOAP_PATH

    def concerns(self, action: str, mids: Sequence[str]) -> bool:
        """Whether the request's operation and business units are the ones it narrows to
        (the token endpoint has neither)."""
        if self.action is not None and self.action != action:
            return False
        return self.mid is None or self.mid in mids


def fault_reply(kind: str, url: str) -> Reply:
    if kind == "http_500":
        return html_reply(500, "500 - Internal server error.")
    if kind == "http_503":
        return html_reply(503, "Service Unavailable")
    fault_kind, message, code = _SOAP_FAULTS[kind]
    return SoapFault(fault_kind, message, code).reply(url)
