from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Preference Desk administration"
# The admin signs in through allauth too, so MFA and SSO apply to it.
admin.site.login = secure_admin_login(admin.site.login)  # type: ignore[method-assign]

urlpatterns = [
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("audit/", include("audit.urls")),
    path("events/", include("preferences.events.urls")),
    path("", include("preferences.urls")),
]
