from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    """The sync core: its tasks (push, sweep) and the Sync problems page. Each outside
    system is an app of its own that registers its target here when ready."""

    name = "integrations"
    verbose_name = "Integrations"
