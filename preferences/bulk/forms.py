"""Forms of the bulk opt-out pages: they validate and normalise; preferences.bulk acts."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from lib.channels import OPT_OUT_LABELS, Channel
from preferences.bulk.jobs import MAX_UPLOAD_BYTES, MAX_UPLOAD_ROWS
from preferences.forms import NOTE_REQUIRED
from preferences.models import EmailCategory

OPTED_OUT_CHOICES = [("", "Either"), ("no", "Not opted out yet"), ("yes", "Already opted out")]


class BulkRunForm(forms.Form):
    """What to opt out of, and who: filters (all must hold) or an uploaded list."""

    channel = forms.ChoiceField(
        label="Opt out of",
        choices=[(c, OPT_OUT_LABELS[c]) for c in Channel.values],
        initial=Channel.EMAIL,
    )
    country = forms.CharField(
        label="Country",
        max_length=2,
        required=False,
        help_text="Two-letter ISO code, for example FR.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 3}),
    )
    category = forms.ChoiceField(label="Subscribed to email category", required=False)
    opted_out = forms.ChoiceField(
        label="Current opt-out on that channel", choices=OPTED_OUT_CHOICES, required=False
    )
    upload = forms.FileField(
        label="Or upload a CSV file",
        required=False,
        help_text=(
            "One email address or Salesforce Contact ID (15 or 18 characters) per row; a "
            f"header row is optional. At most {MAX_UPLOAD_ROWS:,} rows "
            f"({MAX_UPLOAD_BYTES // 1024 // 1024} MB)."
        ),
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.txt,text/csv,text/plain"}),
    )

    def __init__(self, *args: Any, categories: list[EmailCategory], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["category"].choices = [  # type: ignore[attr-defined]
            ("", "Any"),
            *((c.key, c.name if c.is_active else f"{c.name} (retired)") for c in categories),
        ]

    def clean_country(self) -> str:
        country: str = self.cleaned_data["country"].strip().upper()
        if country and not re.fullmatch(r"[A-Z]{2}", country):
            raise forms.ValidationError("Two letters: the ISO 3166 code, for example FR.")
        return country

    def clean_upload(self) -> Any:
        upload = self.cleaned_data.get("upload")
        if upload and upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"The file is {upload.size / 1024 / 1024:.1f} MB; the limit is "
                f"{MAX_UPLOAD_BYTES // 1024 // 1024} MB. Split it into several bulk changes."
            )
        return upload

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        filters = [cleaned.get(name) for name in ("country", "category", "opted_out")]
        if cleaned.get("upload") and any(filters):
            raise forms.ValidationError("Use either the filters or an upload, not both.")
        if not cleaned.get("upload") and not any(filters) and not self.errors:
            raise forms.ValidationError(
                "Choose at least one filter, or upload a file: a bulk change never selects "
                "everyone."
            )
        return cleaned

    def criteria(self) -> dict[str, Any]:
        opted_out = {"yes": True, "no": False}.get(self.cleaned_data["opted_out"])
        values = {
            "country": self.cleaned_data["country"],
            "category": self.cleaned_data["category"],
            "opted_out": opted_out,
        }
        return {k: v for k, v in values.items() if v not in (None, "")}


class BulkConfirmForm(forms.Form):
    # The count the manager saw: if the selection has changed since, confirming is refused.
    expected = forms.IntegerField(widget=forms.HiddenInput, min_value=0, required=False)
    note = forms.CharField(
        label="Note",
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "Why are these contacts being opted out?"}
        ),
        max_length=4000,
        error_messages={"required": NOTE_REQUIRED},
    )

    def clean_note(self) -> str:
        note: str = self.cleaned_data["note"].strip()
        if not note:
            raise forms.ValidationError(NOTE_REQUIRED)
        return note
