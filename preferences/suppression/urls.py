from django.urls import path

from preferences.suppression import views

urlpatterns = [
    path("", views.suppression_list, name="suppression_list"),
    path("export.csv", views.suppression_export, name="suppression_export"),
]
