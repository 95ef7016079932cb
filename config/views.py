from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.views.csrf import csrf_failure as django_csrf_failure
from django_htmx.http import HttpResponseClientRefresh


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """An htmx form whose token went stale (signed in again in another tab) reloads the page.

    htmx does not show a 403, so without this the change would be lost without a word.
    """
    if getattr(request, "htmx", False):
        messages.error(
            request,
            "Nothing was saved: the page was out of date and has been reloaded. "
            "Make the change again.",
        )
        return HttpResponseClientRefresh()
    return django_csrf_failure(request, reason)
