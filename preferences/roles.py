"""Staff roles, kept as Django groups with permissions; the views check permissions."""

from typing import Any

from django.apps import apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.db import DEFAULT_DB_ALIAS

SPECIALIST = "Specialist"
MANAGER = "Manager"
SYSTEM_TEAM = "System team"

_HANDLE_CONTACTS = ["preferences.view_contact", "preferences.change_preferences"]

ROLES: dict[str, list[str]] = {
    SPECIALIST: _HANDLE_CONTACTS,
    MANAGER: [
        *_HANDLE_CONTACTS,
        "preferences.resolve_escalation",
        "audit.view_audit_log",
        "audit.review_audit_entry",
        "audit.view_reports",
        "audit.run_bulk_change",
        "preferences.view_suppression_list",
    ],
    SYSTEM_TEAM: [
        *_HANDLE_CONTACTS,
        "audit.view_audit_log",
        "audit.view_reports",
        "preferences.manage_sync",
        "integrations.resolve_discrepancy",
        "preferences.work_resubscribe_queue",
        "preferences.view_emailcategory",
        "preferences.add_emailcategory",
        "preferences.change_emailcategory",
        "preferences.view_businessunit",
        "preferences.add_businessunit",
        "preferences.change_businessunit",
        "preferences.view_suppression_list",
    ],
}


def sync_roles(**kwargs: Any) -> None:
    """Make the groups hold exactly the permissions above (run after every migrate)."""
    using = kwargs.get("using", DEFAULT_DB_ALIAS)
    # post_migrate reaches this app before later apps have their permissions made.
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using)
    for name, perms in ROLES.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        wanted = []
        for perm in perms:
            app_label, codename = perm.split(".")
            wanted.append(
                Permission.objects.using(using).get(
                    content_type__app_label=app_label, codename=codename
                )
            )
        group.permissions.set(wanted)
