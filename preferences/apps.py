from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PreferencesConfig(AppConfig):
    name = "preferences"
    verbose_name = "Preferences"

    def ready(self) -> None:
        # Imported here, not at module level: an app's models load only after every
        # AppConfig exists, and these modules use them.
        from audit import vocabulary
        from preferences import services
        from preferences.models import EmailCategory
        from preferences.resubscribe import requests
        from preferences.roles import sync_roles

        post_migrate.connect(sync_roles, sender=self, dispatch_uid="preferences.sync_roles")
        services.register_after_change(requests.after_change)
        vocabulary.name_categories_with(
            lambda: dict(EmailCategory.objects.values_list("key", "name"))
        )
