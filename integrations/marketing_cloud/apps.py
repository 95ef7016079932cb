from django.apps import AppConfig


class MarketingCloudConfig(AppConfig):
    name = "integrations.marketing_cloud"
    label = "marketing_cloud"
    verbose_name = "Marketing Cloud"

    def ready(self) -> None:
        from integrations.marketing_cloud import sync  # models are loaded only now

        sync.register()
