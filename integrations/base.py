"""What every connector shares: one error model, the mapping of network failures onto it,
an HTTP session with timeouts, and a process-wide token cache.

Connectors (each integration's client.py) build on this and never import Django models:
they speak to an outside system and classify what went wrong; the sync functions decide
what a failure means for a contact. Each failure is transient (worth retrying later with
backoff) or permanent (retrying will not help until someone fixes the data or the
configuration), as docs/design.md, "Failures", sets out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Generic, TypeVar

import requests
from urllib3.exceptions import ConnectTimeoutError

T = TypeVar("T")

# Failures of the network and of TLS, the same whichever system was called.
TRANSIENT_CODES = frozenset({"TIMEOUT", "CONNECTION_ERROR", "TLS_ERROR", "INVALID_RESPONSE"})
PERMANENT_CODES = frozenset({"CERTIFICATE_VERIFY_FAILED", "TLS_CONFIGURATION", "INVALID_URL"})


class ConnectorError(Exception):
    """A call to an outside system failed. ``code`` is the system's error code (or ours, such
    as TIMEOUT); ``message`` is safe to show to the system team.

    ``outcome_unknown``: the request went out and no answer came back (a read timeout, a
    connection reset, a gateway giving up), so the system may still apply it, later than
    anything sent since (docs/design.md, "Sent is not held").
    """

    transient: ClassVar[bool] = False

    def __init__(
        self, code: str, message: str, status: int | None = None, *, outcome_unknown: bool = False
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.outcome_unknown = outcome_unknown


def describe(error: Exception) -> str:
    """ "code: message" for the system team, of a connector error or a refused argument."""
    if isinstance(error, ConnectorError):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


class TransientError(ConnectorError):
    """Worth retrying later with backoff: the same request may well succeed."""

    transient = True


class PermanentError(ConnectorError):
    """Retrying will not help until someone fixes the data or the configuration."""


def classify(
    status_code: int | None,
    error_code: str | None,
    *,
    transient: frozenset[str] = frozenset(),
    permanent: frozenset[str] = frozenset(),
) -> type[ConnectorError]:
    """Transient or permanent: by the error code first (the connector's own lists, then the
    shared ones), then by HTTP status (None: no answer at all)."""
    if error_code in transient or error_code in TRANSIENT_CODES:
        return TransientError
    if error_code in permanent or error_code in PERMANENT_CODES:
        return PermanentError
    if status_code is None or status_code >= 500 or status_code in (408, 429):
        return TransientError
    return PermanentError


def network_error(exc: OSError, *, system: str, ca_setting: str) -> ConnectorError:
    """The error for a request that got no usable answer from `system`."""
    if not isinstance(exc, requests.RequestException):
        # requests raises a bare OSError when the CA bundle file has gone missing.
        if "CA certificate bundle" in str(exc):
            return PermanentError("TLS_CONFIGURATION", str(exc))
        return TransientError("CONNECTION_ERROR", f"could not reach {system} ({exc})")
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return PermanentError(
                "CERTIFICATE_VERIFY_FAILED",
                f"{system}'s TLS certificate is not trusted (check {ca_setting})",
            )
        return TransientError("TLS_ERROR", type(exc).__name__)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransientError("TIMEOUT", f"{system} did not answer in time")
    if isinstance(exc, requests.Timeout):  # the request went out; the answer did not come
        return TransientError("TIMEOUT", f"{system} did not answer in time", outcome_unknown=True)
    if isinstance(exc, requests.exceptions.InvalidJSONError):
        return TransientError("INVALID_RESPONSE", f"{system}'s answer was not JSON")
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema,
    ):
        return PermanentError("INVALID_URL", str(exc))
    return TransientError(
        "CONNECTION_ERROR",
        f"could not reach {system} ({type(exc).__name__})",
        outcome_unknown=not _never_connected(exc),
    )


def _never_connected(exc: requests.RequestException) -> bool:
    """Whether the request certainly never reached the system (refused, unresolvable, a
    connect timeout), rather than being cut off after it was sent."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, ConnectTimeoutError)


def token_answer(
    response: requests.Response,
    classify: Callable[[int | None, str | None], type[ConnectorError]],
    *,
    refused: str,
) -> dict[str, Any]:
    """The JSON body of an OAuth 2.0 token endpoint's answer; a refusal (its ``error`` and
    ``error_description``, RFC 6749 section 5.2) is raised as the connector classifies it."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code != 200:
        code = str(body.get("error") or f"HTTP_{response.status_code}")
        message = str(body.get("error_description") or response.reason or refused)
        raise classify(response.status_code, code)(code, message, response.status_code)
    return body


class TimeoutSession(requests.Session):
    """Every request gets the configured timeouts and CA bundle.

    Passing ``verify`` per request matters: requests lets REQUESTS_CA_BUNDLE in the
    environment override a session's own ``verify``.
    """

    def __init__(self, timeout: tuple[float, float], verify: str | bool) -> None:
        super().__init__()
        self.timeout = timeout
        self.verify = verify

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


class TokenCache(Generic[T]):
    """One sign-in per process and credentials, shared by every client in the process.

    Outside systems rate-limit logins, and every task run signing in afresh would only add a
    call to each piece of work (Salesforce would refuse logins long before the API
    allowance ran out).
    """

    def __init__(self) -> None:
        self._tokens: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, *, fresh: Callable[[], T], stale: Callable[[T], bool]) -> T:
        """The cached token for `key`, or a new one from fresh() when there is none or the
        cached one is stale (expired, or refused by the system). Another client may already
        have replaced a stale token; then that one is used."""
        with self._lock:
            token = self._tokens.get(key)
        if token is None or stale(token):
            token = fresh()
            with self._lock:
                self._tokens[key] = token
        return token

    def forget(self) -> None:
        """Drop every cached token (tests; or after rotating credentials)."""
        with self._lock:
            self._tokens.clear()
