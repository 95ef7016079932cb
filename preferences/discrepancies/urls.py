from django.urls import path

from preferences.discrepancies import views

urlpatterns = [
    path("discrepancies/", views.discrepancy_list, name="discrepancies"),
    path("discrepancies/<int:pk>/", views.discrepancy_detail, name="discrepancy"),
    path("discrepancies/<int:pk>/push/", views.discrepancy_push, name="discrepancy_push"),
    path("discrepancies/<int:pk>/accept/", views.discrepancy_accept, name="discrepancy_accept"),
    path("discrepancies/<int:pk>/dismiss/", views.discrepancy_dismiss, name="discrepancy_dismiss"),
]
