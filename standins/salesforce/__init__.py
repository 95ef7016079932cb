"""A stand-in for the part of the Salesforce REST API (v60.0) that Preference Desk uses.

A real HTTPS server on loopback, with a certificate generated at start (clients verify it
against ``ca_path``). It keeps contacts and tasks in memory, counts API calls, sends the
``Sforce-Limit-Info`` header, and can be told to fail. Three ways to run it:

- in-process: ``server = SalesforceStandIn(port=0); server.start(); ...; server.stop()``, or
  ``with running_standin() as server: ...`` (wrap that in a pytest fixture);
- in another process, driven over HTTPS: ``with standin_process() as server: ...`` yields a
  ``SalesforceStandInClient`` with the same helper methods, talking to the control endpoints
  under ``/__standin__/`` (authenticated by the client secret);
- standalone for the demo:
  ``python -m standins.salesforce --port 8443 --state-file .data/salesforce.json``.

Beyond the REST API it answers Bulk API 2.0 query jobs on Contact (``/jobs/query``), and it
enforces the validation rule the README asks the org's admin to install
(``Preference_Version_Not_Older``: an update may not lower ``Preference_Version__c``),
installed by default and removable with ``set_version_rule(False)``.

Deliberate simplifications, each one safe for what the app does: one org, one API user;
only Contact and Task; SOQL limited to the two shapes the inbound sync sends (and, for Bulk
API jobs, no WHERE at all); requests are applied one at a time (a global lock), so every
call is atomic.

Modules: ``store`` (records, Ids, stamps, the state file), ``oauth`` (the token endpoint),
``routes`` (the REST API), ``query`` (SOQL and getUpdated), ``bulk`` (Bulk API 2.0 query
jobs), ``rules`` (the org's validation rule), ``errors`` (Salesforce's error shapes),
``faults``, ``control`` (``/__standin__/`` and its client), ``standin`` (the class that
wires them together) and ``cli``.
"""

from standins.common.control import CONTROL_PREFIX, DEFAULT_CLIENT_ID, SECRET_HEADER
from standins.salesforce.bulk import DEFAULT_RESULT_RECORDS, MAX_RESULT_RECORDS
from standins.salesforce.cli import main
from standins.salesforce.control import SalesforceStandInClient, standin_process
from standins.salesforce.faults import FAULT_KINDS
from standins.salesforce.oauth import JWT_GRANT, TOKEN_PATH
from standins.salesforce.query import DEFAULT_PAGE_SIZE
from standins.salesforce.routes import (
    API_VERSION,
    MAX_COLLECTION_SUBREQUESTS,
    MAX_RECORDS,
    MAX_SUBREQUESTS,
)
from standins.salesforce.rules import (
    VERSION_RULE_FORMULA,
    VERSION_RULE_MESSAGE,
    VERSION_RULE_NAME,
)
from standins.salesforce.standin import SalesforceStandIn, running_standin
from standins.salesforce.store import (
    ADMIN_USER_ID,
    API_USER_ID,
    DEFAULT_API_ALLOWANCE,
    DEFAULT_TASK_EXTERNAL_ID,
    INTEGRATION_USER_ID,
    ORG_ID,
    VERSION_FIELD,
    format_datetime,
    id18,
    normalize_id,
    parse_datetime,
)

__all__ = [
    "ADMIN_USER_ID",
    "API_USER_ID",
    "API_VERSION",
    "CONTROL_PREFIX",
    "DEFAULT_API_ALLOWANCE",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RESULT_RECORDS",
    "DEFAULT_TASK_EXTERNAL_ID",
    "FAULT_KINDS",
    "INTEGRATION_USER_ID",
    "JWT_GRANT",
    "MAX_COLLECTION_SUBREQUESTS",
    "MAX_RECORDS",
    "MAX_RESULT_RECORDS",
    "MAX_SUBREQUESTS",
    "ORG_ID",
    "SECRET_HEADER",
    "TOKEN_PATH",
    "VERSION_FIELD",
    "VERSION_RULE_FORMULA",
    "VERSION_RULE_MESSAGE",
    "VERSION_RULE_NAME",
    "SalesforceStandIn",
    "SalesforceStandInClient",
    "format_datetime",
    "id18",
    "main",
    "normalize_id",
    "parse_datetime",
    "running_standin",
    "standin_process",
]
