"""The role check every view starts with."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


# HttpResponseBase: a streamed CSV export (StreamingHttpResponse) is a view too.
View = Callable[..., HttpResponseBase]


def staff_view(permission: str) -> Callable[[View], View]:
    """Sign-in required, then the permission; an htmx request is sent to sign-in whole."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                if request.htmx:
                    # An expired session: send the whole page, not the fragment, to sign-in.
                    messages.warning(
                        request,
                        "Your session expired and nothing was saved. Sign in, then make the "
                        "change again.",
                    )
                    back = request.htmx.current_url_abs_path or request.get_full_path()
                    return HttpResponseClientRedirect(redirect_to_login(back).url)
                return redirect_to_login(request.get_full_path())
            if not request.user.has_perm(permission):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
