"""Bulk opt-outs (docs/design.md, rule 11): selecting, uploads, the preview, confirming, the
worker loop."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from preferences.bulk import jobs as bulk
from preferences.models import (
    BulkItem,
    BulkItemState,
    BulkRun,
    BulkRunState,
    Contact,
    ContactSync,
    Subscription,
    SyncStatus,
    salesforce_id_18,
)
from preferences.services import ChangeRefused, apply_change, current_state
from preferences.tasks import resume_bulk_runs, run_bulk_change
from tests import factories

pytestmark = pytest.mark.django_db


def _opt_out(contact, user, channel="email"):
    return apply_change(
        contact=contact, actor=user, source="staff", note="Stop.", opt_out={channel: True}
    )


def _subscribe(contact, user, keys):
    return apply_change(
        contact=contact, actor=user, source="staff", note="Wants these.", categories=keys
    )


def _selected(criteria, channel="email"):
    return set(bulk.matching_contacts(channel, criteria).values_list("pk", flat=True))


def _confirmed(user, criteria, *, channel="email", note="Country law forbids the mail."):
    run = bulk.draft_from_filters(actor=user, channel=channel, criteria=criteria)
    return bulk.confirm(run_id=run.pk, actor=user, note=note)


def _bulk_changes(run):
    return AuditEntry.objects.filter(bulk_run=run, contact__isnull=False)


def _run_entries(run):
    return list(AuditEntry.objects.filter(bulk_run=run, contact__isnull=True).order_by("id"))


# --- selecting ----------------------------------------------------------------------------


def test_the_country_filter_selects_only_contacts_in_that_country(categories):
    french = [factories.make_contact(country="FR") for _ in range(2)]
    factories.make_contact(country="US")
    factories.make_contact(country="")

    assert _selected({"country": "FR"}) == {c.pk for c in french}


def test_the_category_filter_selects_contacts_subscribed_to_it(categories, specialist):
    readers = [factories.make_contact() for _ in range(2)]
    for contact in readers:
        _subscribe(contact, specialist, {"newsletter", "events"})
    other = factories.make_contact()
    _subscribe(other, specialist, {"events"})
    factories.make_contact()

    assert _selected({"category": "newsletter"}) == {c.pk for c in readers}


def test_the_opt_out_filter_reads_the_chosen_channel(categories, specialist):
    no_email = factories.make_contact()
    _opt_out(no_email, specialist, "email")
    no_calls = factories.make_contact()
    _opt_out(no_calls, specialist, "phone")
    untouched = factories.make_contact()

    assert _selected({"opted_out": True}, "email") == {no_email.pk}
    assert _selected({"opted_out": False}, "email") == {no_calls.pk, untouched.pk}
    assert _selected({"opted_out": True}, "phone") == {no_calls.pk}


def test_filters_combine_with_and(categories, specialist):
    wanted = factories.make_contact(country="FR")
    _subscribe(wanted, specialist, {"newsletter"})
    opted_out = factories.make_contact(country="FR")
    _subscribe(opted_out, specialist, {"newsletter"})
    _opt_out(opted_out, specialist)
    _subscribe(factories.make_contact(country="US"), specialist, {"newsletter"})
    factories.make_contact(country="FR")

    criteria = {"country": "FR", "category": "newsletter", "opted_out": False}
    assert _selected(criteria) == {wanted.pk}


def test_a_draft_without_any_filter_is_refused_and_selects_nobody(categories, manager):
    factories.make_contact()
    with pytest.raises(ChangeRefused, match="at least one filter"):
        bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": ""})
    assert not BulkRun.objects.exists()
    assert _selected({}) == set()


def test_a_draft_for_an_unknown_channel_is_refused(categories, manager):
    with pytest.raises(ChangeRefused, match="Unknown channel"):
        bulk.draft_from_filters(actor=manager, channel="fax", criteria={"country": "FR"})


# --- uploads ------------------------------------------------------------------------------


def test_an_upload_of_emails_and_salesforce_ids_selects_exactly_those_contacts(categories):
    by_email = factories.make_contact(email="grace.hopper@example.edu")
    by_id15 = factories.make_contact()
    by_id18 = factories.make_contact()
    factories.make_contact()  # not listed
    data = (
        "\ufeffEmail\r\n"  # Excel's BOM and a header
        "GRACE.HOPPER@example.edu\r\n"
        "\r\n"
        f"{by_id15.salesforce_id[:15]}\r\n"
        "  \r\n"
        f" {by_id18.salesforce_id} \r\n"
    ).encode()

    parsed = bulk.parse_upload(data)

    assert parsed.problems == []
    assert parsed.contact_ids == [by_email.pk, by_id15.pk, by_id18.pk]
    assert parsed.rows == 3


def test_bad_rows_are_listed_with_their_line_and_reason(categories):
    known = factories.make_contact(email="known@example.edu")
    twin_a = factories.make_contact(email="shared@example.edu")
    factories.make_contact(email="shared@example.edu")
    lines = [
        "salesforce id",  # 1: header
        "not-an-email@",  # 2
        "nobody@example.edu",  # 3
        salesforce_id_18("003Zzz999999999"),  # 4: well formed, unknown
        "hello world",  # 5
        "known@example.edu",  # 6
        "Known@Example.edu",  # 7: the same address again
        known.salesforce_id,  # 8: the same contact by ID
        "shared@example.edu",  # 9
        twin_a.salesforce_id[:15] + ",extra",  # 10: two values
        "bad\x00value",  # 11: NUL cannot be stored in JSON
    ]
    parsed = bulk.parse_upload("\n".join(lines).encode())

    reasons = {p["row"]: p["reason"] for p in parsed.problems}
    assert parsed.contact_ids == [known.pk]
    assert reasons == {
        2: "Not a valid email address.",
        3: "No contact has this email address.",
        4: "No contact has this Salesforce ID.",
        5: "Neither an email address nor a Salesforce ID (15 or 18 characters).",
        7: "Duplicate of row 6.",
        8: "Duplicate: the same contact as row 6.",
        9: "2 contacts share this email address: list them by Salesforce ID instead.",
        10: "One email address or Salesforce ID per row; this row has 2 values.",
        11: "Neither an email address nor a Salesforce ID (15 or 18 characters).",
    }
    assert [p["row"] for p in parsed.problems] == sorted(reasons)
    assert "\x00" not in parsed.problems[-1]["value"]
    assert parsed.rows == 10


def test_an_upload_draft_keeps_its_bad_rows_and_applies_nothing(categories, manager):
    listed = factories.make_contact()
    data = f"{listed.salesforce_id}\nnobody@example.edu\n".encode()

    run = bulk.draft_from_upload(actor=manager, channel="email", filename="people.csv", data=data)

    assert run.state == BulkRunState.DRAFT
    assert run.criteria["upload"] == "people.csv"
    assert run.criteria["contact_ids"] == [listed.pk]
    assert bulk.describe(run.channel, run.criteria, {}) == "Upload people.csv (1 contact)"
    assert run.problems == [
        {"row": 2, "value": "nobody@example.edu", "reason": "No contact has this email address."}
    ]
    assert bulk.preview(run).count == 1
    assert not BulkItem.objects.exists()
    assert current_state(listed).opted_out["email"] is False


def test_a_file_over_the_size_limit_is_refused_with_a_clear_message(categories):
    data = b"x" * (bulk.MAX_UPLOAD_BYTES + 1)
    with pytest.raises(bulk.UploadRefused, match=r"the limit is 5 MB \(50,000 rows\)"):
        bulk.parse_upload(data)


def test_a_file_with_too_many_rows_is_refused(categories):
    data = "\n".join(f"person{i}@example.edu" for i in range(bulk.MAX_UPLOAD_ROWS + 1)).encode()
    with pytest.raises(bulk.UploadRefused, match="more than 50,000 rows"):
        bulk.parse_upload(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no rows"),
        (b"\xef\xbb\xbfemail\r\n\r\n", "no rows"),
        ("caf\xe9@example.edu".encode("latin-1"), "not UTF-8"),
    ],
)
def test_an_empty_or_undecodable_file_is_refused(categories, data, message):
    with pytest.raises(bulk.UploadRefused, match=message):
        bulk.parse_upload(data)


# --- preview and confirming -----------------------------------------------------------------


def test_the_preview_counts_and_samples_and_applies_nothing(categories, manager, specialist):
    contacts = [factories.make_contact(country="FR") for _ in range(bulk.SAMPLE_SIZE + 5)]
    _opt_out(contacts[0], specialist)
    versions = {c.pk: Contact.objects.get(pk=c.pk).version for c in contacts}
    entries = AuditEntry.objects.count()

    run = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "FR"})
    preview = bulk.preview(run)

    assert preview.count == len(contacts)
    assert preview.already_opted_out == 1
    assert [c.pk for c in preview.sample] == [c.pk for c in contacts[: bulk.SAMPLE_SIZE]]
    assert not BulkItem.objects.exists()
    assert AuditEntry.objects.count() == entries
    assert dict(Contact.objects.values_list("pk", "version")) == versions
    assert sum(current_state(c).opted_out["email"] for c in contacts) == 1


def test_confirming_without_a_note_is_refused_and_leaves_the_draft(categories, manager):
    factories.make_contact(country="FR")
    run = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "FR"})

    with pytest.raises(ChangeRefused, match="Write a note"):
        bulk.confirm(run_id=run.pk, actor=manager, note="   ")

    run.refresh_from_db()
    assert run.state == BulkRunState.DRAFT
    assert not BulkItem.objects.exists()
    assert not AuditEntry.objects.filter(bulk_run=run).exists()


def test_confirming_fixes_the_selection_as_items_and_records_one_bulk_entry(
    categories, manager, django_capture_on_commit_callbacks
):
    french = [factories.make_contact(country="FR") for _ in range(3)]
    factories.make_contact(country="US")
    run = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "FR"})

    with django_capture_on_commit_callbacks() as callbacks:
        bulk.confirm(run_id=run.pk, actor=manager, note="French law.", expected_total=3)

    run.refresh_from_db()
    assert (run.state, run.total, run.note) == (BulkRunState.QUEUED, 3, "French law.")
    assert run.confirmed_at is not None
    items = BulkItem.objects.filter(run=run).order_by("pk")
    assert [i.contact_id for i in items] == [c.pk for c in french]
    assert {i.state for i in items} == {BulkItemState.PENDING}
    [entry] = _run_entries(run)
    assert (entry.action, entry.source, entry.actor, entry.note) == (
        AuditAction.BULK,
        "bulk",
        manager,
        "French law.",
    )
    assert entry.risky is True
    assert entry.after == {
        "event": "confirmed",
        "opt_out": "email",
        "criteria": {"country": "FR"},
        "contacts": 3,
    }
    # A contact joining the country later is not part of the confirmed run.
    factories.make_contact(country="FR")
    assert BulkItem.objects.filter(run=run).count() == 3
    # The worker is asked to start once the confirmation has committed.
    queued = [c for c in callbacks if getattr(c, "func", None) is bulk.enqueue]
    assert [c.args for c in queued] == [(run.pk,)]


def test_confirming_twice_is_refused_and_changes_nothing(categories, manager):
    factories.make_contact(country="FR")
    run = _confirmed(manager, {"country": "FR"})

    with pytest.raises(bulk.StaleRun, match="already confirmed"):
        bulk.confirm(run_id=run.pk, actor=manager, note="Again.")

    assert BulkItem.objects.filter(run=run).count() == 1
    assert len(_run_entries(run)) == 1
    run.refresh_from_db()
    assert run.note == "Country law forbids the mail."


def test_a_selection_that_changed_since_the_preview_is_refused(categories, manager):
    factories.make_contact(country="FR")
    run = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "FR"})
    seen = bulk.preview(run).count
    factories.make_contact(country="FR")

    with pytest.raises(bulk.StaleRun, match="showed 1 contacts, now 2 match"):
        bulk.confirm(run_id=run.pk, actor=manager, note="French law.", expected_total=seen)

    run.refresh_from_db()
    assert run.state == BulkRunState.DRAFT
    assert not BulkItem.objects.exists()
    assert not AuditEntry.objects.filter(bulk_run=run).exists()


def test_confirming_a_selection_that_matches_nobody_is_refused(categories, manager):
    run = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "FR"})
    with pytest.raises(ChangeRefused, match="nothing to apply"):
        bulk.confirm(run_id=run.pk, actor=manager, note="French law.")
    run.refresh_from_db()
    assert run.state == BulkRunState.DRAFT


# --- the worker ---------------------------------------------------------------------------


def test_processing_opts_out_each_contact_with_its_own_audit_entry(categories, manager, specialist):
    contacts = [factories.make_contact(country="FR") for _ in range(3)]
    _subscribe(contacts[0], specialist, {"newsletter", "events"})
    versions = {c.pk: Contact.objects.get(pk=c.pk).version for c in contacts}
    run = _confirmed(manager, {"country": "FR"})

    assert bulk.process(run.pk) == bulk.DONE

    changes = list(_bulk_changes(run).order_by("contact_id"))
    assert [e.contact_id for e in changes] == [c.pk for c in contacts]
    for entry, contact in zip(changes, contacts, strict=True):
        assert entry.action == AuditAction.OPT_OUT
        assert entry.source == "bulk"
        assert entry.actor == manager
        assert entry.note == "Country law forbids the mail."
        assert entry.channels == ["email"]
        assert entry.contact_version == versions[contact.pk] + 1
        assert current_state(contact).opted_out["email"] is True
        assert ContactSync.objects.get(contact=contact, target="salesforce").status == (
            SyncStatus.PENDING
        )
    assert not Subscription.objects.filter(contact=contacts[0]).exists()  # docs/design.md, rule 3
    items = {i.contact_id: i for i in BulkItem.objects.filter(run=run)}
    assert {i.state for i in items.values()} == {BulkItemState.APPLIED}
    assert {items[e.contact_id].audit_entry_id for e in changes} == {e.pk for e in changes}
    run.refresh_from_db()
    assert run.state == BulkRunState.DONE
    assert run.started_at is not None and run.finished_at is not None
    assert run.claimed_until is None
    closing = _run_entries(run)[-1]
    assert closing.after == {"event": "done", "applied": 3, "skipped": 0, "pending": 0}
    # The run is reviewed once, at its confirmation; its closing entry is not a second risk.
    assert (closing.action, closing.risky) == (AuditAction.BULK_FINISHED, False)
    assert [e.pk for e in _run_entries(run) if e.risky] == [_run_entries(run)[0].pk]
    assert "3 opted out of email, 0 skipped" in closing.note


def test_a_contact_already_opted_out_is_skipped_with_the_reason(categories, manager, specialist):
    done_already, to_do = (factories.make_contact(country="FR") for _ in range(2))
    _opt_out(done_already, specialist)
    run = _confirmed(manager, {"country": "FR"})

    bulk.process(run.pk)

    skipped = BulkItem.objects.get(run=run, contact=done_already)
    assert skipped.state == BulkItemState.SKIPPED
    assert skipped.audit_entry is None
    assert "Nothing to change" in skipped.detail
    assert BulkItem.objects.get(run=run, contact=to_do).state == BulkItemState.APPLIED
    assert list(_bulk_changes(run).values_list("contact_id", flat=True)) == [to_do.pk]
    assert bulk.progress(run) == bulk.Progress(total=2, applied=1, skipped=1, pending=0)


def test_processing_a_run_again_applies_nothing_twice(categories, manager):
    contacts = [factories.make_contact(country="FR") for _ in range(3)]
    run = _confirmed(manager, {"country": "FR"})
    assert run_bulk_change(run.pk) == bulk.DONE  # the task, called as the worker would

    assert bulk.process(run.pk) == bulk.IDLE

    assert _bulk_changes(run).count() == 3
    assert len(_run_entries(run)) == 2  # confirmed, done
    assert {Contact.objects.get(pk=c.pk).version for c in contacts} == {1}


def test_a_run_held_by_a_live_worker_is_left_to_it(categories, manager):
    factories.make_contact(country="FR")
    run = _confirmed(manager, {"country": "FR"})
    held = timezone.now() + timedelta(minutes=1)
    BulkRun.objects.filter(pk=run.pk).update(state=BulkRunState.RUNNING, claimed_until=held)

    assert bulk.process(run.pk) == bulk.BUSY
    assert bulk.runs_to_resume() == []

    assert not _bulk_changes(run).exists()
    assert BulkRun.objects.get(pk=run.pk).claimed_until == held


def test_a_run_whose_worker_died_is_resumed_from_its_first_pending_item(categories, manager):
    contacts = [factories.make_contact(country="FR") for _ in range(bulk.CHUNK_SIZE + 20)]
    run = _confirmed(manager, {"country": "FR"})
    # One slice (max_seconds=0 stops after the first chunk), then the worker "dies": its
    # lease is left behind and runs out.
    assert bulk.process(run.pk, max_seconds=0) == bulk.MORE
    assert _bulk_changes(run).count() == bulk.CHUNK_SIZE
    BulkRun.objects.filter(pk=run.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    draft = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "US"})

    assert bulk.runs_to_resume() == [run.pk]
    assert draft.pk not in bulk.runs_to_resume()
    assert resume_bulk_runs() == 1
    assert bulk.process(run.pk) == bulk.DONE

    assert _bulk_changes(run).count() == len(contacts)
    assert sorted(_bulk_changes(run).values_list("contact_id", flat=True)) == sorted(
        c.pk for c in contacts
    )
    assert {Contact.objects.get(pk=c.pk).version for c in contacts} == {1}
    assert bulk.runs_to_resume() == []


def test_a_cancelled_run_stops_and_its_entry_counts_what_was_applied(categories, manager):
    contacts = [factories.make_contact(country="FR") for _ in range(bulk.CHUNK_SIZE + 20)]
    run = _confirmed(manager, {"country": "FR"})
    assert bulk.process(run.pk, max_seconds=0) == bulk.MORE

    bulk.cancel(run_id=run.pk, actor=manager)

    assert bulk.process(run.pk) == bulk.IDLE
    assert bulk.runs_to_resume() == []
    assert _bulk_changes(run).count() == bulk.CHUNK_SIZE
    untouched = [c for c in contacts if not current_state(c).opted_out["email"]]
    assert len(untouched) == 20
    run.refresh_from_db()
    assert (run.state, run.cancelled_by) == (BulkRunState.CANCELLED, manager)
    entry = _run_entries(run)[-1]
    assert entry.actor == manager
    assert entry.after == {"event": "cancelled", "applied": 100, "skipped": 0, "pending": 20}
    assert (entry.action, entry.risky) == (AuditAction.BULK_CANCELLED, False)
    with pytest.raises(bulk.StaleRun, match="already cancelled"):
        bulk.cancel(run_id=run.pk, actor=manager)


def test_discarding_a_draft_writes_no_audit_entry(categories, manager):
    run = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "FR"})
    bulk.cancel(run_id=run.pk, actor=manager)
    run.refresh_from_db()
    assert run.state == BulkRunState.CANCELLED
    assert not AuditEntry.objects.filter(bulk_run=run).exists()
    with pytest.raises(bulk.StaleRun, match="cancelled"):
        bulk.confirm(run_id=run.pk, actor=manager, note="After all.")


def test_bulk_adds_only_a_few_queries_per_contact_to_apply_change(categories, manager):
    """Per contact: lock the item, apply_change, mark the item (and a savepoint)."""
    single = factories.make_contact(country="DE")
    with CaptureQueriesContext(connection) as one_change:
        apply_change(
            contact=single.pk, actor=manager, source="bulk", note="x", opt_out={"email": True}
        )

    def queries_for(count, country):
        for _ in range(count):
            factories.make_contact(country=country)
        run = _confirmed(manager, {"country": country})
        with CaptureQueriesContext(connection) as captured:
            bulk.process(run.pk)
        return len(captured)

    per_contact = (queries_for(30, "FR") - queries_for(10, "IT")) / 20
    assert per_contact <= len(one_change) + 4, (per_contact, len(one_change))


# --- with commits: threads, like several workers ---------------------------------------------


def _in_thread(target, *args):
    errors = []

    def run():
        try:
            target(*args)
        except Exception as error:  # surfaced by the test
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.django_db(transaction=True)
def test_workers_taking_the_run_from_each_other_apply_each_contact_exactly_once(
    categories, manager, settings
):
    # A lease of 0 s: every worker takes the run over from the others all the time, so items
    # are claimed while another worker is in the middle of one.
    settings.BULK_LEASE_SECONDS = 0
    contacts = [factories.make_contact(country="FR") for _ in range(60)]
    run = _confirmed(manager, {"country": "FR"})

    def work():
        deadline = time.monotonic() + 60
        while bulk.process(run.pk) not in (bulk.DONE, bulk.IDLE):
            assert time.monotonic() < deadline, "the run did not finish"

    workers = [_in_thread(work) for _ in range(4)]
    for thread, _ in workers:
        thread.join(90)
    assert [e for _, errors in workers for e in errors] == []

    run.refresh_from_db()
    assert run.state == BulkRunState.DONE
    assert _bulk_changes(run).count() == len(contacts)
    assert _bulk_changes(run).values("contact").distinct().count() == len(contacts)
    assert {Contact.objects.get(pk=c.pk).version for c in contacts} == {1}
    assert BulkItem.objects.filter(run=run, state=BulkItemState.APPLIED).count() == len(contacts)
    assert [e.after["event"] for e in _run_entries(run)] == ["confirmed", "done"]


@pytest.mark.django_db(transaction=True)
def test_no_contact_is_changed_after_cancel_returns(categories, manager):
    contacts = [factories.make_contact(country="FR") for _ in range(400)]
    run = _confirmed(manager, {"country": "FR"})
    worker, errors = _in_thread(bulk.process, run.pk)
    deadline = time.monotonic() + 60
    while _bulk_changes(run).count() < 20:
        assert time.monotonic() < deadline and worker.is_alive(), "the worker did not start"
        time.sleep(0.02)

    bulk.cancel(run_id=run.pk, actor=manager)
    counted = _run_entries(run)[-1].after
    worker.join(60)

    assert errors == []
    assert not worker.is_alive()
    applied = _bulk_changes(run).count()
    assert counted["applied"] == applied < len(contacts)
    assert counted["pending"] == len(contacts) - applied
    assert BulkItem.objects.filter(run=run, state=BulkItemState.PENDING).count() == (
        len(contacts) - applied
    )
    assert BulkRun.objects.get(pk=run.pk).state == BulkRunState.CANCELLED
