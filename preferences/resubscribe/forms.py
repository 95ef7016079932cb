"""The re-subscribe queue's filters and the forms of its steps."""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet

from preferences.forms import NoteForm
from preferences.models import (
    NEEDS_RESUBSCRIBE,
    RESUBSCRIBE_OPEN_STATES,
    BusinessUnit,
    ResubscribeRequest,
    ResubscribeState,
)


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
