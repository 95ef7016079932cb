"""The staff pages, one URL namespace ("preferences:") made of each feature's own URLs."""

from django.urls import include, path

from integrations import urls as integration_urls
from preferences.bulk import urls as bulk_urls
from preferences.contacts import urls as contact_urls
from preferences.discrepancies import urls as discrepancy_urls
from preferences.resubscribe import urls as resubscribe_urls
from preferences.suppression import urls as suppression_urls

app_name = "preferences"
urlpatterns = [
    *contact_urls.urlpatterns,
    *bulk_urls.urlpatterns,
    *resubscribe_urls.urlpatterns,
    *discrepancy_urls.urlpatterns,
    *integration_urls.urlpatterns,
    path("suppression/", include(suppression_urls)),
]
