from django.urls import path

from preferences.bulk import views

urlpatterns = [
    path("bulk/", views.bulk_runs, name="bulk_runs"),
    path("bulk/new/", views.bulk_new, name="bulk_new"),
    path("bulk/drafts/", views.bulk_create, name="bulk_create"),
    path("bulk/<int:pk>/", views.bulk_run, name="bulk_run"),
    path("bulk/<int:pk>/confirm/", views.bulk_confirm, name="bulk_confirm"),
    path("bulk/<int:pk>/cancel/", views.bulk_cancel, name="bulk_cancel"),
]
