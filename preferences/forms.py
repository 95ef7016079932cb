from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import QuerySet
from django.utils import timezone

from preferences.models import (
    CHANNEL_OPT_OUT_LABELS,
    NEEDS_RESUBSCRIBE,
    RESUBSCRIBE_OPEN_STATES,
    BusinessUnit,
    Channel,
    ConsentMethod,
    EmailCategory,
    ResubscribeRequest,
    ResubscribeState,
)
from preferences.services import ConsentEvidence, PreferenceState

NOTE_REQUIRED = "Write a note: every change needs one."


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Find a contact",
        max_length=200,
        required=False,
        widget=forms.SearchInput(
            attrs={
                "placeholder": "Name, email, phone, Salesforce ID or Ascend ID",
                "autofocus": True,
            }
        ),
    )


class PreferencesForm(forms.Form):
    """The toggles, categories, note and consent evidence for one change.

    It only validates and normalises: the rules themselves are checked by apply_change().
    """

    version = forms.IntegerField(widget=forms.HiddenInput)
    categories = forms.MultipleChoiceField(
        label="Email categories", required=False, widget=forms.CheckboxSelectMultiple
    )
    note = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "What did the contact ask for, and how?"}
        ),
        max_length=4000,
        error_messages={"required": NOTE_REQUIRED},
    )
    consent_method = forms.ChoiceField(
        label="How the contact asked",
        choices=[("", "—"), *ConsentMethod.choices],
        required=False,
    )
    consent_obtained_at = forms.DateTimeField(
        label="When the contact asked",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    consent_attested = forms.BooleanField(
        label="I confirm the contact explicitly asked to be opted back in.", required=False
    )

    def __init__(
        self,
        *args: Any,
        categories: list[EmailCategory],
        state: PreferenceState,
        version: int,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault(
            "initial",
            {
                "version": version,
                "categories": sorted(state.categories),
                **{f"opt_out_{c}": state.opted_out[c] for c in Channel.values},
            },
        )
        super().__init__(*args, **kwargs)
        for channel in Channel.values:
            self.fields[f"opt_out_{channel}"] = forms.BooleanField(
                label=CHANNEL_OPT_OUT_LABELS[channel], required=False
            )
        # Retired categories stay listed while the contact still has them, so they can be removed.
        self.fields["categories"].choices = [  # type: ignore[attr-defined]
            (c.key, c.name) for c in categories if c.is_active or c.key in state.categories
        ]
        # A contact opted out of email has no categories (rule 3); submitted ticks are ignored.
        self.fields["categories"].disabled = state.opted_out[Channel.EMAIL]
        self.state = state

    def channel_fields(self) -> list[forms.BoundField]:
        return [self[f"opt_out_{channel}"] for channel in Channel.values]

    def clean_note(self) -> str:
        note: str = self.cleaned_data["note"].strip()
        if not note:
            raise forms.ValidationError(NOTE_REQUIRED)
        return note

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

    def opt_out(self) -> dict[str, bool]:
        return {c: self.cleaned_data[f"opt_out_{c}"] for c in Channel.values}

    def consent(self) -> ConsentEvidence | None:
        if not self.cleaned_data.get("consent_attested"):
            return None
        return ConsentEvidence(
            method=self.cleaned_data["consent_method"],
            obtained_at=self.cleaned_data["consent_obtained_at"],
            attested=True,
        )


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


class ResubscribeFilterForm(forms.Form):
    """The queue's filters, from the URL; by default the requests still to work."""

    ALL = "all"

    business_unit = forms.ModelChoiceField(
        queryset=BusinessUnit.objects.all(),
        to_field_name="mid",
        required=False,
        empty_label="All business units",
    )
    status = forms.ChoiceField(
        label="Status seen",
        choices=[("", "Any status"), *((s.value, s.label) for s in NEEDS_RESUBSCRIBE)],
        required=False,
    )
    state = forms.ChoiceField(
        choices=[("", "Open and in progress"), *ResubscribeState.choices, (ALL, "Any state")],
        required=False,
    )

    def requests(self, queryset: QuerySet[ResubscribeRequest]) -> QuerySet[ResubscribeRequest]:
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("business_unit"):
            queryset = queryset.filter(business_unit=data["business_unit"])
        if data.get("status"):
            queryset = queryset.filter(status_seen=data["status"])
        state = data.get("state", "")
        if not state:
            queryset = queryset.filter(state__in=RESUBSCRIBE_OPEN_STATES)
        elif state != self.ALL:
            queryset = queryset.filter(state=state)
        return queryset


class ResubscribeForm(NoteForm):
    confirm = forms.BooleanField(
        error_messages={"required": "Confirm the change in Marketing Cloud: tick the box."}
    )


class UrgentForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=2000,
        error_messages={"required": "Say why the request is urgent."},
    )

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why the request is urgent.")
        return reason
