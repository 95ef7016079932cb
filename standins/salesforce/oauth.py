"""The OAuth 2.0 token endpoint (client credentials and the JWT bearer flow) and the
sessions its tokens open."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization

from standins.common.http import Reply
from standins.salesforce.store import API_USER_ID, ORG_ID

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/services/oauth2/token"  # noqa: S105 (a path, not a password)


class ConnectedApp(Protocol):
    """Whom tokens are issued to and by: the stand-in's client and its URL."""

    client_id: str
    client_secret: str
    jwt_username: str | None

    @property
    def url(self) -> str: ...


def _refuse(error: str, description: str) -> Reply:
    return Reply(400, {"error": error, "error_description": description})


class OAuth:
    """Issues tokens for the stand-in's client and remembers them; a reset keeps them, so a
    worker holding one carries on."""

    def __init__(
        self, app: ConnectedApp, lock: threading.RLock, *, jwt_audiences: Iterable[str]
    ) -> None:
        self.app = app
        self._lock = lock
        self._tokens: dict[str, float] = {}
        self._jwt_key: Any = None
        self._jwt_audiences = set(jwt_audiences)

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

    def token(self, method: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer ``POST /services/oauth2/token``."""
        if method != "POST":
            return _refuse("invalid_request", "must use HTTP POST")
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
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
        audiences = {app.url, app.url + "/", *self._jwt_audiences}
        try:
            claims = jwt.decode(
                assertion,
                self._jwt_key,
                algorithms=["RS256"],
                audience=list(audiences),
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
