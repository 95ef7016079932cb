from django.urls import path

from preferences import bulk_views, resubscribe_views, views

app_name = "preferences"
urlpatterns = [
    path("", views.home, name="home"),
    path("contacts/", views.search, name="search"),
    path("contacts/<int:pk>/", views.contact_detail, name="contact"),
    path("contacts/<int:pk>/preferences/", views.contact_update, name="update"),
    path("contacts/<int:pk>/escalate/", views.contact_escalate, name="escalate"),
    path("contacts/<int:pk>/sync/", views.contact_sync, name="contact_sync"),
    path("escalations/", views.escalation_list, name="escalations"),
    path("sync/problems/", views.sync_problems, name="sync_problems"),
    path("sync/<int:pk>/retry/", views.sync_retry, name="sync_retry"),
    path("ascend/runs/", views.ascend_runs, name="ascend_runs"),
    path("escalations/<int:pk>/resolve/", views.escalation_resolve, name="resolve_escalation"),
    path("bulk/", bulk_views.bulk_runs, name="bulk_runs"),
    path("bulk/new/", bulk_views.bulk_new, name="bulk_new"),
    path("bulk/drafts/", bulk_views.bulk_create, name="bulk_create"),
    path("bulk/<int:pk>/", bulk_views.bulk_run, name="bulk_run"),
    path("bulk/<int:pk>/confirm/", bulk_views.bulk_confirm, name="bulk_confirm"),
    path("bulk/<int:pk>/cancel/", bulk_views.bulk_cancel, name="bulk_cancel"),
    path(
        "contacts/<int:pk>/marketing-cloud/",
        resubscribe_views.contact_card,
        name="contact_marketing_cloud",
    ),
    path(
        "contacts/<int:pk>/marketing-cloud/refresh/",
        resubscribe_views.contact_refresh,
        name="contact_marketing_cloud_refresh",
    ),
    path("resubscribe/", resubscribe_views.queue, name="resubscribe_queue"),
    path("resubscribe/sheet.csv", resubscribe_views.sheet, name="resubscribe_sheet"),
    path("resubscribe/<int:pk>/", resubscribe_views.detail, name="resubscribe_request"),
    path("resubscribe/<int:pk>/start/", resubscribe_views.start, name="resubscribe_start"),
    path("resubscribe/<int:pk>/done/", resubscribe_views.complete, name="resubscribe_done"),
    path("resubscribe/<int:pk>/reject/", resubscribe_views.reject, name="resubscribe_reject"),
    path(
        "resubscribe/<int:pk>/marketing-cloud/",
        resubscribe_views.resubscribe_in_marketing_cloud,
        name="resubscribe_in_marketing_cloud",
    ),
    path("resubscribe/<int:pk>/urgent/", resubscribe_views.urgent, name="resubscribe_urgent"),
]
