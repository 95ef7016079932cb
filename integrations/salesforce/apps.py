from django.apps import AppConfig


class SalesforceConfig(AppConfig):
    name = "integrations.salesforce"
    label = "salesforce"
    verbose_name = "Salesforce"

    def ready(self) -> None:
        from integrations.salesforce import sync  # models are loaded only now

        sync.register()
