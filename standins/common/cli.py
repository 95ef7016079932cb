"""What ``python -m standins.<name>`` shares: the common options, where the state and the
certificates live, and serving until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from standins.common.control import DEFAULT_CLIENT_ID
from standins.tls import StandIn


def standin_parser(
    prog: str, description: str, *, port: int, client_id_env: str, state_help: str
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--state-file", help=state_help)
    parser.add_argument(
        "--cert-dir", help="where the CA and server certificate live (default: beside the state)"
    )
    parser.add_argument("--client-id", default=os.environ.get(client_id_env) or DEFAULT_CLIENT_ID)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse (after adding ``--log-level``, last in the help) and set up logging."""
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    return args


def state_paths(args: argparse.Namespace, cert_subdir: str) -> tuple[Path | None, Path | None]:
    """The state file, and the certificate directory: as given, else beside the state file
    (so a demo's CA bundle path survives a restart), else None (a temporary one)."""
    state_file = Path(args.state_file) if args.state_file else None
    if args.cert_dir:
        return state_file, Path(args.cert_dir)
    return state_file, state_file.parent / cert_subdir if state_file else None


def serve_until_signalled(standin: StandIn, info: dict[str, Any], banner: str) -> int:
    """Print the JSON line a parent process waits for and a banner for people, then serve
    until SIGTERM or SIGINT."""
    print(json.dumps(info), flush=True)
    print(banner, file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    standin.stop()
    return 0
