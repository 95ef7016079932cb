"""Whether a Salesforce org has what Preference Desk needs, before the app writes to it
(``manage.py salesforce_preflight``; README, "Salesforce set-up").

It signs in as the app does, reads the describe of each object the app reads and writes
(REST API Developer Guide, "sObject Describe") and the ordering rule through the Tooling API
(Tooling API Developer Guide, "ValidationRule"), and checks every field, External ID,
permission and validation rule the push, the pull, the load and the nightly comparison
use. The fields come from the same descriptions those use (objects.py), so a field the
code starts to need is checked from then on.

Describe answers as the run-as user sees the org: a field it has no access to is not
listed at all ("Understanding Describe Information Permissions", Apex Developer Guide), and
one it may read but not edit is ``updateable`` false (field permissions are Read and Edit:
"FieldPermissions", Object Reference). So a missing custom field may exist and only be
hidden; each step says both. Nothing here writes to Salesforce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from integrations.base import ConnectorError, TransientError, describe
from integrations.salesforce import objects
from integrations.salesforce.client import (
    SUPERSEDED_MARKER,
    SalesforceClient,
    SalesforceSettings,
)
from integrations.salesforce.objects import SalesforceObject
from preferences.models import ContactKind, EmailCategory

# The org's ordering rule (README, "Salesforce set-up"; docs/design.md, "Sent is not held").
VERSION_RULE_NAME = "Preference_Version_Not_Older"
VERSION_RULE_MESSAGE = (
    f"{SUPERSEDED_MARKER}: a newer Preference Desk change is already stored for this contact."
)
# What a note's Task carries besides its change id (client.note_task).
TASK_FIELDS = ("WhoId", "Subject", "Description", "ActivityDate", "Status")
# What the pull reads of a Lead to join a converted one to its Contact (inbound.py).
LEAD_CONVERSION_FIELDS = ("IsConverted", "ConvertedContactId")
TASK_MATCHES = ("upsert", "query")

SIGN_IN = "Sign-in"
TASK = "Task (notes)"
PERSON_ACCOUNTS = "Person accounts (Account)"

Kind = Literal[
    "sign-in", "connection", "field", "permission", "external ID", "validation rule", "setting"
]

_NUMBER = frozenset({"double", "int", "long"})  # a Number field describes as double
_CHECKBOX = frozenset({"boolean"})
_TEXT = frozenset({"string"})
_TYPE_NAMES = {
    "boolean": "Checkbox",
    "double": "Number",
    "int": "Number",
    "long": "Number",
    "string": "Text",
    "textarea": "Text Area",
    "email": "Email",
    "phone": "Phone",
    "picklist": "Picklist",
    "reference": "Lookup",
    "date": "Date",
    "datetime": "Date/Time",
}
# Staff words for the standard fields, when describe does not name them (a hidden field).
_LABELS = {
    "FirstName": "First Name",
    "LastName": "Last Name",
    "Email": "Email",
    "PersonEmail": "Email",
    "Phone": "Phone",
    "HasOptedOutOfEmail": "Email Opt Out",
    "PersonHasOptedOutOfEmail": "Email Opt Out",
    "DoNotCall": "Do Not Call",
    "PersonDoNotCall": "Do Not Call",
    "IsConverted": "Converted",
    "ConvertedContactId": "Converted Contact ID",
    "IsPersonAccount": "Is Person Account",
    "PersonContactId": "Person Contact ID",
    "WhoId": "Name",
    "Subject": "Subject",
    "Description": "Comments",
    "ActivityDate": "Due Date",
    "Status": "Status",
}
# Where Setup keeps each object's fields, and its name under a permission set's Object
# Settings. Task's custom fields are Activity fields.
_SETUP_OBJECT = {"Contact": "Contact", "Lead": "Lead", "Account": "Account", "Task": "Activity"}
_PLURAL = {"Contact": "Contacts", "Lead": "Leads", "Account": "Accounts", "Task": "Tasks"}
_PERMISSION_SET = "Setup > Permission Sets > (the integration user's permission set)"


# --- the result ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One thing the app needs, in staff words; when it is missing, what kind of thing it
    is and the exact set-up step."""

    group: str  # the object it is on (or Sign-in)
    subject: str
    ok: bool
    kind: Kind | None = None
    problem: str = ""
    step: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    # A line under a group's heading: what the settings make the app do there.
    about: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    @property
    def ready(self) -> bool:
        return bool(self.checks) and not self.missing

    def groups(self) -> dict[str, list[Check]]:
        found: dict[str, list[Check]] = {}
        for check in self.checks:
            found.setdefault(check.group, []).append(check)
        return found

    def summary(self) -> str:
        if self.ready:
            passed = len(self.checks)
            return f"Ready: Salesforce has everything Preference Desk needs ({passed} checks)."
        if not any(check.ok for check in self.checks if check.group == SIGN_IN):
            return "Could not sign in to Salesforce, so nothing else was checked."
        count = len(self.missing)
        return f"{count} thing{'s' if count != 1 else ''} to set up."


