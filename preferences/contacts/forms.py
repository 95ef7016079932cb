from __future__ import annotations

from typing import Any

from django import forms

from lib.channels import OPT_OUT_LABELS, Channel
from preferences.forms import NOTE_REQUIRED, ConsentForm
from preferences.models import EmailCategory
from preferences.services import PreferenceState


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


class PreferencesForm(ConsentForm):
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
                label=OPT_OUT_LABELS[channel], required=False
            )
        # Retired categories stay listed while the contact still has them, so they can be removed.
        self.fields["categories"].choices = [  # type: ignore[attr-defined]
            (c.key, c.name) for c in categories if c.is_active or c.key in state.categories
        ]
        # A contact opted out of email has no categories (docs/design.md, rule 3): submitted
        # ticks are ignored.
        self.fields["categories"].disabled = state.opted_out[Channel.EMAIL]
        self.state = state

    def channel_fields(self) -> list[forms.BoundField]:
        return [self[f"opt_out_{channel}"] for channel in Channel.values]

    def clean_note(self) -> str:
        note: str = self.cleaned_data["note"].strip()
        if not note:
            raise forms.ValidationError(NOTE_REQUIRED)
        return note

    def opt_out(self) -> dict[str, bool]:
        return {c: self.cleaned_data[f"opt_out_{c}"] for c in Channel.values}
