"""A stand-in for the part of the Salesforce REST API (v60.0) that Preference Desk uses.

A real HTTPS server on loopback, with a certificate generated at start (clients verify it
against ``ca_path``). It keeps the org's records in memory, counts API calls, sends the
``Sforce-Limit-Info`` header, and can be told to fail. Three ways to run it:

- in-process: ``server = SalesforceStandIn(port=0); server.start(); ...; server.stop()``, or
  ``with running_standin() as server: ...`` (wrap that in a pytest fixture);
- in another process, driven over HTTPS: ``with standin_process() as server: ...`` yields a
  ``SalesforceStandInClient`` with the same helper methods, talking to the control endpoints
  under ``/__standin__/`` (authenticated by the client secret);
- standalone for the demo:
  ``python -m standins.salesforce --port 8443 --state-file .data/salesforce.json``.

It is one org on two hosts: ``url`` is the org's My Domain, where the API and the OAuth
token endpoint live; ``login_url`` (a second port of the same server) is the generic
login.salesforce.com, which only has the token endpoint and refuses the client-credentials
flow there as Salesforce does (oauth.py). A second port rather than a path prefix, because a
client builds its token URL from a bare host URL and must see the two hosts as two origins,
as it does with a real org.

What it holds and answers, each as Salesforce's documentation describes it (cited in the
modules): Contact, Lead (convertible), Account (with person accounts when enabled) and
Task, with a per-object schema a test can change (schema.py) and their describe; updates
one at a time, through sObject Collections and composite; Task creation and upsert on an
External ID field; SOQL on every object through ``query``, ``queryAll`` (deleted and merged
records too) and Bulk API 2.0 query jobs (soql.py, query.py, bulk.py), with dateTime
literals only in the forms the SOQL reference documents; the Tooling API's ValidationRule
(tooling.py). It enforces the validation rule the README asks the org's admin to install
(``Preference_Version_Not_Older``: an update may not lower ``Preference_Version__c``),
installed by default and removable with ``set_version_rule(False)``.

Deliberate simplifications, each one safe for what the app does: one org, one API user;
only those four objects (Tasks the only ones the API creates); no relationship queries,
aggregates or subqueries; requests are applied one at a time (a global lock), so every call
is atomic.

Modules: ``schema`` (objects, fields, describe), ``store`` (records, Ids, stamps, merges,
lead conversion, person accounts, the state file), ``oauth`` (the token endpoint on both
hosts), ``soql`` (parsing and evaluating SOQL), ``query`` (the REST queries and
getUpdated), ``bulk`` (Bulk API 2.0 query jobs), ``rules`` (the org's validation rule),
``tooling`` (the Tooling API), ``routes`` (the REST API), ``errors`` (Salesforce's error
shapes), ``faults``, ``control`` (``/__standin__/`` and its client), ``standin`` (the class
that wires them together) and ``cli``.
"""

from standins.common.control import CONTROL_PREFIX, DEFAULT_CLIENT_ID, SECRET_HEADER
from standins.salesforce.bulk import DEFAULT_RESULT_RECORDS, MAX_RESULT_RECORDS
from standins.salesforce.cli import main
from standins.salesforce.control import SalesforceStandInClient, standin_process
from standins.salesforce.faults import FAULT_KINDS
from standins.salesforce.oauth import (
    DEFAULT_JWT_AUDIENCES,
    JWT_GRANT,
    LOGIN_AUDIENCE,
    SANDBOX_AUDIENCE,
    TOKEN_PATH,
)
from standins.salesforce.query import DEFAULT_PAGE_SIZE
from standins.salesforce.routes import (
    API_VERSION,
    MAX_COLLECTION_SUBREQUESTS,
    MAX_RECORDS,
    MAX_SUBREQUESTS,
)
from standins.salesforce.rules import (
    VERSION_RULE_FORMULA,
    VERSION_RULE_ID,
    VERSION_RULE_MESSAGE,
    VERSION_RULE_NAME,
)
from standins.salesforce.schema import (
    DEFAULT_ASCEND_ID_FIELD,
    DEFAULT_CATEGORY_FIELDS,
    Field,
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
    "DEFAULT_ASCEND_ID_FIELD",
    "DEFAULT_CATEGORY_FIELDS",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_JWT_AUDIENCES",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RESULT_RECORDS",
    "DEFAULT_TASK_EXTERNAL_ID",
    "FAULT_KINDS",
    "INTEGRATION_USER_ID",
    "JWT_GRANT",
    "LOGIN_AUDIENCE",
    "MAX_COLLECTION_SUBREQUESTS",
    "MAX_RECORDS",
    "MAX_RESULT_RECORDS",
    "MAX_SUBREQUESTS",
    "ORG_ID",
    "SANDBOX_AUDIENCE",
    "SECRET_HEADER",
    "TOKEN_PATH",
    "VERSION_FIELD",
    "VERSION_RULE_FORMULA",
    "VERSION_RULE_ID",
    "VERSION_RULE_MESSAGE",
    "VERSION_RULE_NAME",
    "Field",
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
