"""How the event endpoints know a request came from the platform it names (docs/design.md,
"Events from email platforms"): an HMAC-SHA256 over the raw body, compared in constant time,
before the body is parsed.

Marketing Cloud's Event Notification Service signs the whole payload with the key it gave
when the callback was created and sends the digest base64-encoded in ``x-sfmc-ens-signature``;
the key is used as given. Our own signed webhook signs ``f"{timestamp}.".encode() + body``
with the sender's secret and sends ``X-PD-Signature: sha256=<hex>`` beside
``X-PD-Timestamp`` (unix seconds), so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

ENS_HEADER = "X-Sfmc-Ens-Signature"
WEBHOOK_SIGNATURE_HEADER = "X-PD-Signature"
WEBHOOK_TIMESTAMP_HEADER = "X-PD-Timestamp"
_PREFIX = "sha256="


def _digest(key: str, message: bytes) -> bytes:
    return hmac.new(key.encode(), message, hashlib.sha256).digest()


def sign_ens(key: str, body: bytes) -> str:
    """The x-sfmc-ens-signature value for `body` (what ENS sends; tests and senders)."""
    return base64.b64encode(_digest(key, body)).decode("ascii")


def ens_signature_valid(key: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is ENS's signature of `body` with the callback's signature key."""
    if not key or not header:
        return False
    try:
        given = base64.b64decode(header.strip().encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, _digest(key, body))


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """The X-PD-Signature value for `body` sent at `timestamp` (unix seconds, as sent)."""
    return (
        _PREFIX
        + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    )


def webhook_signature_valid(
    secret: str, timestamp: str | None, body: bytes, header: str | None
) -> bool:
    """Whether `header` signs this timestamp and body with the sender's secret."""
    if not secret or not timestamp or not header:
        return False
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    expected = sign_webhook(secret, timestamp, body).encode()
    given = header.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(given, expected)
