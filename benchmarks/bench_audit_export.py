"""Peak memory of this process while it streams an audit export of a million entries.

Run from the project root, after bench_audit_log.py has seeded its database:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/preference_desk_auditbench \\
        .venv/bin/python benchmarks/bench_audit_export.py [--rows 1000000]

What it does:

1. Opens the benchmark database (never drops it; seed it with bench_audit_log.py) and picks
   the shortest date range ending today whose entries number at least --rows (entries
   are in time order, so the range starts on the day of the entry --rows from the newest).
   Counts the entries the filter matches.
2. Signs in as the demo manager and GETs /audit/export.csv?start=...&end=... in-process with
   django.test.Client, then reads the StreamingHttpResponse chunk by chunk and discards it,
   as a WSGI server would send it. DEBUG is off.
3. Measures the resident set size of this process: the kernel's peak (VmHWM, reset just
   before the export through /proc/self/clear_refs, so start-up and the setup queries do
   not count) and a sample every 200 chunks; reports rows, bytes, time and rows/s.
4. PASS if the peak RSS stays under 200 MB and the CSV has one line per matching entry.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_audit_log import MANAGER, configure_environment
from bench_contacts import code_version

TARGET_PEAK_MB = 200.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="entries the filter matches")
    return parser.parse_args()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False if the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main() -> None:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_environment()

    import django

    django.setup()

    from urllib.parse import urlencode

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from audit.forms import LogFilterForm
    from audit.models import AuditEntry

    assert not settings.DEBUG
    print(f"Database: {connection.settings_dict['NAME']}")
    print(f"Code: {code_version()}")
    newest = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first()
    if newest is None:
        raise SystemExit("No audit entries: seed the database with bench_audit_log.py first.")
    boundary = (
        AuditEntry.objects.filter(id__lte=newest - args.rows + 1)
        .order_by("-id")
        .values_list("created_at", flat=True)
        .first()
    )
    if boundary is None:
        raise SystemExit(f"Fewer than {args.rows:,} entries: seed more with bench_audit_log.py.")
    params = {
        "start": timezone.localtime(boundary).date().isoformat(),
        "end": timezone.localdate().isoformat(),
    }
    form = LogFilterForm(params)
    assert form.is_valid(), form.errors
    expected = form.entries().count()
    url = "/audit/export.csv?" + urlencode(params)
    print(f"Export: {url} matches {expected:,} entries")

    client = Client(SERVER_NAME="localhost")
    client.force_login(get_user_model().objects.get(username=MANAGER))

    rss_before = _status_kb("VmRSS")
    reset = _reset_peak()
    sampled_peak = rss_before
    started = time.perf_counter()
    response = client.get(url)
    first_byte = None
    lines = size = 0
    for chunks, chunk in enumerate(response.streaming_content, 1):  # type: ignore[attr-defined]
        if first_byte is None:
            first_byte = time.perf_counter() - started
        size += len(chunk)
        lines += chunk.count(b"\r\n")  # csv ends rows with CRLF; a note may hold a bare LF
        if chunks % 200 == 0:
            sampled_peak = max(sampled_peak, _status_kb("VmRSS"))
    elapsed = time.perf_counter() - started
    response.close()
    sampled_peak = max(sampled_peak, _status_kb("VmRSS"))
    peak_kb = _status_kb("VmHWM") if reset else sampled_peak
    rows = lines - 1  # the header

    print(f"Status {response.status_code}, {type(response).__name__}")
    print(
        f"{rows:,} rows, {size / 1e6:.0f} MB of CSV in {elapsed:.1f} s "
        f"({rows / elapsed:,.0f} rows/s); first bytes after {first_byte or 0:.2f} s"
    )
    print(
        f"RSS before the request {rss_before / 1024:.0f} MB; peak during the export "
        f"{peak_kb / 1024:.0f} MB ({'VmHWM' if reset else 'sampled every 200 chunks'}; "
        f"highest sample {sampled_peak / 1024:.0f} MB)"
    )
    ok = peak_kb / 1024 < TARGET_PEAK_MB and rows == expected and response.status_code == 200
    print(
        f"Target: peak RSS < {TARGET_PEAK_MB:.0f} MB and every matching entry exported: "
        + ("PASS" if ok else "FAIL")
    )
    print(
        f"BENCH audit_export rows={rows} seconds={elapsed:.1f} "
        f"peak_rss_mb={peak_kb / 1024:.0f} ok={'yes' if ok else 'no'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
