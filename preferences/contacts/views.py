"""Search, the contact page and its changes, and escalations."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Prefetch, Q
from django.http import HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit.models import AuditAction, AuditEntry, Source
from integrations import core
from integrations.models import Discrepancy, DiscrepancyKind
from lib.access import HtmxHttpRequest, staff_view
from lib.channels import OPT_OUT_LABELS, Channel
from preferences.contacts.forms import PreferencesForm, SearchForm
from preferences.discrepancies.views import system_label
from preferences.forms import NoteForm
from preferences.models import (
    SEARCH_LIMIT,
    ChannelPreference,
    Contact,
    EmailCategory,
    Escalation,
    Subscription,
    SyncStatus,
)
from preferences.resubscribe.views import marketing_cloud_context
from preferences.services import (
    ChangeRefused,
    ConsentRequired,
    PreferenceState,
    StaleChange,
    apply_change,
    escalate,
    resolve_escalation,
)
from preferences.suppression.forms import ClearBounceForm
from preferences.suppression.views import sender_label, sender_labels

CONTACT_TEMPLATE = "preferences/contact_detail.html"


@require_GET
def home(request: HtmxHttpRequest) -> HttpResponse:
    return redirect("preferences:search")


@require_GET
@staff_view("preferences.view_contact")
def search(request: HtmxHttpRequest) -> HttpResponse:
    form = SearchForm(request.GET)
    query = form.data.get("q", "").strip() if form.is_valid() else ""
    # No ORDER BY in the database: a common name fragment matches thousands of rows, and
    # sorting them all would cost more than the index lookup. The page says when to refine.
    found = list(Contact.objects.search(query)[: SEARCH_LIMIT + 1]) if query else []
    found.sort(key=lambda c: (c.last_name.lower(), c.first_name.lower(), c.pk))
    # Who is opted out of what, at a glance: two people of one name must not look alike.
    opted_out: dict[int, list[str]] = {}
    for contact_id, channel in ChannelPreference.objects.filter(
        contact_id__in=[c.pk for c in found], opted_out=True
    ).values_list("contact_id", "channel"):
        opted_out.setdefault(contact_id, []).append(OPT_OUT_LABELS[channel])
    for contact in found:
        contact.opted_out_labels = sorted(opted_out.get(contact.pk, []))  # type: ignore[attr-defined]
    context = {
        "form": form,
        "query": query,
        "contacts": found[:SEARCH_LIMIT],
        "more": len(found) > SEARCH_LIMIT,
        "limit": SEARCH_LIMIT,
    }
    template = "preferences/contact_search.html"
    if request.htmx and not request.htmx.boosted:
        template += "#results"
    return render(request, template, context)


def _suggested_categories(
    history: list[AuditEntry], state: PreferenceState, categories: list[EmailCategory]
) -> list[EmailCategory]:
    """After an email re-enrolment, the categories the contact had before opting out.

    Offered to the specialist to re-check, never ticked for them (docs/design.md, rule 4).
    """
    changes = [e for e in history if e.contact_version is not None]
    if not changes or changes[0].action != AuditAction.RE_ENROLMENT:
        return []
    if Channel.EMAIL not in changes[0].channels or state.opted_out[Channel.EMAIL]:
        return []
    for entry in changes[1:]:
        if entry.action == AuditAction.OPT_OUT and Channel.EMAIL in entry.channels:
            before = set(entry.before.get("categories", []))
            return [c for c in categories if c.key in before and c.key not in state.categories]
    return []


def _render_contact(
    request: HtmxHttpRequest,
    contact: Contact,
    *,
    form: PreferencesForm | None = None,
    escalation_form: NoteForm | None = None,
    bounce_form: ClearBounceForm | None = None,
    status: int = 200,
) -> HttpResponse:
    state = _state_of(contact)
    categories = list(EmailCategory.objects.all())
    names = {c.key: c.name for c in categories}
    # A merged-away contact's (or converted Lead's) history is this contact's too.
    # (Their own "merged into another contact" entries would only repeat this one's.)
    merged = [pk for pk in contact.history_ids() if pk != contact.pk]
    history = list(
        AuditEntry.objects.filter(
            Q(contact=contact) | (Q(contact_id__in=merged) & ~Q(action=AuditAction.MERGED_AWAY))
        )
        .select_related("consent", "contact")
        .order_by("-id")[:50]
    )
    for entry in history:
        entry.change_lines = entry.describe_changes(names)  # type: ignore[attr-defined]
    if form is None:
        form = PreferencesForm(categories=categories, state=state, version=contact.version)
    context = {
        "contact": contact,
        "survivor": contact.surviving_contact() if contact.merged_into_id else None,
        "banner": [p for p in contact.channel_preferences.all() if p.opted_out],
        "state": state,
        "form": form,
        "escalation_form": escalation_form or NoteForm(),
        "history": history,
        "suggested": _suggested_categories(history, state, categories),
        **_sync_context(contact),
        **marketing_cloud_context(contact),
        "escalations": [e for e in contact.escalations.all() if e.is_open],
        "discrepancies": _open_discrepancies(contact),
        **_email_platform_context(contact),
        "bounce_form": bounce_form
        or ClearBounceForm(initial={"version": contact.version}, auto_id="bounce_%s"),
    }
    template = CONTACT_TEMPLATE
    if request.htmx and not request.htmx.boosted:
        template += "#contact-main"
    return render(request, template, context, status=status)


PLATFORM_EVENTS_SHOWN = 20


def _email_platform_context(contact: Contact) -> dict[str, object]:
    """The senders the contact opted out of (rule 9), and the latest events the email
    platforms sent about them (docs/design.md, "Events from email platforms")."""
    suppressions = list(contact.sender_suppressions.order_by("since", "pk"))
    if suppressions:
        labels = sender_labels()
        for suppression in suppressions:
            suppression.sender = sender_label(suppression.scope, labels)  # type: ignore[attr-defined]
    events = list(contact.events.order_by("-occurred_at", "-pk")[:PLATFORM_EVENTS_SHOWN])
    for event in events:
        label = core.label(event.platform)  # a webhook's platform is no sync target
        event.platform_label = (  # type: ignore[attr-defined]
            label if label != event.platform else label.replace("_", " ").capitalize()
        )
    return {"sender_suppressions": suppressions, "platform_events": events}


def _open_discrepancies(contact: Contact) -> list[Discrepancy]:
    # A shared email is listed once, on its first contact, but concerns each of them.
    shared = Q(
        kind=DiscrepancyKind.DUPLICATE_EMAIL, details__contacts__contains=[{"id": contact.pk}]
    )
    found = list(
        Discrepancy.objects.open().filter(Q(contact=contact) | shared).order_by("first_seen")
    )
    for one in found:
        one.system_label = system_label(one.system)  # type: ignore[attr-defined]
    return found


def _contact(pk: int) -> Contact:
    queryset = Contact.objects.prefetch_related(
        Prefetch("channel_preferences", ChannelPreference.objects.select_related("changed_by")),
        Prefetch("subscriptions", Subscription.objects.select_related("category")),
        "syncs",
        "escalations",
    )
    return get_object_or_404(queryset, pk=pk)


@require_GET
@staff_view("preferences.view_contact")
def contact_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _render_contact(request, _contact(pk))


@require_POST
@staff_view("preferences.change_preferences")
def contact_update(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    contact = _contact(pk)
    categories = list(EmailCategory.objects.all())
    page = _render_contact
    form = PreferencesForm(
        request.POST, categories=categories, state=_state_of(contact), version=contact.version
    )
    if not form.is_valid():
        return page(request, contact, form=form, status=422)
    try:
        apply_change(
            contact=contact,
            actor=request.user,  # type: ignore[arg-type]
            source=Source.STAFF,
            note=form.cleaned_data["note"],
            opt_out=form.opt_out(),
            categories=form.cleaned_data["categories"],
            consent=form.consent(),
            expected_version=form.cleaned_data["version"],
        )
    except StaleChange as refused:
        contact = _contact(pk)
        data, notices = _rebased(request.POST, form, contact)
        form = PreferencesForm(
            data, categories=categories, state=_state_of(contact), version=contact.version
        )
        form.is_valid()
        for notice in [str(refused), *notices]:
            form.add_error(None, notice)
        return page(request, contact, form=form, status=409)
    except ConsentRequired as refused:
        form.add_error(None, str(refused))
        for name in ("consent_method", "consent_obtained_at", "consent_attested"):
            if not form.cleaned_data.get(name):
                form.add_error(name, "Required to opt the contact back in.")
        return page(request, contact, form=form, status=422)
    except ChangeRefused as refused:
        form.add_error(None, str(refused))
        return page(request, contact, form=form, status=422)
    messages.success(request, "Saved. The change will be sent to Salesforce and Ascend.")
    if request.htmx:
        return page(request, _contact(pk))
    return redirect("preferences:contact", pk=pk)


def _seen_state(contact: Contact, version: int) -> PreferenceState | None:
    """The preferences as they were at `version` (what a form loaded then showed), from
    the audit entry that made that version; None if it cannot be told."""
    if version == 0:
        return PreferenceState(dict.fromkeys(Channel.values, False))
    entry = (
        AuditEntry.objects.filter(contact=contact, contact_version=version)
        .exclude(after={})
        .order_by("-id")
        .first()
    )
    if entry is None or "opted_out" not in entry.after:
        return None
    opted_out = {c: bool(entry.after["opted_out"].get(c, False)) for c in Channel.values}
    return PreferenceState(opted_out, frozenset(entry.after.get("categories", [])))


def _rebased(
    posted: QueryDict, form: PreferencesForm, contact: Contact
) -> tuple[QueryDict, list[str]]:
    """A stale form, rebuilt on the contact's current preferences (docs/design.md, "One
    service changes a preference"): the user's own changes are kept where the other person
    left that field alone, and the other person's changes stay, so saving the returned form
    never undoes what the user did not see. (Two yes/no changes of one field from the same
    starting point agree; a conflict arises only where the page's starting point cannot be
    told from the history: there the form shows the other person's value and says so.)
    Returns the form data and what to tell the user: what changed since they opened the
    page, and each conflict."""
    seen_version = form.cleaned_data["version"]
    seen = _seen_state(contact, seen_version)
    now = _state_of(contact)
    wanted_out = form.opt_out()
    wanted_categories = frozenset(form.cleaned_data["categories"])
    data = posted.copy()
    data["version"] = str(contact.version)
    names = dict(EmailCategory.objects.values_list("key", "name"))
    notices = []
    for entry in contact.audit_entries.filter(contact_version__gt=seen_version).order_by("id"):
        lines = entry.describe_changes(names)
        if lines:
            when = timezone.localtime(entry.created_at)
            notices.append(
                f"Since you opened it, {entry.actor_label} ({when:%H:%M}): "
                + "; ".join(lines)
                + "."
            )
    conflicts = []
    for channel in Channel.values:
        seen_out = seen.opted_out[channel] if seen else None
        value, conflict = _merged(wanted_out[channel], now.opted_out[channel], seen_out)
        if conflict:
            conflicts.append(Channel(channel).label)
        data.setlist(f"opt_out_{channel}", ["on"] if value else [])
    kept = []
    for key in sorted(set(names) | wanted_categories | now.categories):
        seen_has = (key in seen.categories) if seen else None
        value, conflict = _merged(key in wanted_categories, key in now.categories, seen_has)
        if conflict:
            conflicts.append(names.get(key, key))
        if value:
            kept.append(key)
    data.setlist("categories", kept)
    if conflicts:
        notices.append(
            "You and they both changed "
            + ", ".join(conflicts)
            + ": the form shows their value. Set it again only if you mean to replace theirs."
        )
    return data, notices


def _merged(mine: bool, theirs: bool, seen: bool | None) -> tuple[bool, bool]:
    """One yes/no field of a stale form: the value to show, and whether it conflicts.
    The user's value stands where they changed it and the other person did not (or
    changed it the same way); with no known starting point, theirs stands."""
    if seen is None:
        return theirs, mine != theirs
    if mine != seen and theirs == seen:
        return mine, False
    return theirs, False


def _state_of(contact: Contact) -> PreferenceState:
    preferences = {p.channel: p.opted_out for p in contact.channel_preferences.all()}
    return PreferenceState(
        {c: preferences.get(c, False) for c in Channel.values},
        frozenset(s.category.key for s in contact.subscriptions.all()),
        contact.email_bounced,
    )


@require_POST
@staff_view("preferences.change_preferences")
def contact_clear_bounce(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Staff clear Bounced once the address is corrected, with a note; the opt-outs stay as
    they are (docs/design.md, rule 10)."""
    contact = _contact(pk)
    form = ClearBounceForm(request.POST, auto_id="bounce_%s")
    if not form.is_valid():
        return _render_contact(request, contact, bounce_form=form, status=422)
    try:
        apply_change(
            contact=contact,
            actor=request.user,  # type: ignore[arg-type]
            source=Source.STAFF,
            note=form.cleaned_data["note"],
            bounced=False,
            expected_version=form.cleaned_data["version"],
        )
    except StaleChange as refused:
        contact = _contact(pk)
        data = request.POST.copy()
        data["version"] = str(contact.version)
        form = ClearBounceForm(data, auto_id="bounce_%s")
        form.is_valid()
        form.add_error(None, str(refused))
        return _render_contact(request, contact, bounce_form=form, status=409)
    except ChangeRefused as refused:
        form.add_error(None, str(refused))
        return _render_contact(request, contact, bounce_form=form, status=422)
    messages.success(request, "Bounced cleared: email goes to this address again.")
    if request.htmx:
        return _render_contact(request, _contact(pk))
    return redirect("preferences:contact", pk=pk)


