from django.apps import AppConfig


class AscendConfig(AppConfig):
    name = "integrations.ascend"
    label = "ascend"
    verbose_name = "Ascend"

    def ready(self) -> None:
        from integrations.ascend import export  # models are loaded only now

        export.register()
