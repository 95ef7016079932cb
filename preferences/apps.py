from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PreferencesConfig(AppConfig):
    name = "preferences"
    verbose_name = "Preferences"

    def ready(self) -> None:
        from preferences.roles import sync_roles

        post_migrate.connect(sync_roles, sender=self, dispatch_uid="preferences.sync_roles")