def render(report: Report) -> str:
    """The report as staff read it: grouped by object, ✓ or ✗, each ✗ with its step."""
    lines: list[str] = []
    for group, checks in report.groups().items():
        lines.append(group)
        if group in report.about:
            lines.append(f"  ({report.about[group]})")
        for check in checks:
            if check.ok:
                lines.append(f"  ✓ {check.subject}")
                continue
            lines.append(f"  ✗ {check.subject}: {check.problem} [{check.kind}]")
            lines.append(f"      Set up: {check.step}")
        lines.append("")
    lines.append(report.summary())
    return "\n".join(lines)


# --- what each object needs ------------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    name: str  # the field's API name on the object
    label: str  # staff words when describe does not name it
    purpose: str  # "read by the app", "changed by the app"...
    flags: tuple[str, ...] = ()  # describe flags it needs: updateable, createable, filterable
    types: frozenset[str] = frozenset()  # describe types accepted (empty: any)
    new_field: str = ""  # how Setup creates it, for a custom field
    external_id: bool = False


def _read(name: str) -> _Need:
    return _Need(name, _LABELS.get(name, name), "read by the app")


def _write(name: str, label: str, types: frozenset[str], new_field: str) -> _Need:
    return _Need(name, label, "changed by the app", ("updateable",), types, new_field)


def _object_needs(found: SalesforceObject, categories: list[_Category]) -> list[_Need]:
    """What the load, the pull, the push and the nightly comparison read and write on one
    object (objects.py), each with its staff label."""
    needs = [_read(name) for name in found.identity_fields()]
    if found.ascend_field:  # identity_fields() includes it; give it staff words
        ascend = _Need(
            found.ascend_field, "Ascend ID", "read by the app", new_field="Text, Length 20"
        )
        needs = [ascend if n.name == found.ascend_field else n for n in needs]
    if found.kind == ContactKind.LEAD:
        needs += [_read(name) for name in LEAD_CONVERSION_FIELDS]
    if settings.SALESFORCE_PERSON_ACCOUNTS and found.kind != ContactKind.LEAD:
        needs.append(_read("IsPersonAccount"))  # the filter telling them apart (objects.where)
    for name in found.opt_out_fields.values():
        needs.append(_write(name, _LABELS.get(name, name), _CHECKBOX, "Checkbox"))
    names = {category.key: category.name for category in categories}
    by_key = {category.key: category.field for category in categories}
    for key, name in found.category_fields(by_key).items():
        needs.append(
            _Need(
                name,
                names[key],
                "an email category's checkbox, changed by the app",
                ("updateable",),
                _CHECKBOX,
                "Checkbox, Default Value Unchecked",
            )
        )
    if found.version_field:
        needs.append(
            _write(
                found.version_field,
                "Preference Version",
                _NUMBER,
                "Number, Length 18, Decimal Places 0",
            )
        )
    return needs


