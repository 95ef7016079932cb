"""Salesforce record ids, which the app, the connectors and the searches all read."""

from __future__ import annotations

import re

# Any 15- or 18-character id; what a connector accepts before putting it in a URL or SOQL.
SALESFORCE_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
# What staff typing in a search box most likely mean as an id: letters and digits both, so a
# 15-letter surname is not taken for one.
TYPED_SALESFORCE_ID = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def salesforce_id_18(value: str) -> str:
    """The case-insensitive 18-character form of a 15-character Salesforce ID."""
    if len(value) != 15:
        return value
    suffix = ""
    for start in range(0, 15, 5):
        bits = sum(1 << i for i, ch in enumerate(value[start : start + 5]) if ch.isupper())
        suffix += _CHECKSUM_ALPHABET[bits]
    return value + suffix
