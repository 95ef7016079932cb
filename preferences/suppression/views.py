"""The global suppression list (docs/design.md, rule 10): who gets no email from us, and why
since when; beside it, the sender opt-outs, which stop one sender's mail only (rule 9)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit.exports import FETCH_ROWS, stream_csv
from audit.models import Source
from lib.access import HtmxHttpRequest, staff_view
from preferences.models import BusinessUnit, Contact
from preferences.suppression.forms import GLOBAL, SuppressionFilterForm

VIEW = "preferences.view_suppression_list"
LIST_TEMPLATE = "preferences/suppression_list.html"
PAGE_SIZE = 100
SOURCE_LABELS = dict(Source.choices)

GLOBAL_HEADER = [
    "contact_id",
    "contact",
    "email",
    "salesforce_id",
    "reasons",
    "opted_out_since",
    "bounced_since",
    "spam_reported_at",
]
SENDER_HEADER = [
    "contact_id",
    "contact",
    "email",
    "salesforce_id",
    "sender",
    "sender_scope",
    "since",
    "source",
    "note",
]


def sender_labels() -> dict[str, str]:
    """Each business unit's scope and its name (a few rows, read once a page)."""
    return {
        f"business_unit:{mid}": name
        for mid, name in BusinessUnit.objects.values_list("mid", "name")
    }


def sender_label(scope: str, labels: dict[str, str]) -> str:
    """A sender as staff know it: the business unit's name, else the send account."""
    if scope in labels:
        return labels[scope]
    kind, _, key = scope.partition(":")
    if kind == "business_unit":
        return f"Business unit {key}"
    if kind == "send_account":
        return f"Send account {key}"
    return scope


def reasons_of(contact: Contact) -> list[tuple[str, datetime | None]]:
    """(reason, since when) for a contact read by SuppressionFilterForm.contacts()."""
    found: list[tuple[str, datetime | None]] = []
    if contact.opted_out_since is not None:  # type: ignore[attr-defined]
        found.append(("Opted out of email", contact.opted_out_since))  # type: ignore[attr-defined]
    if contact.email_bounced:
        found.append(("Bounced", contact.email_bounced_at))
    if contact.spam_reported_at is not None:
        found.append(("Spam report", contact.spam_reported_at))
    return found


def _page(rows: list[Any]) -> tuple[list[Any], int | None]:
    """A page of rows and the cursor for the next one (None on the last page)."""
    if len(rows) > PAGE_SIZE:
        return rows[:PAGE_SIZE], rows[PAGE_SIZE - 1].pk
    return rows, None


@require_GET
@staff_view(VIEW)
def suppression_list(request: HtmxHttpRequest) -> HttpResponse:
    form = SuppressionFilterForm(request.GET)
    if not form.is_valid():
        return render(request, LIST_TEMPLATE, {"form": form}, status=422)
    after = form.cleaned_data.get("after") or 0
    which = form.cleaned_data["list"]
    rows: list[Any]
    if which == GLOBAL:
        rows = list(form.contacts().filter(pk__gt=after)[: PAGE_SIZE + 1])
        rows, next_after = _page(rows)
        for contact in rows:
            contact.reasons = reasons_of(contact)
    else:
        rows = list(form.senders().filter(pk__gt=after)[: PAGE_SIZE + 1])
        rows, next_after = _page(rows)
        labels = sender_labels()
        for suppression in rows:
            suppression.sender = sender_label(suppression.scope, labels)
    context = {
        "form": form,
        "list": which,
        "rows": rows,
        "query": form.query_string(),
        "next_query": form.query_string(after=next_after) if next_after else "",
        "paged": bool(after),
    }
    template = LIST_TEMPLATE
    if request.htmx and not request.htmx.boosted:
        template += "#suppression"
    return render(request, template, context)


def _when(moment: datetime | None) -> str:
    return timezone.localtime(moment).isoformat(timespec="seconds") if moment else ""


def _name(first: str, last: str, salesforce_id: str) -> str:
    return f"{first} {last}".strip() or salesforce_id  # as Contact.__str__ has it


def _global_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[list[object]]:
    for pk, first, last, email, salesforce_id, opted_out_since, bounced, bounced_at, spam in rows:
        reasons = [
            reason
            for reason, on in (
                ("opted out", opted_out_since is not None),
                ("bounced", bounced),
                ("spam report", spam is not None),
            )
            if on
        ]
        yield [
            pk,
            _name(first, last, salesforce_id),
            email,
            salesforce_id,
            "; ".join(reasons),
            _when(opted_out_since),
            _when(bounced_at) if bounced else "",
            _when(spam),
        ]


def _sender_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[list[object]]:
    labels = sender_labels()
    for pk, first, last, email, salesforce_id, scope, since, source, note in rows:
        yield [
            pk,
            _name(first, last, salesforce_id),
            email,
            salesforce_id,
            sender_label(scope, labels),
            scope,
            _when(since),
            SOURCE_LABELS.get(source, source),
            note,
        ]


@require_GET
@staff_view(VIEW)
def suppression_export(request: HtmxHttpRequest) -> HttpResponseBase:
    """The list as filtered, every page, streamed (read as tuples: it may be a million)."""
    form = SuppressionFilterForm(request.GET)
    if not form.is_valid():
        return render(request, LIST_TEMPLATE, {"form": form}, status=422)
    stamp = f"{timezone.localtime():%Y%m%d-%H%M}"
    if form.cleaned_data["list"] == GLOBAL:
        # opted_out_since is contacts()'s annotation, which the type checker cannot see.
        contacts = form.contacts().values_list(  # type: ignore[misc]
            "pk",
            "first_name",
            "last_name",
            "email",
            "salesforce_id",
            "opted_out_since",
            "email_bounced",
            "email_bounced_at",
            "spam_reported_at",
        )
        rows = _global_rows(contacts.iterator(chunk_size=FETCH_ROWS))
        return stream_csv(f"suppression-list-{stamp}.csv", GLOBAL_HEADER, rows)
    senders = form.senders().values_list(
        "contact_id",
        "contact__first_name",
        "contact__last_name",
        "contact__email",
        "contact__salesforce_id",
        "scope",
        "since",
        "source",
        "note",
    )
    rows = _sender_rows(senders.iterator(chunk_size=FETCH_ROWS))
    return stream_csv(f"sender-opt-outs-{stamp}.csv", SENDER_HEADER, rows)
