from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("", views.log, name="log"),
    path("export.csv", views.export, name="export"),
    path("<int:pk>/", views.entry_detail, name="entry"),
    path("<int:pk>/review/", views.review, name="review"),
    path("reports/", views.reports, name="reports"),
    path("reports/changes.csv", views.change_report_export, name="change_report_export"),
    path("reports/weekly.csv", views.chart_export, name="chart_export"),
]
