"""The nightly export and staff changes share the database: neither may hold the other up.

The export holds its own advisory lock for the whole run (upload included), and reads its
window under the change-window lock; a change holds that lock shared and seals its audit
entry at commit under the audit seal lock (lib/locks.py). Whether a change waited is read
from PostgreSQL's pg_locks, not from timing.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from integrations.ascend import sync as ascend
from integrations.ascend.client import DirectoryDestination
from lib.locks import AdvisoryLock
from preferences.models import Contact
from preferences.services import apply_change
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds any one step may take before the test gives up on it


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _waiting_for(pid: int) -> list[tuple[str, str, int | None, list[int]]]:
    """The locks backend `pid` is waiting for: (kind, mode, advisory key, blocking pids)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT locktype, mode, CASE WHEN locktype = 'advisory' THEN objid::bigint END,"
            "       pg_blocking_pids(pid)"
            "  FROM pg_locks WHERE pid = %s AND NOT granted",
            [pid],
        )
        return [(kind, mode, key, list(blockers)) for kind, mode, key, blockers in cursor]


def _until(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


class _Thread(threading.Thread):
    """Runs `work` on a connection of its own; keeps its result or error for the test."""

    def __init__(self, work: Any) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.pid: queue.Queue[int] = queue.Queue()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.pid.put(_backend_pid())
            self.result = self.work()
        except BaseException as error:  # surfaced in the test's thread
            self.error = error
        finally:
            connection.close()


class _HeldUpload:
    """A drop box whose upload waits until the test lets it finish, so the export sits in
    the middle of its run (its lock held) for as long as the test needs."""

    def __init__(self, directory: Path) -> None:
        self.inner = DirectoryDestination(directory)
        self.uploading = threading.Event()
        self.finish = threading.Event()

    def describe(self, filename: str) -> str:
        return self.inner.describe(filename)

    def deliver(self, staged: Path) -> None:
        self.uploading.set()
        if not self.finish.wait(WAIT):
            raise TimeoutError("the test never let the upload finish")
        self.inner.deliver(staged)


def _opt_out(contact: Contact, actor: User) -> Any:
    return apply_change(
        contact=contact,
        actor=actor,
        source="staff",
        note="Asked by phone.",
        opt_out={"email": True},
    )


def _keys(run: Any, dirs: Any) -> set[int]:
    lines = (dirs.dropbox / run.filename).read_text().splitlines()[1:]
    return {int(line.rsplit(",", 1)[1]) for line in lines}


def test_changes_commit_while_the_export_uploads(
    categories: Any, specialist: User, dirs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = factories.make_contact()
    _opt_out(before, specialist)
    upload = _HeldUpload(dirs.dropbox)
    monkeypatch.setattr(ascend, "destination", lambda: upload)
    exporter = _Thread(ascend.export)
    exporter.start()
    assert upload.uploading.wait(WAIT), "the export did not reach its upload"

    during = factories.make_contact()
    change = _Thread(lambda: _opt_out(during, specialist))
    change.start()
    pid = change.pid.get(timeout=WAIT)
    # Until the change has committed or is seen waiting on a lock, whichever comes first.
    waited = _until(lambda: (not change.is_alive() and ["done"]) or _waiting_for(pid), "it")
    upload.finish.set()
    change.join(WAIT)
    exporter.join(WAIT)

    assert waited == ["done"], f"the change waited at commit for {waited} while the export ran"
    assert change.error is None and exporter.error is None
    first = exporter.result
    assert first.delivered_at is not None
    assert change.result.id > first.up_to_id  # committed after the window was read
    monkeypatch.setattr(ascend, "destination", lambda: DirectoryDestination(dirs.dropbox))
    second = ascend.export()
    assert change.result.id in _keys(second, dirs)  # the next night carries it


def test_an_export_and_a_change_in_flight_do_not_deadlock(
    categories: Any, specialist: User, dirs: Any
) -> None:
    contact = factories.make_contact()
    applied, commit = threading.Event(), threading.Event()

    def change_in_flight() -> Any:
        with transaction.atomic():  # holds the change-window lock (shared) until it commits
            entry = _opt_out(contact, specialist)
            applied.set()
            if not commit.wait(WAIT):
                raise TimeoutError("the test never let the change commit")
        return entry  # committed, and sealed at commit

    change = _Thread(change_in_flight)
    change.start()
    assert applied.wait(WAIT)
    exporter = _Thread(ascend.export)
    exporter.start()
    export_pid = exporter.pid.get(timeout=WAIT)
    # The export waits for the change in flight before it reads its window...
    waiting = _until(lambda: _waiting_for(export_pid), "the export to wait for the change")
    assert waiting[0][:3] == ("advisory", "ExclusiveLock", AdvisoryLock.CHANGE_WINDOW)
    # ...and the change, committing now, must not need anything the export holds.
    commit.set()
    change.join(WAIT)
    exporter.join(WAIT)

    assert change.error is None, f"the change failed at commit: {change.error!r}"
    assert exporter.error is None, f"the export failed: {exporter.error!r}"
    assert change.result.id <= exporter.result.up_to_id
    assert change.result.id in _keys(exporter.result, dirs)


def test_every_advisory_lock_has_its_own_number() -> None:
    assert len({int(lock) for lock in AdvisoryLock}) == len(AdvisoryLock.__members__)
    assert ascend.EXPORT_LOCK not in (AdvisoryLock.AUDIT_SEAL, AdvisoryLock.CHANGE_WINDOW)
