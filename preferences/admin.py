from django.contrib import admin
from django.http import HttpRequest

from preferences.models import BusinessUnit, Contact, EmailCategory


@admin.register(EmailCategory)
class EmailCategoryAdmin(admin.ModelAdmin[EmailCategory]):
    list_display = ["name", "key", "salesforce_field", "position", "is_active"]
    list_editable = ["position", "is_active"]
    ordering = ["position", "name"]

    def has_delete_permission(self, request: HttpRequest, obj: EmailCategory | None = None) -> bool:
        # Subscriptions and the audit trail refer to categories: retire one instead.
        return False


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin[Contact]):
    """Read-only: preferences change on the contact page, through apply_change()."""

    list_display = ["__str__", "email", "salesforce_id", "ascend_id", "version"]
    search_fields = ["=email", "=salesforce_id", "=ascend_id"]
    ordering = ["-pk"]  # an index; sorting a million contacts by name is not
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Contact | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Contact | None = None) -> bool:
        return False


@admin.register(BusinessUnit)
class BusinessUnitAdmin(admin.ModelAdmin[BusinessUnit]):
    """The Marketing Cloud business units a re-enrolled contact is looked up in."""

    list_display = ["name", "mid", "is_parent", "position", "is_active"]
    list_editable = ["position", "is_active"]
    ordering = ["position", "name"]

    def has_delete_permission(self, request: HttpRequest, obj: BusinessUnit | None = None) -> bool:
        # Statuses and requests refer to business units: deactivate one instead.
        return False
