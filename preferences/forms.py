"""Form pieces every feature's pages share."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils import timezone

from audit.models import ConsentMethod
from lib.dates import StaffDateTimeField
from preferences.services import ConsentEvidence

NOTE_REQUIRED = "Write a note: every change needs one."


class NoteForm(forms.Form):
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=4000,
        error_messages={"required": "Write a note."},
    )

    def clean_note(self) -> str:
        note: str = self.cleaned_data["note"].strip()
        if not note:
            raise forms.ValidationError("Write a note.")
        return note


class ConsentForm(forms.Form):
    """How and when the contact asked to be opted back in, and the staff member's
    attestation (docs/design.md, rule 4): all three, or none. Whether a change needs them
    is apply_change's to say."""

    consent_method = forms.ChoiceField(
        label="How the contact asked",
        choices=[("", "—"), *ConsentMethod.choices],
        required=False,
    )
    consent_obtained_at = StaffDateTimeField(
        label="When the contact asked",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    consent_attested = forms.BooleanField(
        label="I confirm the contact explicitly asked to be opted back in.", required=False
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        given = [
            cleaned.get("consent_method"),
            cleaned.get("consent_obtained_at"),
            cleaned.get("consent_attested"),
        ]
        if any(given) and not all(given):
            raise forms.ValidationError(
                "Complete the consent confirmation: how the contact asked, when, and the "
                "attestation."
            )
        obtained_at = cleaned.get("consent_obtained_at")
        if obtained_at and obtained_at > timezone.now():
            self.add_error("consent_obtained_at", "This is in the future.")
        return cleaned

    def consent(self) -> ConsentEvidence | None:
        if not self.cleaned_data.get("consent_attested"):
            return None
        return ConsentEvidence(
            method=self.cleaned_data["consent_method"],
            obtained_at=self.cleaned_data["consent_obtained_at"],
            attested=True,
        )
