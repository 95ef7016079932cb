"""The pull follows what happens to records in Salesforce, which owns them: a contact created,
renamed, deleted or merged there, a Lead, a converted Lead, a Person Account — each shows in
the app after one pull (docs/design.md, "Contacts come from Salesforce"). Against the
stand-in, over HTTPS, reading through queryAll as a real org answers it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations.salesforce import inbound, sync
from preferences.models import Contact, ContactKind, ContactSync, SyncStatus, SyncWatermark
from preferences.services import apply_change, current_state

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _window(standin, categories):
    SyncWatermark.objects.create(
        name=inbound.WATERMARK, value=timezone.now() - timedelta(minutes=1)
    )


def _known(standin, **fields) -> Contact:
    """A contact in the stand-in and in the app, in step."""
    salesforce_id = standin.add_contact(
        FirstName="Ada", LastName="Okafor", Email="ada@example.edu", **fields
    )
    inbound.pull_from_salesforce()
    return Contact.objects.get(salesforce_id=salesforce_id)


def test_a_contact_created_in_salesforce_appears_with_its_values(standin):
    salesforce_id = standin.add_contact(
        FirstName="Grace",
        LastName="Hopper",
        Email="Grace.Hopper@Example.edu",
        Phone="+1 303 555 0100",
        Ascend_Id__c="3000000001",
        HasOptedOutOfEmail=False,
        DoNotCall=True,
        Newsletter__c=True,
    )

    inbound.pull_from_salesforce()

    contact = Contact.objects.get(salesforce_id=salesforce_id)
    assert (contact.name, contact.email, contact.phone, contact.ascend_id, contact.kind) == (
        "Grace Hopper",
        "grace.hopper@example.edu",
        "+1 303 555 0100",
        "3000000001",
        ContactKind.CONTACT,
    )
    assert contact.identity_read_at is not None
    state = current_state(contact)
    assert dict(state.opted_out) == {"email": False, "phone": True}
    assert state.categories == {"newsletter"}
    entry = AuditEntry.objects.get(contact=contact)
    assert (entry.action, entry.source) == (AuditAction.STARTING_STATE, "salesforce")
    # Salesforce holds what it told us; the other systems are sent it.
    syncs = dict(ContactSync.objects.filter(contact=contact).values_list("target", "status"))
    assert syncs.pop("salesforce") == SyncStatus.SYNCED
    assert set(syncs.values()) == {SyncStatus.PENDING}


def test_a_new_contact_with_nothing_opted_out_has_no_entry_and_nothing_to_send(standin):
    salesforce_id = standin.add_contact(FirstName="Alan", LastName="Turing")

    inbound.pull_from_salesforce()

    contact = Contact.objects.get(salesforce_id=salesforce_id)
    assert contact.version == 0
    assert not AuditEntry.objects.filter(contact=contact).exists()
    assert not ContactSync.objects.filter(contact=contact).exists()


def test_a_contact_renamed_in_salesforce_is_renamed_here_without_a_change_entry(standin):
    contact = _known(standin, Ascend_Id__c="3000000002")
    entries = AuditEntry.objects.count()
    standin.external_update(
        contact.salesforce_id, LastName="Okafor-Banks", Email="ada.banks@example.edu"
    )

    inbound.pull_from_salesforce()

    contact.refresh_from_db()
    assert (contact.name, contact.email) == ("Ada Okafor-Banks", "ada.banks@example.edu")
    assert contact.ascend_id == "3000000002"
    assert AuditEntry.objects.count() == entries  # identity is not a preference change
    assert Contact.objects.search("okafor-banks").get() == contact


def test_a_contact_deleted_in_salesforce_is_kept_inactive_with_its_history(standin, specialist):
    contact = _known(standin)
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Asked.", opt_out={"phone": True}
    )
    sync.push_batch()
    standin.delete_contact(contact.salesforce_id)

    inbound.pull_from_salesforce()

    contact.refresh_from_db()
    assert contact.inactive_since is not None
    actions = list(AuditEntry.objects.filter(contact=contact).values_list("action", flat=True))
    assert actions == [AuditAction.DELETED, AuditAction.OPT_OUT]  # newest first
    assert current_state(contact).opted_out["phone"] is True
    assert not ContactSync.objects.filter(contact=contact, target="salesforce").exists()


def test_a_contact_restored_from_the_recycle_bin_is_active_again(standin):
    contact = _known(standin)
    standin.delete_contact(contact.salesforce_id)
    inbound.pull_from_salesforce()
    standin.undelete_contact(contact.salesforce_id)

    inbound.pull_from_salesforce()

    contact.refresh_from_db()
    assert contact.inactive_since is None
    assert AuditEntry.objects.filter(contact=contact, action=AuditAction.RESTORED).exists()


def test_a_merge_in_salesforce_joins_the_contacts_and_keeps_the_most_protective_values(
    standin, specialist
):
    survivor = _known(standin, Newsletter__c=True, Events__c=True)
    loser = _known(standin, Newsletter__c=True)
    apply_change(
        contact=loser, actor=specialist, source="staff", note="No calls.", opt_out={"phone": True}
    )
    sync.push_batch()
    standin.merge_contacts(survivor.salesforce_id, loser.salesforce_id)

    inbound.pull_from_salesforce()

    loser.refresh_from_db()
    assert loser.merged_into == survivor
    assert loser.inactive_since is not None
    state = current_state(survivor)
    assert state.opted_out["phone"] is True  # the loser's opt-out wins
    assert state.categories == {"newsletter"}  # a category only one of them had is dropped
    assert loser.pk in survivor.history_ids()
    history = AuditEntry.objects.filter(contact_id__in=survivor.history_ids())
    assert history.filter(action=AuditAction.OPT_OUT, contact=loser, note="No calls.").exists()
    assert history.filter(action=AuditAction.MERGED, contact=survivor).exists()
    # Salesforce kept the survivor's own values: the protective ones are sent back.
    sync.push_batch()
    assert standin.contact(survivor.salesforce_id)["DoNotCall"] is True
    assert standin.contact(survivor.salesforce_id)["Events__c"] is False


def test_a_change_arriving_for_a_merged_contact_lands_on_the_survivor(standin):
    survivor = _known(standin)
    loser = _known(standin)
    standin.merge_contacts(survivor.salesforce_id, loser.salesforce_id)
    inbound.pull_from_salesforce()

    apply_change(
        contact=loser, actor=None, source="email_platform", note="Unsubscribed.",
        opt_out={"email": True},
    )  # fmt: skip

    assert current_state(survivor).opted_out["email"] is True
    assert current_state(loser).opted_out["email"] is False


def test_a_lead_opted_out_in_salesforce_appears_opted_out(standin):
    lead_id = standin.add_lead(
        FirstName="Kai", LastName="Moreno", Company="Prospective", Email="kai@example.com",
        HasOptedOutOfEmail=True,
    )  # fmt: skip

    inbound.pull_from_salesforce()

    lead = Contact.objects.get(salesforce_id=lead_id)
    assert lead.kind == ContactKind.LEAD
    assert lead.ascend_id == ""
    assert current_state(lead).opted_out == {"email": True, "phone": False}
    assert Contact.objects.search("kai@example.com").get() == lead
    # Not in Ascend (no Ascend ID): nothing is sent there.
    assert not ContactSync.objects.filter(contact=lead, target="ascend").exists()


def test_a_converted_lead_joins_its_contacts_history(standin, specialist):
    lead_id = standin.add_lead(FirstName="Noor", LastName="Haddad", Company="Prospective")
    inbound.pull_from_salesforce()
    lead = Contact.objects.get(salesforce_id=lead_id)
    apply_change(
        contact=lead, actor=specialist, source="staff", note="Asked by phone.",
        opt_out={"phone": True},
    )  # fmt: skip
    sync.push_batch()
    assert standin.lead(lead_id)["DoNotCall"] is True

    contact_id = standin.convert_lead(lead_id, DoNotCall=False)
    inbound.pull_from_salesforce()

    lead.refresh_from_db()
    contact = Contact.objects.get(salesforce_id=contact_id)
    assert lead.merged_into == contact
    assert current_state(contact).opted_out["phone"] is True
    history = AuditEntry.objects.filter(contact_id__in=contact.history_ids())
    assert history.filter(contact=lead, note="Asked by phone.").exists()
    merged = history.get(action=AuditAction.MERGED, contact=contact)
    assert "converted into this contact" in merged.note


def test_a_person_account_is_read_through_its_person_fields(standin, settings):
    settings.SALESFORCE_PERSON_ACCOUNTS = True
    standin.set_person_accounts(True)
    account_id = standin.add_person_account(
        FirstName="Lena", LastName="Fischer", PersonEmail="lena@example.org",
        PersonDoNotCall=True,
    )  # fmt: skip

    inbound.pull_from_salesforce()

    contact = Contact.objects.get(salesforce_id=account_id)
    assert contact.kind == ContactKind.PERSON_ACCOUNT
    assert contact.email == "lena@example.org"
    assert contact.person_contact_id.startswith("003")
    assert current_state(contact).opted_out == {"email": False, "phone": True}
    # Its person contact is not a second contact.
    assert not Contact.objects.filter(salesforce_id=contact.person_contact_id).exists()


def test_one_pull_reads_each_object_once(standin):
    standin.add_contact(FirstName="A", LastName="B")
    calls = standin.api_calls

    inbound.pull_from_salesforce()

    assert standin.api_calls - calls == 2  # Contact and Lead, one queryAll each
