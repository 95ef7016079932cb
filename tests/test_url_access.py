"""Every URL answers anonymous, outsider, specialist, manager and system team as intended.

The patterns are enumerated from the URLconf, so a view added without an entry in ACCESS
fails test_every_url_of_ours_has_an_access_rule until someone decides who may use it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse

from preferences.models import BulkRun, ContactSync
from preferences.services import apply_change, escalate
from tests import factories

LOGIN = "login"  # a redirect to the sign-in page
ROLES = ("anonymous", "outsider", "specialist", "manager", "system")

# url name: (method, {role: expected status or LOGIN})
ACCESS: dict[str, tuple[str, dict[str, int | str]]] = {
    # Machine endpoints: a signature, not a role, lets a platform in; with no key or secret
    # configured they do not exist (docs/design.md, "Events from email platforms").
    "events:marketing_cloud_ens": ("POST", {role: 404 for role in ROLES}),
    "events:webhook": ("POST", {role: 404 for role in ROLES}),
    "preferences:home": (
        "GET",
        {"anonymous": 302, "outsider": 302, "specialist": 302, "manager": 302, "system": 302},
    ),
    "preferences:search": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 200, "manager": 200, "system": 200},
    ),
    "preferences:contact": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 200, "manager": 200, "system": 200},
    ),
    # An empty POST reaches the form, which refuses it: 422 proves the role check passed.
    "preferences:update": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 422, "manager": 422, "system": 422},
    ),
    "preferences:escalate": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 422, "manager": 422, "system": 422},
    ),
    "preferences:clear_bounce": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 422, "manager": 422, "system": 422},
    ),
    "preferences:contact_sync": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 200, "manager": 200, "system": 200},
    ),
    "preferences:sync_problems": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 200},
    ),
    # Retrying a row that has not failed is refused with a message and a redirect.
    "preferences:sync_retry": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 302},
    ),
    "preferences:ascend_runs": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 200},
    ),
    "preferences:escalations": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 403},
    ),
    "preferences:resolve_escalation": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 302, "system": 403},
    ),
    # The audit log and its export: managers and the system team. The entry is the fixture's
    # opt-out, which is not a risky action: reviewing it is refused (422), by managers only.
    "audit:log": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
    "audit:export": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
    "audit:entry": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
    "audit:review": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 422, "system": 403},
    ),
    "audit:reports": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
    "audit:change_report_export": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
    "audit:chart_export": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
    # Bulk changes: managers only. The run is a draft; an empty POST to create or confirm
    # is refused by the form (422), cancelling discards the draft (302).
    "preferences:bulk_runs": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 403},
    ),
    "preferences:bulk_new": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 403},
    ),
    "preferences:bulk_create": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 422, "system": 403},
    ),
    "preferences:bulk_run": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 403},
    ),
    "preferences:bulk_confirm": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 422, "system": 403},
    ),
    "preferences:bulk_cancel": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 302, "system": 403},
    ),
    # The re-subscribe queue: the system team. An empty POST to a step is refused by its
    # form (422). Marketing Cloud is not configured in tests: refreshing says so (302 back to
    # the contact); an empty urgent mark goes back to the contact with the error (302).
    "preferences:resubscribe_queue": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 200},
    ),
    "preferences:resubscribe_sheet": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 200},
    ),
    "preferences:resubscribe_request": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 200},
    ),
    "preferences:resubscribe_start": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 422},
    ),
    "preferences:resubscribe_done": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 422},
    ),
    "preferences:resubscribe_reject": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 422},
    ),
    "preferences:resubscribe_in_marketing_cloud": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 422},
    ),
    "preferences:resubscribe_urgent": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 302, "manager": 302, "system": 302},
    ),
    "preferences:contact_marketing_cloud": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 200, "manager": 200, "system": 200},
    ),
    "preferences:contact_marketing_cloud_refresh": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 302, "manager": 302, "system": 302},
    ),
    # The system team's: managers and specialists have no use for them.
    "preferences:discrepancies": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 200},
    ),
    "preferences:discrepancy": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 200},
    ),
    "preferences:discrepancy_push": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 422},
    ),
    "preferences:discrepancy_accept": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 422},
    ),
    "preferences:discrepancy_dismiss": (
        "POST",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 403, "system": 422},
    ),
    # The global suppression list and its export: managers and the system team.
    "preferences:suppression_list": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
    "preferences:suppression_export": (
        "GET",
        {"anonymous": LOGIN, "outsider": 403, "specialist": 403, "manager": 200, "system": 200},
    ),
}
OUR_APPS = ("preferences.", "audit.", "config.", "integrations.")


def _patterns(
    resolver: URLResolver, namespace: str = "", route: str = ""
) -> Iterator[tuple[str, URLPattern, str]]:
    """(name, pattern, route) for every view, route being the regex-free path where it has one."""
    for pattern in resolver.url_patterns:
        here = route + str(pattern.pattern).lstrip("^").rstrip("$")
        if isinstance(pattern, URLResolver):
            inner = pattern.namespace or ""
            yield from _patterns(pattern, f"{namespace}{inner}:" if inner else namespace, here)
        else:
            yield f"{namespace}{pattern.name}", pattern, here


def _ours() -> dict[str, URLPattern]:
    return {
        name: pattern
        for name, pattern, _ in _patterns(get_resolver())
        if pattern.lookup_str.startswith(OUR_APPS)
    }


def test_every_url_of_ours_has_an_access_rule():
    missing = sorted(set(_ours()) - set(ACCESS))
    assert not missing, f"Add these URLs to ACCESS, with who may use them: {missing}"
    assert sorted(set(ACCESS) - set(_ours())) == [], "ACCESS names URLs that no longer exist"


@pytest.fixture
def objects(contact, specialist):
    opted_out = apply_change(
        contact=contact, actor=specialist, source="staff", note="x", opt_out={"email": True}
    )
    return {
        "pk": contact.pk,
        "entry": opted_out.pk,
        "escalation": escalate(contact=contact, actor=specialist, note="?").pk,
        "sync": ContactSync.objects.filter(contact=contact).first().pk,
        "bulk": BulkRun.objects.create(
            channel="email", criteria={"country": "US"}, created_by=specialist
        ).pk,
        "resubscribe": factories.make_resubscribe_request(contact, actor=specialist).pk,
        "discrepancy": factories.make_discrepancy(contact).pk,
    }


@pytest.fixture
def clients(specialist_client, manager_client, system_client, outsider_client):
    return {
        "anonymous": Client(),
        "outsider": outsider_client,
        "specialist": specialist_client,
        "manager": manager_client,
        "system": system_client,
    }


def _url(name: str, objects: dict[str, int]) -> str:
    pattern = _ours()[name]
    kwargs: dict[str, object] = {}
    if "platform" in pattern.pattern.converters:
        kwargs["platform"] = "unknown"
    if "pk" in pattern.pattern.converters:
        kind = "escalation" if "escalation" in name else "sync" if "sync_retry" in name else "pk"
        if name.startswith("audit:"):
            kind = "entry"
        if name.startswith("preferences:bulk_"):
            kind = "bulk"
        if name.startswith("preferences:resubscribe_"):
            kind = "resubscribe"
        if name.startswith("preferences:discrepancy"):
            kind = "discrepancy"
        kwargs["pk"] = objects[kind]
    return reverse(name, kwargs=kwargs)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(ACCESS))
def test_url_answers_each_role_as_intended(name, role, objects, clients):
    method, rules = ACCESS[name]
    expected = rules[role]
    url = _url(name, objects)
    response = getattr(clients[role], method.lower())(url)
    if expected == LOGIN:
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))
    else:
        assert response.status_code == expected


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(ACCESS))
def test_the_wrong_method_is_refused(name, objects, specialist_client):
    method, _ = ACCESS[name]
    other = "post" if method == "GET" else "get"
    response = getattr(specialist_client, other)(_url(name, objects))
    assert response.status_code == 405


@pytest.mark.django_db
def test_an_expired_session_under_htmx_redirects_the_whole_page_to_sign_in(objects):
    response = Client().post(
        reverse("preferences:update", kwargs={"pk": objects["pk"]}),
        headers={
            "HX-Request": "true",
            "HX-Current-URL": f"http://testserver/contacts/{objects['pk']}/",
        },
    )
    assert response.status_code == 200
    assert response.headers["HX-Redirect"].startswith(reverse("account_login"))
    assert f"next=/contacts/{objects['pk']}/" in response.headers["HX-Redirect"]


PUBLIC = {
    "account_login",
    "account_signup",  # answers that sign-up is closed (tested below)
    "account_reset_password",
    "account_reset_password_done",
    "account_reset_password_from_key_done",
    "account_inactive",
    "account_email_verification_sent",
    "account_reauthenticate",
    "socialaccount_login_cancelled",
    "socialaccount_login_error",
    "socialaccount_signup",
    "mfa_authenticate",
}


@pytest.mark.django_db
def test_third_party_pages_are_signed_in_only_except_sign_in_itself():
    """allauth and the admin: what an anonymous visitor can open is a short, known list."""
    for name, pattern, route in _patterns(get_resolver()):
        if pattern.lookup_str.startswith(OUR_APPS) or pattern.pattern.regex.groups:
            continue
        # Follow redirects: what matters is the page an anonymous visitor ends up seeing.
        response = Client().get("/" + route, follow=True)
        if response.status_code == 200:
            seen = resolve(response.request["PATH_INFO"]).url_name
            assert seen in PUBLIC, f"/{route} shows {seen} to anonymous visitors"
        else:
            assert response.status_code in (401, 403, 404, 405), (name, response.status_code)


@pytest.mark.django_db
def test_public_sign_up_is_closed():
    response = Client().post(
        reverse("account_signup"),
        {
            "email": "new@example.com",
            "password1": "x-long-password-1",
            "password2": "x-long-password-1",
        },
    )
    assert b"closed" in response.content.lower()
    from django.contrib.auth.models import User

    assert not User.objects.filter(email="new@example.com").exists()


@pytest.mark.django_db
def test_only_the_system_team_reaches_the_admin(clients):
    url = reverse("admin:index")
    assert clients["anonymous"].get(url).status_code == 302
    for role in ("outsider", "specialist", "manager"):
        assert clients[role].get(url, follow=True).status_code == 403, role
    assert clients["system"].get(url).status_code == 200
    assert (
        clients["system"].get(reverse("admin:preferences_emailcategory_changelist")).status_code
        == 200
    )
