"""A stand-in for the part of Marketing Cloud that Preference Desk uses.

A real HTTPS server on loopback, with a certificate generated at start (clients verify it
against ``ca_path``), speaking:

- the OAuth 2.0 client-credentials token endpoint, ``POST /v2/token`` (JSON), which names the
  SOAP and REST instance URLs (both this server);
- the SOAP API at ``POST /Service.asmx`` (SOAP 1.1, ``<fueloauth>`` header): ``Retrieve`` of
  ``Subscriber`` (filtered on ``SubscriberKey``, in the business units named by ``ClientIDs``,
  or all of them with ``QueryAllAccounts``) and ``Update`` of ``Subscriber`` (the status).
- ``Retrieve`` of the tracking events ``UnsubEvent`` and ``BounceEvent`` (filtered on
  ``EventDate``), ``page_size`` results an answer (2,500 as documented; smaller in tests), the
  rest through ``ContinueRequest``; the events are added with ``add_tracking_event``.

It keeps one status per business unit and subscriber key (``{(mid, key): status}``), counts
calls, and can be told to fail: latency, timeouts, HTTP 500/503, expired tokens, SOAP Server
(transient) and Client (permanent) faults, and the documented Client fault that is transient
("Synchronous request cannot be completed at this time...", ``sync_unavailable``). The token
request's ``account_id`` must be a JSON number, as "Access Token for Server-to-Server
Integrations" documents it. Three ways to run it:

- in-process: ``with running_standin() as server: ...`` (wrap that in a pytest fixture);
- in another process, driven over HTTPS: ``with standin_process() as server: ...`` yields a
  ``MarketingCloudStandInClient`` with the same helper methods, talking to the control
  endpoints under ``/__standin__/`` (authenticated by the client secret);
- standalone for the demo: ``python -m standins.marketing_cloud --port 8444
  --state-file .data/marketing-cloud.json [--seed subscribers.json]``.

Deliberate simplifications, each one safe for what the app does: one enterprise account (a
parent business unit and its children), one installed package; only the Subscriber,
UnsubEvent and BounceEvent objects; filters on SubscriberKey (Subscriber) and EventDate
(events) only; requests are applied one at a time (a global lock). Error messages for
refusals the documentation does not spell out are the stand-in's own.

Modules: ``store`` (subscribers per business unit, the state file), ``soap`` (envelopes and
SOAP faults), ``routes`` (the token endpoint, Retrieve and Update), ``faults``, ``control``
(``/__standin__/`` and its client), ``standin`` (the class that wires them together) and
``cli``.
"""

from standins.common.control import CONTROL_PREFIX, DEFAULT_CLIENT_ID, SECRET_HEADER
from standins.marketing_cloud.cli import main
from standins.marketing_cloud.control import MarketingCloudStandInClient, standin_process
from standins.marketing_cloud.faults import FAULT_KINDS, SYNC_UNAVAILABLE
from standins.marketing_cloud.routes import PAGE_SIZE, TOKEN_LIFETIME, TOKEN_PATH
from standins.marketing_cloud.soap import (
    API_FAULT,
    FUEL_OAUTH,
    PARTNER_API,
    SOAP_ENV,
    SOAP_PATH,
    SUBSCRIBER_PROPERTIES,
    TRACKING_PROPERTIES,
    WSA,
    WSSE,
    WSU,
    XSI,
)
from standins.marketing_cloud.standin import MarketingCloudStandIn, running_standin
from standins.marketing_cloud.store import (
    BOUNCE_CATEGORIES,
    CHILD_MIDS,
    PARENT_MID,
    SETTABLE_STATUSES,
    STATUSES,
    TRACKING_OBJECTS,
)

__all__ = [
    "API_FAULT",
    "BOUNCE_CATEGORIES",
    "CHILD_MIDS",
    "CONTROL_PREFIX",
    "DEFAULT_CLIENT_ID",
    "FAULT_KINDS",
    "FUEL_OAUTH",
    "PAGE_SIZE",
    "PARENT_MID",
    "PARTNER_API",
    "SECRET_HEADER",
    "SETTABLE_STATUSES",
    "SOAP_ENV",
    "SOAP_PATH",
    "STATUSES",
    "SUBSCRIBER_PROPERTIES",
    "SYNC_UNAVAILABLE",
    "TOKEN_LIFETIME",
    "TOKEN_PATH",
    "TRACKING_OBJECTS",
    "TRACKING_PROPERTIES",
    "WSA",
    "WSSE",
    "WSU",
    "XSI",
    "MarketingCloudStandIn",
    "MarketingCloudStandInClient",
    "main",
    "running_standin",
    "standin_process",
]
