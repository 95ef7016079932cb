from django.urls import path

from preferences.contacts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("contacts/", views.search, name="search"),
    path("contacts/<int:pk>/", views.contact_detail, name="contact"),
    path("contacts/<int:pk>/preferences/", views.contact_update, name="update"),
    path("contacts/<int:pk>/escalate/", views.contact_escalate, name="escalate"),
    path("contacts/<int:pk>/bounce/clear/", views.contact_clear_bounce, name="clear_bounce"),
    path("contacts/<int:pk>/sync/", views.contact_sync, name="contact_sync"),
    path("escalations/", views.escalation_list, name="escalations"),
    path("escalations/<int:pk>/resolve/", views.escalation_resolve, name="resolve_escalation"),
]
