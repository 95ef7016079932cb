"""Form pieces every feature's pages share."""

from __future__ import annotations

from django import forms

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
