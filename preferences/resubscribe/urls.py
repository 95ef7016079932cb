from django.urls import path

from preferences.resubscribe import views

urlpatterns = [
    path(
        "contacts/<int:pk>/marketing-cloud/",
        views.contact_card,
        name="contact_marketing_cloud",
    ),
    path(
        "contacts/<int:pk>/marketing-cloud/refresh/",
        views.contact_refresh,
        name="contact_marketing_cloud_refresh",
    ),
    path("resubscribe/", views.queue, name="resubscribe_queue"),
    path("resubscribe/sheet.csv", views.sheet, name="resubscribe_sheet"),
    path("resubscribe/<int:pk>/", views.detail, name="resubscribe_request"),
    path("resubscribe/<int:pk>/start/", views.start, name="resubscribe_start"),
    path("resubscribe/<int:pk>/done/", views.complete, name="resubscribe_done"),
    path("resubscribe/<int:pk>/reject/", views.reject, name="resubscribe_reject"),
    path(
        "resubscribe/<int:pk>/marketing-cloud/",
        views.resubscribe_in_marketing_cloud,
        name="resubscribe_in_marketing_cloud",
    ),
    path("resubscribe/<int:pk>/urgent/", views.urgent, name="resubscribe_urgent"),
]
