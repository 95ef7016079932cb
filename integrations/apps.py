from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    """The sync core: its tasks (push, sweep) and the Sync problems page. Each outside
    system is an app of its own (integrations.<name>) whose sync module registers its
    target."""

    name = "integrations"
    verbose_name = "Integrations"

    def ready(self) -> None:
        from integrations import core  # it imports models, which are loaded only now

        core.autodiscover()
