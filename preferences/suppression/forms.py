"""The suppression list's filters, and the form that clears Bounced on the contact page."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from lib.channels import Channel
from lib.dates import StaffDateField
from preferences.forms import NoteForm
from preferences.models import ChannelPreference, Contact, SenderSuppression

GLOBAL, SENDERS = "global", "senders"
OPTED_OUT, BOUNCED, SPAM = "opted_out", "bounced", "spam_report"
REASONS = [(OPTED_OUT, "Opted out of email"), (BOUNCED, "Bounced"), (SPAM, "Spam report")]


def _email_opt_out() -> QuerySet[ChannelPreference]:
    return ChannelPreference.objects.filter(
        contact=OuterRef("pk"), channel=Channel.EMAIL, opted_out=True
    )


class SuppressionFilterForm(forms.Form):
    """From the URL: which list, which reason, since when; `after` is the page's cursor."""

    list = forms.ChoiceField(
        label="List",
        choices=[(GLOBAL, "Global suppression list"), (SENDERS, "Opted out of one sender")],
        required=False,
    )
    reason = forms.ChoiceField(
        label="Reason", choices=[("", "Any reason"), *REASONS], required=False
    )
    since = StaffDateField(
        label="Since", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    after = forms.IntegerField(min_value=0, required=False, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        cleaned["list"] = cleaned.get("list") or GLOBAL
        return cleaned

    @property
    def since_moment(self) -> datetime | None:
        day = self.cleaned_data.get("since")
        if day is None:
            return None
        return timezone.make_aware(datetime.combine(day, time.min))

    def contacts(self) -> QuerySet[Contact]:
        """The global list, in id order, each contact with since when for each reason.

        One reason: that reason since the date. Any reason: any of them since the date. Each
        filter reads an index (the email opt-out through the one-per-channel constraint,
        bounced and spam through their partial indexes), and a page is a walk in id order
        from the cursor, never a count of the whole list.
        """
        since = self.since_moment
        reason = self.cleaned_data.get("reason")
        found = Contact.objects.annotate(
            opted_out_since=Subquery(_email_opt_out().values("changed_at")[:1])
        )
        if reason == OPTED_OUT:
            # A semi-join: the opt-outs are read once, by the one-per-channel index.
            opted_out = _email_opt_out()
            if since is not None:
                opted_out = opted_out.filter(changed_at__gte=since)
            return found.filter(Exists(opted_out)).order_by("pk")
        by_reason = {
            # Any reason: one probe of that index per contact walked, where an EXISTS would
            # hash every opt-out first.
            OPTED_OUT: Q(opted_out_since__gte=since) if since else Q(opted_out_since__isnull=False),
            BOUNCED: Q(email_bounced=True) & (Q(email_bounced_at__gte=since) if since else Q()),
            SPAM: Q(spam_reported_at__gte=since) if since else Q(spam_reported_at__isnull=False),
        }
        if reason:
            found = found.filter(by_reason[reason])
        else:
            found = found.filter(by_reason[OPTED_OUT] | by_reason[BOUNCED] | by_reason[SPAM])
        return found.order_by("pk")

    def senders(self) -> QuerySet[SenderSuppression]:
        """The sender opt-outs (not on the global list), in id order."""
        found = SenderSuppression.objects.select_related("contact")
        if since := self.since_moment:
            found = found.filter(since__gte=since)
        return found.order_by("pk")

    def query_string(self, **extra: object) -> str:
        values = {
            "list": self.cleaned_data.get("list") or GLOBAL,
            "reason": self.cleaned_data.get("reason") or "",
            "since": self.cleaned_data.get("since") or "",
            **extra,
        }
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})


class ClearBounceForm(NoteForm):
    """Staff clear Bounced once the address is corrected: a note, and the version the page
    showed (a change made since is not overwritten)."""

    version = forms.IntegerField(min_value=0, widget=forms.HiddenInput)