def _task_needs(match: str, external_id: str) -> list[_Need]:
    # An upsert updates the Task a repeat finds, so its fields must be editable too.
    flags = ("createable", "updateable") if match == "upsert" else ("createable",)
    needs = [_Need(name, _LABELS[name], "written on each note", flags) for name in TASK_FIELDS]
    needs.append(
        _Need(
            external_id,
            "Preference Change Id",
            "each note's change id",
            (*flags, "filterable") if match == "query" else flags,
            _TEXT,
            "Text, Length 40, tick Unique and External ID",
            external_id=match == "upsert",
        )
    )
    return needs


@dataclass(frozen=True)
class _Category:
    key: str
    name: str
    field: str  # its Contact checkbox


def _active_categories() -> list[_Category]:
    """The categories the push writes and the pull reads (inbound.active_category_fields)."""
    rows = EmailCategory.objects.filter(is_active=True).values_list(
        "key", "name", "salesforce_field"
    )
    return [_Category(*row) for row in rows]


# --- the run ---------------------------------------------------------------------------------


def run(config: SalesforceSettings | None = None) -> Report:
    """Sign in, read what the app needs and report each need met or missing."""
    report = Report()
    try:
        config = config or SalesforceSettings.from_django()
    except ImproperlyConfigured as exc:
        report.checks.append(
            Check(SIGN_IN, "Salesforce settings", False, "sign-in", str(exc), _SETTINGS_STEP)
        )
        return report
    with SalesforceClient(config) as client:
        try:
            client.connect()
        except ConnectorError as error:
            report.checks.append(_sign_in_failed(config, error))
            return report
        report.checks.append(
            Check(SIGN_IN, f"Signed in at {config.login_url} ({_flow(config)})", True)
        )
        _check_org(client, config, report)
    return report


def _check_org(client: SalesforceClient, config: SalesforceSettings, report: Report) -> None:
    categories = _active_categories()
    in_use = objects.in_use()
    rules = _version_rules(client, [o.name for o in in_use if o.kind != ContactKind.PERSON_ACCOUNT])
    for found in in_use:
        group = PERSON_ACCOUNTS if found.kind == ContactKind.PERSON_ACCOUNT else found.name
        described = _describe(client, group, found.name, report)
        if described is None:
            continue
        report.checks.append(
            _object_access(group, found.name, described, ("queryable", "updateable"))
        )
        fields = _fields(described)
        if found.kind == ContactKind.PERSON_ACCOUNT and "ispersonaccount" not in fields:
            report.checks.append(_person_accounts_off())
            continue
        report.checks += [
            _field_check(group, found.name, need, fields)
            for need in _object_needs(found, categories)
        ]
        if found.version_field and found.kind != ContactKind.PERSON_ACCOUNT:
            report.checks.append(_rule_check(group, found, rules))
    _check_tasks(client, config, report)


def _check_tasks(client: SalesforceClient, config: SalesforceSettings, report: Report) -> None:
    match = str(getattr(settings, "SALESFORCE_TASK_MATCH", "upsert") or "upsert")
    name = config.task_external_id
    if match not in TASK_MATCHES:
        report.checks.append(
            Check(
                TASK,
                "SALESFORCE_TASK_MATCH names how notes are matched",
                False,
                "setting",
                f"it is {match!r}",
                "Set SALESFORCE_TASK_MATCH to upsert (the Task field is an External ID) or "
                "query (the app looks each note up before creating it).",
            )
        )
        match = "upsert"
    else:
        how = (
            f"upserted on {name}, which must be an External ID"
            if match == "upsert"
            else f"looked up by {name} before each is created"
        )
        report.about[TASK] = f"SALESFORCE_TASK_MATCH={match}: notes are {how}"
    described = _describe(client, TASK, "Task", report)
    if described is None:
        return
    flags = ("createable", "updateable") if match == "upsert" else ("createable", "queryable")
    report.checks.append(_object_access(TASK, "Task", described, flags))
    fields = _fields(described)
    report.checks += [_field_check(TASK, "Task", need, fields) for need in _task_needs(match, name)]


