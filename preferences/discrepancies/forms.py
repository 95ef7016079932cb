"""The discrepancies page's filters, and the forms that resolve one."""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet

from integrations import core
from integrations.models import APP, Discrepancy, DiscrepancyKind
from preferences.forms import ConsentForm, NoteForm

OPEN, RESOLVED, EVERY = "open", "resolved", "all"


def system_choices() -> list[tuple[str, str]]:
    systems = [(t.name, t.label) for t in core.targets() if t.reconcile is not None]
    return [("", "Every system"), *systems, (APP, "The app's own data")]


class DiscrepancyFilterForm(forms.Form):
    """From the URL; by default the open discrepancies of every kind and system."""

    kind = forms.ChoiceField(choices=[("", "Every kind"), *DiscrepancyKind.choices], required=False)
    system = forms.ChoiceField(choices=system_choices, required=False)
    state = forms.ChoiceField(
        choices=[(OPEN, "Open"), (RESOLVED, "Resolved"), (EVERY, "Open and resolved")],
        required=False,
    )

    def discrepancies(self, queryset: QuerySet[Discrepancy]) -> QuerySet[Discrepancy]:
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("kind"):
            queryset = queryset.filter(kind=data["kind"])
        if data.get("system"):
            queryset = queryset.filter(system=data["system"])
        state = data.get("state") or OPEN
        if state == OPEN:
            queryset = queryset.filter(resolved_at__isnull=True)
        elif state == RESOLVED:
            queryset = queryset.filter(resolved_at__isnull=False)
        return queryset


class AcceptForm(ConsentForm, NoteForm):
    """Accepting the other system's values: the note, and the contact's consent when that
    clears an opt-out."""
