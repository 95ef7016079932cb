from django.apps import AppConfig
from django.conf import settings


class SalesforceConfig(AppConfig):
    """The Salesforce target. When it is enabled, its settings are checked as every process
    starts (web, worker, commands): a login URL Salesforce would refuse is a message now,
    not a failed sync later."""

    name = "integrations.salesforce"
    label = "salesforce"
    verbose_name = "Salesforce"

    def ready(self) -> None:
        if settings.SALESFORCE_ENABLED:
            from integrations.salesforce.client import SalesforceSettings

            SalesforceSettings.from_django()
