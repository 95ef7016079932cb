"""The OAuth 2.0 token endpoint (client credentials and the JWT bearer flow) and the
sessions its tokens open, on the two hosts a Salesforce client meets.

The stand-in's own URL is the org's **My Domain** (``https://MyDomainName.my.salesforce.com``).
Its **login host** (``login_url``, a second port on the same server) stands for the generic
``https://login.salesforce.com``: it answers the token endpoint and nothing else.

- Client credentials ("OAuth 2.0 Client Credentials Flow for Server-to-Server
  Integration", Salesforce Help): the token request goes to the org's My Domain; the login
  host refuses it, as Salesforce does, with HTTP 400 ``{"error": "invalid_grant",
  "error_description": "request not supported on this domain"}``.
- JWT bearer ("OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration", Salesforce
  Help): the assertion may be posted to either host; its ``aud`` must be
  ``https://login.salesforce.com``, ``https://test.salesforce.com`` or an Experience Cloud
  site URL, never the My Domain URL. ``jwt_audiences`` lists what this org accepts (by
  default the login and test hosts; add a site URL there), and the login host's own URL
  counts as ``https://login.salesforce.com``, which it stands for. Any other audience is
  refused with HTTP 400 ``invalid_grant`` ``audience is invalid``, the error Salesforce
  answers ("OAuth 2.0 Authorization Errors": a JWT bearer error is a standard OAuth error
  response, RFC 7523).

Tokens are issued for the org: ``instance_url`` is always the My Domain URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any, Protocol
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization

from standins.common.http import Reply
from standins.salesforce.store import API_USER_ID, ORG_ID

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/services/oauth2/token"  # noqa: S105 (a path, not a password)
LOGIN_AUDIENCE = "https://login.salesforce.com"
SANDBOX_AUDIENCE = "https://test.salesforce.com"
DEFAULT_JWT_AUDIENCES = (LOGIN_AUDIENCE, SANDBOX_AUDIENCE)


class ConnectedApp(Protocol):
    """Whom tokens are issued to and by: the stand-in's client and its URL."""

    client_id: str
    client_secret: str
    jwt_username: str | None

    @property
    def url(self) -> str: ...

    @property
    def login_url(self) -> str: ...


def _refuse(error: str, description: str) -> Reply:
    return Reply(400, {"error": error, "error_description": description})


class OAuth:
    """Issues tokens for the stand-in's client and remembers them; a reset keeps them, so a
    worker holding one carries on."""

    def __init__(
        self,
        app: ConnectedApp,
        lock: threading.RLock,
        *,
        jwt_audiences: Iterable[str] = DEFAULT_JWT_AUDIENCES,
    ) -> None:
        self.app = app
        self._lock = lock
        self._tokens: dict[str, float] = {}
        self._jwt_key: Any = None
        self.jwt_audiences = tuple(jwt_audiences)

    def audiences(self) -> list[str]:
        """The ``aud`` values an assertion may name: the configured ones (and the login
        host's URL for https://login.salesforce.com), each with or without a trailing slash;
        never the My Domain URL."""
        accepted = list(self.jwt_audiences)
        if LOGIN_AUDIENCE in accepted:
            with suppress(RuntimeError):  # not started: no login host yet
                accepted.append(self.app.login_url)
        my_domain = self.app.url.rstrip("/")
        return [
            form
            for audience in accepted
            if audience.rstrip("/") != my_domain
            for form in (audience.rstrip("/"), audience.rstrip("/") + "/")
        ]

    def set_jwt_public_key(self, pem: str | bytes) -> None:
        self._jwt_key = serialization.load_pem_public_key(
            pem.encode() if isinstance(pem, str) else pem
        )

    def valid(self, authorization: str) -> bool:
        """Whether an Authorization header names a live session."""
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            return scheme.lower() in ("bearer", "oauth") and token.strip() in self._tokens

    def expire_sessions(self) -> None:
        with self._lock:
            self._tokens.clear()

    def token(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        login_host: bool = False,
    ) -> Reply:
        """Answer ``POST /services/oauth2/token`` on the My Domain or the login host."""
        if method != "POST":
            return _refuse("invalid_request", "must use HTTP POST")
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        if grant == "client_credentials" and login_host:
            refusal: Reply | None = _refuse("invalid_grant", "request not supported on this domain")
        elif grant == "client_credentials":
            refusal = self._check_client(form, headers)
        elif grant == JWT_GRANT:
            refusal = self._check_assertion(form.get("assertion", ""))
        else:
            refusal = _refuse("unsupported_grant_type", "grant type not supported")
        if refusal is not None:
            return refusal
        return self._issue(API_USER_ID)

    def _check_client(self, form: Mapping[str, str], headers: Mapping[str, str]) -> Reply | None:
        app = self.app
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        scheme, _, basic = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and not client_id:
            try:
                decoded = base64.b64decode(basic, validate=True).decode("utf-8", "replace")
            except ValueError:
                decoded = ""
            client_id, _, client_secret = decoded.partition(":")
        if not (
            hmac.compare_digest(client_id.encode(), app.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), app.client_secret.encode())
        ):
            return _refuse("invalid_client", "invalid client credentials")
        return None

    def _check_assertion(self, assertion: str) -> Reply | None:
        app = self.app
        if self._jwt_key is None:
            return _refuse("invalid_grant", "no certificate is configured for this client")
        try:
            claims = jwt.decode(
                assertion,
                self._jwt_key,
                algorithms=["RS256"],
                audience=self.audiences(),
                options={"require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            return _refuse("invalid_grant", "expired authorization code")
        except jwt.InvalidAudienceError:
            return _refuse("invalid_grant", "audience is invalid")
        except jwt.PyJWTError:
            return _refuse("invalid_grant", "invalid assertion")
        if claims["iss"] != app.client_id:
            return _refuse("invalid_client_id", "client identifier invalid")
        if app.jwt_username is not None and claims["sub"] != app.jwt_username:
            return _refuse("invalid_grant", "user hasn't approved this consumer")
        return None

    def _issue(self, user_id: str) -> Reply:
        url = self.app.url
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        issued_at = str(int(time.time() * 1000))
        identity = f"{url}/id/{ORG_ID}/{user_id}"
        signature = base64.b64encode(
            hmac.new(
                self.app.client_secret.encode(),
                (identity + issued_at).encode(),
                hashlib.sha256,
            ).digest()
        ).decode()
        with self._lock:
            self._tokens[token] = time.time()
        return Reply(
            200,
            {
                "access_token": token,
                "instance_url": url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
                "signature": signature,
                "scope": "api",
            },
        )
