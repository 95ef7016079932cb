from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from integrations.salesforce.client import forget_sessions
from standins.salesforce import SalesforceStandIn, running_standin
from tests import factories


@pytest.fixture
def standin(settings: Any) -> Iterator[SalesforceStandIn]:
    """The Salesforce stand-in (HTTPS), with this process's settings pointing at it."""
    forget_sessions()
    with running_standin() as server:
        settings.SALESFORCE_ENABLED = True
        settings.SALESFORCE_LOGIN_URL = server.url
        settings.SALESFORCE_CLIENT_ID = server.client_id
        settings.SALESFORCE_CLIENT_SECRET = server.client_secret
        settings.SALESFORCE_CA_BUNDLE = server.ca_path
        settings.SALESFORCE_TIMEOUT = 5
        settings.SYNC_RETRY_BASE_SECONDS = 1
        settings.SYNC_PULL_LAG_SECONDS = 0
        yield server
    forget_sessions()


@pytest.fixture
def synced_contact(standin: SalesforceStandIn, categories: Any) -> Any:
    salesforce_id = standin.add_contact(
        FirstName="Ada", LastName="Okafor", HasOptedOutOfEmail=False, DoNotCall=False
    )
    return factories.make_contact(salesforce_id=salesforce_id)