# --- describe --------------------------------------------------------------------------------


def _describe(
    client: SalesforceClient, group: str, object_name: str, report: Report
) -> dict[str, Any] | None:
    try:
        return client.describe(object_name)
    except ConnectorError as error:
        plural = _PLURAL[object_name]
        if isinstance(error, TransientError):
            step = (
                "Salesforce did not answer: run the preflight again; if it keeps failing, "
                "check SALESFORCE_LOGIN_URL, SALESFORCE_CA_BUNDLE and the network."
            )
            report.checks.append(
                Check(group, f"{plural} can be read", False, "connection", describe(error), step)
            )
        else:
            report.checks.append(
                Check(
                    group,
                    f"{plural} can be read",
                    False,
                    "permission",
                    f"Salesforce refused to describe {object_name} ({describe(error)})",
                    _object_permission_step(object_name, ("queryable", "updateable")),
                )
            )
        return None


def _fields(described: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        str(entry.get("name", "")).lower(): entry
        for entry in described.get("fields", [])
        if isinstance(entry, dict)
    }


def _object_access(
    group: str, object_name: str, described: Mapping[str, Any], flags: tuple[str, ...]
) -> Check:
    plural = _PLURAL[object_name]
    verbs = {"queryable": "read", "updateable": "changed", "createable": "created"}
    subject = f"{plural} can be " + " and ".join(verbs[f] for f in flags)
    lacking = [flag for flag in flags if not described.get(flag)]
    if not lacking:
        return Check(group, subject, True)
    return Check(
        group,
        subject,
        False,
        "permission",
        "the integration user cannot " + " or ".join(_VERB[f] for f in lacking) + f" {plural}",
        _object_permission_step(object_name, tuple(lacking)),
    )


_VERB = {"queryable": "read", "updateable": "edit", "createable": "create"}


def _object_permission_step(object_name: str, flags: tuple[str, ...]) -> str:
    if object_name == "Task":
        # Tasks have no object permissions of their own: "Edit Tasks" covers them.
        return f"{_PERMISSION_SET} > System Permissions > Edit: tick Edit Tasks; Save."
    ticks = {"queryable": "Read", "updateable": "Edit", "createable": "Create"}
    wanted = " and ".join(dict.fromkeys(["Read", *(ticks[f] for f in flags)]))
    return (
        f"{_PERMISSION_SET} > Object Settings > {_PLURAL[object_name]} > Edit: under Object "
        f"Permissions tick {wanted}; Save."
    )


# --- fields ----------------------------------------------------------------------------------


def _field_check(
    group: str, object_name: str, need: _Need, fields: Mapping[str, Mapping[str, Any]]
) -> Check:
    found = fields.get(need.name.lower())
    label = str(found.get("label") or need.label) if found else need.label
    subject = f"{label} ({need.name}), {need.purpose}"
    editable = bool({"updateable", "createable"} & set(need.flags))
    if found is None:
        if _custom(need.name):
            return Check(
                group,
                subject,
                False,
                "field",
                "missing, or hidden from the integration user",
                f"{_new_field_step(object_name, need)} Then {_grant(object_name, need, editable)} "
                "If the field already exists, only that grant is missing.",
            )
        return Check(
            group,
            subject,
            False,
            "permission",
            "hidden from the integration user (field-level security)",
            _grant(object_name, need, editable),
        )
    kind = str(found.get("type", ""))
    if need.types and (kind not in need.types or found.get("calculated")):
        wanted = _TYPE_NAMES.get(min(need.types), min(need.types))
        actual = "a formula" if found.get("calculated") else f"a {_TYPE_NAMES.get(kind, kind)}"
        return Check(
            group,
            subject,
            False,
            "field",
            f"it is {actual} field; the app needs a {wanted} field",
            f"Setup > Object Manager > {_setup_object(object_name, need)} > Fields & "
            f"Relationships > {label} > Change Field Type: {need.new_field or wanted}; Save "
            "(or point the setting at a field of that type).",
        )
    lacking = [flag for flag in need.flags if flag != "filterable" and not found.get(flag)]
    if lacking:
        return Check(
            group,
            subject,
            False,
            "permission",
            "read-only for the integration user (field-level security)",
            _grant(object_name, need, True, label),
        )
    if "filterable" in need.flags and not found.get("filterable"):
        return Check(
            group,
            subject,
            False,
            "field",
            "Salesforce cannot search on it, and the app looks notes up by it",
            f"Make it a Text field: Setup > Object Manager > Activity > Fields & Relationships "
            f"> {label} > Change Field Type: Text, Length 40; Save.",
        )
    if need.external_id and not found.get("externalId"):
        return Check(
            group,
            subject,
            False,
            "external ID",
            "not an External ID, and notes are upserted on it",
            "Either make it one: Setup > Object Manager > Activity > Fields & Relationships > "
            f"{label} > Edit: tick External ID (and Unique); Save. Or, where an Activity field "
            "cannot be an External ID, set SALESFORCE_TASK_MATCH=query: the app then looks "
            "each note up by this field before creating it.",
        )
    return Check(group, subject, True)