@require_POST
@staff_view("preferences.change_preferences")
def contact_escalate(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    contact = _contact(pk)
    form = NoteForm(request.POST)
    if not form.is_valid():
        return _render_contact(request, contact, escalation_form=form, status=422)
    escalate(contact=contact, actor=request.user, note=form.cleaned_data["note"])  # type: ignore[arg-type]
    messages.success(request, "Handed to a manager. Managers see it under Escalations.")
    if request.htmx:
        return _render_contact(request, _contact(pk))
    return redirect("preferences:contact", pk=pk)


@require_GET
@staff_view("preferences.resolve_escalation")
def escalation_list(request: HtmxHttpRequest) -> HttpResponse:
    escalations = Escalation.objects.open().select_related("contact", "raised_by")
    return render(
        request,
        "preferences/escalation_list.html",
        {"escalations": escalations, "form": NoteForm()},
    )


@require_POST
@staff_view("preferences.resolve_escalation")
def escalation_resolve(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    escalation = get_object_or_404(Escalation, pk=pk)
    form = NoteForm(request.POST)
    if form.is_valid():
        try:
            resolve_escalation(
                escalation_id=escalation.pk,
                actor=request.user,  # type: ignore[arg-type]
                note=form.cleaned_data["note"],
            )
        except ChangeRefused as refused:
            messages.error(request, str(refused))
        else:
            messages.success(request, f"Escalation for {escalation.contact} resolved.")
    else:
        messages.error(request, "Write a note saying how the request was resolved.")
    return redirect("preferences:escalations")


def _sync_context(contact: Contact) -> dict[str, object]:
    """Each registered target's mark for the contact, and whether the page should poll."""
    syncs = {s.target: s for s in contact.syncs.all()}
    rows = [(target, syncs.get(target.name)) for target in core.targets()]
    return {
        "syncs": rows,
        # A target waiting for configuration would keep the page polling forever.
        "sync_pending": any(
            s is not None and s.status == SyncStatus.PENDING and not target.waiting
            for target, s in rows
        ),
    }


@require_GET
@staff_view("preferences.view_contact")
def contact_sync(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The per-target sync state; the page polls it while something is pending."""
    contact = get_object_or_404(Contact.objects.prefetch_related("syncs"), pk=pk)
    return render(
        request,
        "preferences/contact_detail.html#sync",
        {"contact": contact, **_sync_context(contact)},
    )
