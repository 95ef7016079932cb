"""The contact channels a person can opt out of (docs/design.md, rule 1).

Preferences, the audit log's reports and the connectors all speak of channels, so the list
lives below them all. Adding a channel (SMS, mail) is one choice here and one entry in each
mapping, then `makemigrations` for the fields that offer the choice.
"""

from __future__ import annotations

from django.db import models


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    PHONE = "phone", "Phone"


# The Salesforce field each channel's opt-out is written to (Contact and Lead alike).
SALESFORCE_FIELDS: dict[str, str] = {
    Channel.EMAIL: "HasOptedOutOfEmail",
    Channel.PHONE: "DoNotCall",
}
# How staff name each opt-out.
OPT_OUT_LABELS: dict[str, str] = {
    Channel.EMAIL: "Email opt-out",
    Channel.PHONE: "Do not call",
}