def _custom(name: str) -> bool:
    return name.endswith(("__c", "__pc"))


def _setup_object(object_name: str, need: _Need) -> str:
    # A person account's __pc field is the Contact's field (Salesforce Help, "Account
    # Fields": Contact custom fields are available for person accounts).
    return "Contact" if need.name.endswith("__pc") else _SETUP_OBJECT[object_name]


def _new_field_step(object_name: str, need: _Need) -> str:
    name = need.name
    api_name = name[: -len("__pc")] + "__c" if name.endswith("__pc") else name
    label = need.label
    where = _setup_object(object_name, need)
    also = " (person accounts show it as " + name + ")" if name.endswith("__pc") else ""
    return (
        f"Setup > Object Manager > {where} > Fields & Relationships > New > "
        f'{need.new_field or "Text"}: Field Label "{label}", Field Name '
        f'"{api_name.removesuffix("__c")}" (API name {api_name}){also}; Save.'
    )


def _grant(object_name: str, need: _Need, editable: bool, label: str = "") -> str:
    # Field-level security of a person account field is the Contact field's (Salesforce
    # Help, "Account Fields").
    plural = "Contacts" if need.name.endswith("__pc") else _PLURAL[object_name]
    access = "Read Access and Edit Access" if editable else "Read Access"
    return (
        f"{_PERMISSION_SET} > Object Settings > {plural} > Edit: under Field Permissions tick "
        f"{access} for {label or need.label} ({need.name}); Save."
    )


def _person_accounts_off() -> Check:
    return Check(
        PERSON_ACCOUNTS,
        "Person Accounts are turned on in the org",
        False,
        "setting",
        "SALESFORCE_PERSON_ACCOUNTS is on, but the org has no Person Accounts",
        "Set SALESFORCE_PERSON_ACCOUNTS=false if the org keeps people as Contacts only; "
        "otherwise have Salesforce turn Person Accounts on for the org.",
    )


# --- the ordering rule -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Rules:
    active: dict[str, bool] = field(default_factory=dict)  # object -> any rule active
    error: ConnectorError | None = None


def _version_rules(client: SalesforceClient, object_names: Iterable[str]) -> _Rules:
    """The ordering rule on each object, through the Tooling API's ValidationRule ("Tooling
    API Developer Guide", ValidationRule: ValidationName, Active, EntityDefinition)."""
    names = ", ".join(f"'{name}'" for name in object_names)  # the app's own object names
    if not settings.SALESFORCE_VERSION_FIELD or not names:
        return _Rules()
    soql = (
        "SELECT Id, ValidationName, Active, EntityDefinition.QualifiedApiName "
        f"FROM ValidationRule WHERE ValidationName = '{VERSION_RULE_NAME}' "
        f"AND EntityDefinition.QualifiedApiName IN ({names})"
    )
    try:
        records = client.tooling_query(soql)
    except ConnectorError as error:
        return _Rules(error=error)
    active: dict[str, bool] = {}
    for record in records:
        entity = record.get("EntityDefinition") or {}
        object_name = str(entity.get("QualifiedApiName", ""))
        active[object_name] = active.get(object_name, False) or bool(record.get("Active"))
    return _Rules(active)


