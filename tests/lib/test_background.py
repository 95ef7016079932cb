"""The background-work seam: work is asked for after commit, and a broker that cannot take
the message never fails the change that asked (the sweeper catches up)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError

from lib import background
from preferences.models import ContactSync
from preferences.services import apply_change

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any], Any]]:
    calls: list[tuple[str, list[Any], Any]] = []
    monkeypatch.setattr(
        current_app,
        "send_task",
        lambda name, args=(), countdown=None: calls.append((name, list(args), countdown)),
    )
    return calls


@pytest.fixture
def broker_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(current_app, "send_task", refuse)


def test_work_is_asked_for_only_once_the_transaction_commits(
    sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        background.after_commit("some.task", [7], countdown=2)
        assert sent == []  # not while the transaction may still roll back

    assert len(callbacks) == 1
    assert sent == [("some.task", [7], 2)]


def test_work_asked_for_in_a_rolled_back_transaction_is_never_sent(
    sent, django_capture_on_commit_callbacks
):
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
    ):
        background.after_commit("some.task", [7])
        1 / 0  # noqa: B018

    assert callbacks == []
    assert sent == []


def test_a_broker_that_is_down_is_logged_not_raised(broker_down, caplog):
    caplog.set_level(logging.WARNING, logger="lib.background")

    assert background.send("integrations.tasks.push", ["salesforce"]) is False

    assert "Could not queue integrations.tasks.push('salesforce',)" in caplog.text


def test_a_change_commits_while_the_broker_is_down(
    broker_down, contact, specialist, settings, django_capture_on_commit_callbacks
):
    settings.SALESFORCE_ENABLED = True  # so the change asks for a push

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        entry = apply_change(
            contact=contact, actor=specialist, source="staff", note="x", opt_out={"email": True}
        )

    assert callbacks  # the push was asked for, and the broker refused it
    assert entry.pk is not None
    behind = ContactSync.objects.get(contact=contact, target="salesforce")
    assert behind.status == "pending"  # left for the sweeper
