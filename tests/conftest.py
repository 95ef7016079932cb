from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pgtrigger
import pytest
from django.contrib.auth.models import User
from django.test import Client, TransactionTestCase

from preferences.management.commands.create_staff_user import create_staff_user
from tests import factories

_fixture_teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]


def _fixture_teardown_allowing_audit_truncate(self: TransactionTestCase) -> None:
    # Emptying the test database between transactional tests is the one TRUNCATE the
    # append-only audit table must let through.
    with pgtrigger.ignore("audit.AuditEntry:no_truncate", "audit.AuditSeal:no_truncate"):
        _fixture_teardown(self)


TransactionTestCase._fixture_teardown = _fixture_teardown_allowing_audit_truncate  # type: ignore[attr-defined]

# Every test in these directories carries the marker, so `-m "not browser and not
# reliability"` (./scripts/test --quick) leaves them out however a new file is written.
_MARKED_DIRECTORIES = {"browser": pytest.mark.browser, "reliability": pytest.mark.reliability}
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        directory = item.path.relative_to(_TESTS).parts[0]
        if marker := _MARKED_DIRECTORIES.get(directory):
            item.add_marker(marker)


PASSWORD = "a-long-test-password-2026"
ROLES = ("specialist", "manager", "system")


@pytest.fixture
def categories(db: None) -> list[Any]:
    return factories.make_categories()


@pytest.fixture
def contact(categories: list[Any]) -> Any:
    return factories.make_contact()


@pytest.fixture
def make_user(db: None) -> Callable[[str], User]:
    def make(role: str, email: str | None = None) -> User:
        return create_staff_user(email or f"{role}@test.example", role, PASSWORD)

    return make


@pytest.fixture
def specialist(make_user: Callable[[str], User]) -> User:
    return make_user("specialist")


@pytest.fixture
def manager(make_user: Callable[[str], User]) -> User:
    return make_user("manager")


@pytest.fixture
def system_user(make_user: Callable[[str], User]) -> User:
    return make_user("system")


@pytest.fixture
def outsider(db: None) -> User:
    """Signed in, but holds no role."""
    return User.objects.create_user("outsider@test.example", "outsider@test.example", PASSWORD)


def _client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def specialist_client(specialist: User) -> Client:
    return _client_for(specialist)


@pytest.fixture
def manager_client(manager: User) -> Client:
    return _client_for(manager)


@pytest.fixture
def system_client(system_user: User) -> Client:
    return _client_for(system_user)


@pytest.fixture
def outsider_client(outsider: User) -> Client:
    return _client_for(outsider)


@pytest.fixture
def marketing_cloud(settings: Any) -> Iterator[Any]:
    """The Marketing Cloud stand-in (HTTPS), with this process's settings pointing at it."""
    from integrations.marketing_cloud.client import forget_tokens
    from standins.marketing_cloud import running_standin

    forget_tokens()  # a token cached for an earlier stand-in on the same port must not leak
    with running_standin() as server:
        settings.MARKETING_CLOUD_ENABLED = True
        settings.MARKETING_CLOUD_AUTH_URL = server.url
        settings.MARKETING_CLOUD_CLIENT_ID = server.client_id
        settings.MARKETING_CLOUD_CLIENT_SECRET = server.client_secret
        settings.MARKETING_CLOUD_ACCOUNT_ID = server.parent_mid
        settings.MARKETING_CLOUD_CA_BUNDLE = server.ca_path
        settings.MARKETING_CLOUD_TIMEOUT = 5
        settings.SYNC_RETRY_BASE_SECONDS = 1
        yield server
    forget_tokens()