def _rule_check(group: str, found: SalesforceObject, rules: _Rules) -> Check:
    subject = (
        f"Validation rule {VERSION_RULE_NAME}, so that a late push cannot replace newer values"
    )
    if rules.error is not None:
        if isinstance(rules.error, TransientError):
            return Check(
                group,
                subject,
                False,
                "connection",
                f"could not be read ({describe(rules.error)})",
                "Salesforce did not answer: run the preflight again.",
            )
        return Check(
            group,
            subject,
            False,
            "permission",
            f"the integration user cannot read validation rules ({describe(rules.error)})",
            f"{_PERMISSION_SET} > System Permissions > Edit: tick View Setup and "
            "Configuration; Save. If Salesforce still refuses, its message above names what "
            "is missing.",
        )
    if found.name not in rules.active:
        return Check(group, subject, False, "validation rule", "missing", _new_rule_step(found))
    if not rules.active[found.name]:
        return Check(
            group,
            subject,
            False,
            "validation rule",
            "installed but not active",
            f"Setup > Object Manager > {found.name} > Validation Rules > {VERSION_RULE_NAME} > "
            "Edit: tick Active; Save.",
        )
    return Check(group, subject, True)


def _new_rule_step(found: SalesforceObject) -> str:
    version = found.version_field
    return (
        f"Setup > Object Manager > {found.name} > Validation Rules > New: Rule Name "
        f"{VERSION_RULE_NAME}, tick Active, Error Condition Formula "
        f'PRIORVALUE({version}) > {version}, Error Message "{VERSION_RULE_MESSAGE}", '
        f"Error Location: Field, Preference Version ({version}); Save."
    )


# --- sign-in ---------------------------------------------------------------------------------

_SETTINGS_STEP = (
    "Set SALESFORCE_LOGIN_URL (the org's My Domain URL), SALESFORCE_CLIENT_ID and the "
    'secret or key (README, "Configuration").'
)


def _flow(config: SalesforceSettings) -> str:
    if config.auth == "jwt":
        return f"JWT bearer flow, as {config.username}"
    return "client credentials flow"


def _sign_in_failed(config: SalesforceSettings, error: ConnectorError) -> Check:
    subject = f"Sign in at {config.login_url} ({_flow(config)})"
    if isinstance(error, TransientError):
        step = (
            "Salesforce did not answer: check SALESFORCE_LOGIN_URL and the network, then run "
            "the preflight again."
        )
    elif error.code == "CERTIFICATE_VERIFY_FAILED":
        step = "Trust Salesforce's certificate: set SALESFORCE_CA_BUNDLE, or leave it empty."
    elif config.auth == "jwt":
        step = (
            "Setup > App Manager > (the connected app) > View: its certificate must match "
            "SALESFORCE_PRIVATE_KEY and its Consumer Key SALESFORCE_CLIENT_ID; then Manage > "
            'Edit Policies: Permitted Users "Admin approved users are pre-authorized", and '
            f"give {config.username or 'the integration user'} the app through its "
            "permission set (Assigned Connected Apps)."
        )
    else:
        step = (
            "Setup > App Manager > (the connected app) > View > Manage Consumer Details: "
            "SALESFORCE_CLIENT_ID is its Consumer Key and SALESFORCE_CLIENT_SECRET its "
            "Consumer Secret; then Manage > Edit Policies: tick Enable Client Credentials "
            "Flow and set Run As to the integration user."
        )
    return Check(SIGN_IN, subject, False, "sign-in", describe(error), step)
