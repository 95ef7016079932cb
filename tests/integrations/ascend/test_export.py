"""The Ascend nightly change file: content, re-runs, interruptions, windows, delivery."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from audit.models import AuditAction, AuditEntry
from integrations.ascend import sync as ascend
from preferences.models import AscendRun, Contact
from preferences.services import CHANGE_WINDOW_LOCK, apply_change
from standins.sftp import SftpStandIn, running_sftp_standin
from tests import factories

pytestmark = pytest.mark.django_db

HEADER = (
    b"ascend_id,salesforce_id,field,old_value,new_value,changed_at,changed_by,source,change_id\r\n"
)


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SftpStandIn]:
    with running_sftp_standin(tmp_path / "sftp-root") as server:
        yield server


@pytest.fixture
def sftp_settings(settings: Any, dirs: Any, sftp_server: SftpStandIn) -> Any:
    (sftp_server.root / "incoming").mkdir()
    settings.ASCEND_DESTINATION = sftp_server.url_for("/incoming")
    settings.ASCEND_SFTP_KEY_FILE = str(sftp_server.client_key_path)
    settings.ASCEND_SFTP_PASSWORD = ""
    settings.ASCEND_SFTP_HOST_KEY = sftp_server.host_key
    return settings


def opt(contact: Contact, actor: User | None, **opt_out: bool) -> AuditEntry:
    re_enrolment = any(value is False for value in opt_out.values())
    return apply_change(
        contact=contact,
        actor=actor,
        source="staff",
        note="As the contact asked.",
        opt_out=opt_out,
        consent=factories.consent() if re_enrolment else None,
    )


def expected_rows(entries: list[AuditEntry]) -> set[tuple[int, str]]:
    """(change id, field) for every opt-out that changed, worked out from the entries."""
    fields = {"email": "HasOptedOutOfEmail", "phone": "DoNotCall"}
    return {
        (entry.id, fields[channel])
        for entry in entries
        for channel in fields
        if entry.before.get("opted_out", {}).get(channel)
        != entry.after.get("opted_out", {}).get(channel)
    }


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def row_keys(rows: list[dict[str, str]]) -> list[tuple[int, str]]:
    return [(int(row["change_id"]), row["field"]) for row in rows]


def delivered_file(dirs: Any, run: AscendRun) -> Path:
    return dirs.dropbox / run.filename


# --- content --------------------------------------------------------------------------------


def test_opt_outs_and_reenrolments_on_email_and_phone_each_give_a_row(contact, specialist, dirs):
    out_email = opt(contact, specialist, email=True)
    out_phone = opt(contact, specialist, phone=True)
    back_email = opt(contact, specialist, email=False)
    back_phone = opt(contact, specialist, phone=False)

    run = ascend.export()

    rows = read(delivered_file(dirs, run))
    assert [(r["field"], r["old_value"], r["new_value"]) for r in rows] == [
        ("HasOptedOutOfEmail", "FALSE", "TRUE"),
        ("DoNotCall", "FALSE", "TRUE"),
        ("HasOptedOutOfEmail", "TRUE", "FALSE"),
        ("DoNotCall", "TRUE", "FALSE"),
    ]
    entries = [out_email, out_phone, back_email, back_phone]
    assert [int(r["change_id"]) for r in rows] == [entry.id for entry in entries]
    first = rows[0]
    assert first["ascend_id"] == contact.ascend_id
    assert first["salesforce_id"] == contact.salesforce_id
    assert first["changed_by"] == specialist.username
    assert first["source"] == "staff"
    assert first["changed_at"] == out_email.created_at.astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["changed_at"])
    assert run.rows == 4


def test_category_and_bounce_changes_give_no_rows(contact, specialist, dirs):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="News.", categories={"newsletter"}
    )
    apply_change(contact=contact, actor=None, source="email_platform", note="Hard.", bounced=True)
    both = opt(factories.make_contact(), specialist, email=True, phone=True)

    run = ascend.export()

    rows = read(delivered_file(dirs, run))
    # One entry changing both channels: two rows, email first.
    assert row_keys(rows) == [(both.id, "HasOptedOutOfEmail"), (both.id, "DoNotCall")]


def test_a_contact_without_an_ascend_id_is_not_in_the_file(contact, specialist, dirs):
    # A Lead has none: Ascend does not know the person (docs/design.md, "Contacts come from
    # Salesforce").
    lead = factories.make_contact(kind="lead", ascend_id="")
    opt(lead, specialist, email=True)
    known = opt(contact, specialist, phone=True)

    run = ascend.export()

    assert row_keys(read(delivered_file(dirs, run))) == [(known.id, "DoNotCall")]


def test_the_file_is_utf8_csv_with_crlf_lines_and_a_header(contact, specialist, dirs):
    opt(contact, specialist, email=True)

    run = ascend.export()

    data = delivered_file(dirs, run).read_bytes()
    assert data.startswith(HEADER)
    assert data.count(b"\r\n") == 2 and b"\n" not in data.replace(b"\r\n", b"")
    created = run.created_at.astimezone(UTC)
    assert run.filename == f"ascend-changes-{created:%Y%m%d}-0-{run.up_to_id}.csv"


def test_an_empty_window_still_delivers_a_header_only_file(categories, dirs):
    run = ascend.export()

    assert delivered_file(dirs, run).read_bytes() == HEADER
    assert run.rows == 0
    assert run.delivered_at is not None


def test_a_formula_in_the_actor_label_reaches_the_file_escaped(contact, dirs):
    attacker = User.objects.create_user('=HYPERLINK("https://evil.example","Click")')
    opt(contact, attacker, phone=True)

    run = ascend.export()

    rows = read(delivered_file(dirs, run))
    assert rows[0]["changed_by"] == '\'=HYPERLINK("https://evil.example","Click")'
    cells = [cell for row in rows for cell in row.values()]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)


def test_delivery_is_recorded_on_the_run_and_in_the_audit_log(contact, specialist, dirs):
    opt(contact, specialist, email=True)

    run = ascend.export()

    run.refresh_from_db()
    path = delivered_file(dirs, run)
    assert run.delivered_at is not None and run.error == ""
    assert run.destination == str(path)
    assert run.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    entry = AuditEntry.objects.get(action=AuditAction.ASCEND_FILE)
    assert entry.contact is None and entry.actor is None
    assert entry.source == "system" and entry.actor_label == "Ascend export"
    assert entry.note == f"1 rows, window (0, {run.up_to_id}], sha256 {run.checksum}, to {path}"
    # The export's own entry lies beyond the window, so the next run starts after it.
    assert entry.id > run.up_to_id
    assert list(dirs.staging.glob(".*")) == []


# --- re-runs --------------------------------------------------------------------------------


def test_rerunning_a_run_gives_the_same_bytes_after_more_changes(contact, specialist, dirs):
    opt(contact, specialist, email=True)
    opt(factories.make_contact(), specialist, phone=True)
    first = ascend.export()
    original = delivered_file(dirs, first).read_bytes()
    later = opt(contact, specialist, phone=True)
    # Nothing to reuse: the file is written again from the audit log.
    shutil.rmtree(dirs.staging)
    delivered_file(dirs, first).unlink()

    again = ascend.export(rerun=first)

    assert again.pk == first.pk
    assert delivered_file(dirs, again).read_bytes() == original
    assert again.checksum == first.checksum
    assert again.filename == first.filename
    assert AuditEntry.objects.filter(note__startswith="Re-run: ").count() == 1
    # A re-run does not move the window: the next night starts where it did.
    night = ascend.export()
    assert night.after_id == first.up_to_id
    assert row_keys(read(delivered_file(dirs, night))) == [(later.id, "DoNotCall")]


def test_rerun_of_a_failed_run_superseded_by_a_delivered_one_is_refused(
    contact, specialist, dirs, settings
):
    opt(contact, specialist, email=True)
    settings.ASCEND_DESTINATION = str(dirs.dropbox / "missing")
    with pytest.raises(ascend.AscendExportError):
        ascend.export()
    failed = AscendRun.objects.get()
    opt(contact, specialist, phone=True)
    settings.ASCEND_DESTINATION = str(dirs.dropbox)
    ascend.export()

    with pytest.raises(ascend.AscendExportError, match="later run has delivered"):
        ascend.export(rerun=failed)


# --- interruptions and windows --------------------------------------------------------------


def test_a_run_interrupted_mid_write_leaves_no_file_and_the_next_has_every_change_once(
    contact, specialist, dirs, monkeypatch
):
    entries = [opt(factories.make_contact(), specialist, email=True) for _ in range(6)]
    real_rows = ascend.change_rows

    def rows_then_crash(after_id: int, up_to_id: int) -> Iterator[list[str]]:
        for number, row in enumerate(real_rows(after_id, up_to_id)):
            if number == 4:
                raise OSError("No space left on device")
            yield row

    monkeypatch.setattr(ascend, "change_rows", rows_then_crash)
    with pytest.raises(ascend.AscendExportError, match="No space left"):
        ascend.export()

    failed = AscendRun.objects.get()
    assert failed.delivered_at is None and "No space left" in failed.error
    assert list(dirs.staging.iterdir()) == []  # no final file, no temporary file
    assert list(dirs.dropbox.iterdir()) == []
    assert not AuditEntry.objects.filter(action=AuditAction.ASCEND_FILE).exists()

    monkeypatch.setattr(ascend, "change_rows", real_rows)
    entries.append(opt(contact, specialist, phone=True))
    run = ascend.export()

    assert run.after_id == 0
    keys = row_keys(read(delivered_file(dirs, run)))
    assert sorted(keys) == sorted(expected_rows(entries)) and len(keys) == len(set(keys))
    assert [path.name for path in dirs.dropbox.iterdir()] == [run.filename]


def test_a_copy_interrupted_at_the_destination_leaves_nothing_there(
    contact, specialist, dirs, monkeypatch
):
    entry = opt(contact, specialist, email=True)
    real_copy = shutil.copyfileobj

    def half_then_fail(source: Any, target: Any, *args: Any) -> None:
        target.write(source.read(40))
        raise OSError("Connection to the file share lost")

    monkeypatch.setattr(shutil, "copyfileobj", half_then_fail)
    with pytest.raises(ascend.AscendExportError, match="file share lost"):
        ascend.export()
    assert list(dirs.dropbox.iterdir()) == []

    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    run = ascend.export()
    assert row_keys(read(delivered_file(dirs, run))) == [(entry.id, "HasOptedOutOfEmail")]
    assert AscendRun.objects.count() == 1  # the same window again reuses the failed run


def test_consecutive_runs_cover_every_change_exactly_once(
    categories: Any, specialist: User, dirs: Any
) -> None:
    contacts = [factories.make_contact() for _ in range(4)]
    nights: list[list[tuple[int, dict[str, bool]]]] = [
        [(0, {"email": True}), (1, {"email": True}), (2, {"phone": True})],
        [(0, {"email": False}), (1, {"phone": True}), (2, {"email": True, "phone": False})],
        [(1, {"email": False, "phone": False}), (0, {"phone": True})],
    ]
    entries: list[AuditEntry] = []
    runs: list[AscendRun] = []
    for night, changes in enumerate(nights):
        for index, wanted in changes:
            entries.append(opt(contacts[index], specialist, **wanted))
        apply_change(
            contact=contacts[3],
            actor=specialist,
            source="staff",
            note="Categories only.",
            categories={"events"} if night % 2 == 0 else {"newsletter"},
        )
        runs.append(ascend.export())

    seen: list[tuple[int, str]] = []
    after_id = 0
    for run in runs:
        assert run.after_id == after_id
        after_id = run.up_to_id
        seen += row_keys(read(delivered_file(dirs, run)))
    assert len(seen) == len(set(seen))
    assert set(seen) == expected_rows(entries)


def test_a_second_export_while_one_runs_is_refused(categories, dirs):
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ascend.EXPORT_LOCK])
        with pytest.raises(ascend.AscendExportError, match="Another Ascend export"):
            ascend.export()
        assert not AscendRun.objects.exists()
    finally:
        other.close()


@pytest.mark.django_db(transaction=True)
def test_a_change_committing_while_the_window_is_read_is_not_lost(
    transactional_db: None, categories: Any, specialist: User, dirs: Any
) -> None:
    contact = factories.make_contact()
    applied, release, window_waited = threading.Event(), threading.Event(), threading.Event()
    done: dict[str, Any] = {}

    def slow_change() -> None:
        # Its audit id is assigned now; it commits only once released.
        try:
            with transaction.atomic():
                done["entry"] = opt(contact, specialist, email=True)
                applied.set()
                release.wait(10)
        except BaseException as error:  # surfaced below, in the test's thread
            done["error"] = error
        finally:
            applied.set()
            connection.close()

    def release_once_the_window_waits() -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not window_waited.is_set():
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                        " AND database = (SELECT oid FROM pg_database"
                        "                 WHERE datname = current_database())"
                        " AND classid = 0 AND objid = %s AND mode = 'ExclusiveLock'"
                        " AND NOT granted",
                        [CHANGE_WINDOW_LOCK],
                    )
                    if cursor.fetchone() != (0,):
                        window_waited.set()
                time.sleep(0.005)
        finally:
            release.set()
            connection.close()

    changer = threading.Thread(target=slow_change)
    changer.start()
    assert applied.wait(10)
    watcher = threading.Thread(target=release_once_the_window_waits)
    watcher.start()

    after_id, up_to_id = ascend.next_window()

    changer.join(10)
    watcher.join(10)
    assert "error" not in done
    assert window_waited.is_set(), "next_window() did not wait for the change in flight"
    assert after_id == 0 and done["entry"].id <= up_to_id
    run = ascend.export()
    assert (done["entry"].id, "HasOptedOutOfEmail") in row_keys(read(delivered_file(dirs, run)))


# --- SFTP -----------------------------------------------------------------------------------


def test_sftp_delivery_lands_the_same_bytes(contact, specialist, dirs, sftp_settings, sftp_server):
    opt(contact, specialist, email=True)

    run = ascend.export()

    remote = sftp_server.root / "incoming" / run.filename
    assert remote.read_bytes() == (dirs.staging / run.filename).read_bytes()
    assert [path.name for path in remote.parent.iterdir()] == [run.filename]
    assert run.destination == (
        f"sftp://ascend@127.0.0.1:{sftp_server.port}/incoming/{run.filename}"
    )
    assert run.delivered_at is not None

    # A re-run replaces the file on the server with the same bytes.
    original = remote.read_bytes()
    remote.write_bytes(b"tampered")
    ascend.export(rerun=run)
    assert remote.read_bytes() == original


def _other_ed25519_key() -> Any:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


@pytest.mark.parametrize(
    ("make_key", "refusal"),
    [
        # The server presents a different key of the configured type.
        (_other_ed25519_key, "does not match"),
        # The configured key is of another type: the server's key is refused, not learnt.
        (paramiko.ECDSAKey.generate, "does not match"),
    ],
)
def test_sftp_with_a_wrong_host_key_is_refused_and_recorded(
    contact, specialist, dirs, sftp_settings, sftp_server, make_key, refusal
):
    opt(contact, specialist, email=True)
    impostor = make_key()
    sftp_settings.ASCEND_SFTP_HOST_KEY = f"{impostor.get_name()} {impostor.get_base64()}"

    with pytest.raises(ascend.AscendExportError, match=refusal):
        ascend.export()

    run = AscendRun.objects.get()
    assert run.delivered_at is None and refusal in run.error
    assert sftp_server.logins == 1  # it connected, and stopped at the host key
    assert list(sftp_server.root.rglob("*")) == [sftp_server.root / "incoming"]
    assert not AuditEntry.objects.filter(action=AuditAction.ASCEND_FILE).exists()


def test_sftp_with_a_password_delivers(contact, specialist, tmp_path, dirs, settings):
    opt(contact, specialist, phone=True)
    with running_sftp_standin(tmp_path / "pw-root", password="drop-box-secret") as server:
        settings.ASCEND_DESTINATION = server.url
        settings.ASCEND_SFTP_KEY_FILE = ""
        settings.ASCEND_SFTP_PASSWORD = "drop-box-secret"
        settings.ASCEND_SFTP_HOST_KEY = server.host_key

        run = ascend.export()

        assert (server.root / run.filename).read_bytes().startswith(HEADER)
        assert "drop-box-secret" not in run.destination


def test_sftp_connection_lost_mid_upload_leaves_no_file_and_is_swept_next_time(
    contact, specialist, dirs, sftp_settings, sftp_server
):
    entry = opt(contact, specialist, email=True)
    incoming = sftp_server.root / "incoming"
    sftp_server.fail("disconnect")

    with pytest.raises(ascend.AscendExportError):
        ascend.export()
    assert not any(path.name.endswith(".csv") for path in incoming.iterdir())

    run = ascend.export()
    assert [path.name for path in incoming.iterdir()] == [run.filename]
    assert row_keys(read(incoming / run.filename)) == [(entry.id, "HasOptedOutOfEmail")]


def test_sftp_rename_refused_leaves_no_file(contact, specialist, dirs, sftp_settings, sftp_server):
    opt(contact, specialist, email=True)
    sftp_server.fail("rename")

    with pytest.raises(ascend.AscendExportError):
        ascend.export()

    assert list((sftp_server.root / "incoming").iterdir()) == []


@pytest.mark.skipif(shutil.which("sftp") is None, reason="OpenSSH's sftp client is not installed")
def test_openssh_sftp_client_reads_the_delivered_file(
    contact, specialist, dirs, sftp_settings, sftp_server, tmp_path
):
    # The stand-in against a client that is not paramiko: the protocol and the host key line.
    opt(contact, specialist, email=True)
    run = ascend.export()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sftp_server.port} {sftp_server.host_key}\n")

    result = subprocess.run(
        [
            "sftp",
            "-F",
            "/dev/null",
            "-b",
            "-",
            "-P",
            str(sftp_server.port),
            "-i",
            str(sftp_server.client_key_path),
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "ascend@127.0.0.1",
        ],
        input=f"get incoming/{run.filename} {tmp_path / 'copy.csv'}\n",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "copy.csv").read_bytes() == (dirs.staging / run.filename).read_bytes()


# --- configuration and the command ----------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("", "ASCEND_DESTINATION is not set"),
        ("sftp://ascend:secret@127.0.0.1/in", "ASCEND_SFTP_PASSWORD"),
        ("sftp://127.0.0.1/in", "sftp://user@host"),
    ],
)
def test_misconfiguration_is_refused_before_anything_is_recorded(
    categories, settings, destination, message
):
    settings.ASCEND_DESTINATION = destination
    settings.ASCEND_SFTP_KEY_FILE = "/nonexistent"
    with pytest.raises(ImproperlyConfigured, match=message):
        ascend.export()
    assert not AscendRun.objects.exists()


def test_sftp_without_a_host_key_is_refused(categories, settings):
    settings.ASCEND_DESTINATION = "sftp://ascend@127.0.0.1:2222/in"
    settings.ASCEND_SFTP_KEY_FILE = "/keys/id_ed25519"
    settings.ASCEND_SFTP_HOST_KEY = ""
    with pytest.raises(ImproperlyConfigured, match="ASCEND_SFTP_HOST_KEY is required"):
        ascend.export()


def test_command_prints_the_run_and_reruns_by_id(contact, specialist, dirs):
    opt(contact, specialist, email=True)
    out = io.StringIO()

    call_command("ascend_export", stdout=out)

    run = AscendRun.objects.get()
    assert f"Ascend run {run.pk}: window (0, {run.up_to_id}], 1 rows" in out.getvalue()
    assert run.filename in out.getvalue()
    out = io.StringIO()
    call_command("ascend_export", "--rerun", str(run.pk), stdout=out)
    assert f"Ascend run {run.pk}:" in out.getvalue()
    with pytest.raises(CommandError, match="no Ascend run 999999"):
        call_command("ascend_export", "--rerun", "999999")


def test_a_delivered_run_marks_its_contacts_sent_to_ascend(tmp_path, settings, contact, specialist):
    from integrations.ascend import sync as ascend
    from preferences.models import ContactSync

    settings.ASCEND_DESTINATION = str(tmp_path)
    settings.ASCEND_STAGING_DIR = str(tmp_path / "staging")
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )
    mark = ContactSync.objects.get(contact=contact, target="ascend")
    assert mark.status == "pending"

    ascend.export()

    mark.refresh_from_db()
    assert (mark.status, mark.synced_version) == ("synced", 1)
