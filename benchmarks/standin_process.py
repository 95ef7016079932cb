"""The Salesforce stand-in in a process of its own, for the benchmarks that read from it
(bench_reconcile.py, bench_initial_load.py). Run as scripts, they import this module from
their own directory."""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StandInInfo:
    url: str
    ca_path: str
    client_id: str
    secret: str
    pid: int


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG (1): the kernel sends the stand-in SIGTERM when this process dies,
    # even by SIGKILL, when no finally block can run.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


@contextmanager
def salesforce_standin(directory: Path) -> Iterator[StandInInfo]:
    """``python -m standins.salesforce`` on a free port, as standins/tls.py's
    run_standin_process starts it (secret in the environment, the JSON line on stdout)."""

    secret = secrets.token_urlsafe(24)
    env = {**os.environ, "SALESFORCE_CLIENT_SECRET": secret}
    env.pop("SALESFORCE_CLIENT_ID", None)
    log_path = directory / "salesforce-standin.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "standins.salesforce",
                "--port",
                "0",
                "--cert-dir",
                str(directory / "salesforce-certs"),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=ROOT,
            # Safe in a preexec_fn: this process has started no thread yet.
            preexec_fn=die_with_parent,
        )
    try:
        stdout = process.stdout
        assert stdout is not None
        lines: list[str] = []
        # readline() would block forever on a child that hangs before printing.
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        if not lines or not lines[0].strip():
            raise SystemExit(
                f"the Salesforce stand-in did not start (exit {process.poll()}); "
                f"{log_path.read_text(errors='replace')[-2000:]}"
            )
        info = json.loads(lines[0])
        print(f"Salesforce stand-in: pid {process.pid}, {info['url']}", flush=True)
        yield StandInInfo(info["url"], info["ca_path"], info["client_id"], secret, process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        print(f"Salesforce stand-in: stopped (exit {process.returncode})", flush=True)
