"""The endpoints email platforms post events to (preferences/events/views.py)."""

from django.urls import path

from preferences.events import views

app_name = "events"
urlpatterns = [
    path("marketing-cloud/ens/", views.marketing_cloud_ens, name="marketing_cloud_ens"),
    path("webhook/<slug:platform>/", views.webhook, name="webhook"),
]
