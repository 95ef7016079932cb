from django.urls import path

from integrations import views
from integrations.ascend import views as ascend_views

# Part of the staff app's "preferences" namespace (preferences/urls.py), as the pages were.
urlpatterns = [
    path("sync/problems/", views.sync_problems, name="sync_problems"),
    path("sync/<int:pk>/retry/", views.sync_retry, name="sync_retry"),
    path("ascend/runs/", ascend_views.ascend_runs, name="ascend_runs"),
]
