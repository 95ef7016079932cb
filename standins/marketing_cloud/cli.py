"""``python -m standins.marketing_cloud``: run the stand-in for the demo until interrupted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from standins.common.cli import parse_arguments, serve_until_signalled, standin_parser, state_paths
from standins.marketing_cloud.routes import TOKEN_LIFETIME
from standins.marketing_cloud.standin import MarketingCloudStandIn
from standins.marketing_cloud.store import CHILD_MIDS, PARENT_MID


def main(argv: list[str] | None = None) -> int:
    parser = standin_parser(
        "python -m standins.marketing_cloud",
        "Run the Marketing Cloud stand-in (HTTPS on loopback) until interrupted.",
        port=8444,
        client_id_env="MARKETING_CLOUD_CLIENT_ID",
        state_help="keep subscribers here across restarts",
    )
    parser.add_argument(
        "--parent-mid",
        default=os.environ.get("MARKETING_CLOUD_ACCOUNT_ID") or PARENT_MID,
        help="the parent business unit's MID (the token's account_id)",
    )
    parser.add_argument(
        "--child-mid",
        action="append",
        dest="child_mids",
        help=f"a child business unit's MID; repeat for each (default: {', '.join(CHILD_MIDS)})",
    )
    parser.add_argument(
        "--seed",
        help='JSON file: [{"key", "status", "mid"?, "email"?}, ...], for subscribers the state '
        "does not hold yet",
    )
    parser.add_argument("--token-lifetime", type=float, default=TOKEN_LIFETIME)
    args = parse_arguments(parser, argv)

    # The secret comes from the environment only (a command line is visible to every user);
    # MARKETING_CLOUD_CLIENT_SECRET is the name the app reads too, so one export serves both.
    secret = os.environ.get("MARKETING_CLOUD_CLIENT_SECRET", "")
    state_file, cert_dir = state_paths(args, "marketing-cloud-standin")
    standin = MarketingCloudStandIn(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=secret or None,
        parent_mid=args.parent_mid,
        child_mids=CHILD_MIDS if args.child_mids is None else args.child_mids,
        token_lifetime=args.token_lifetime,
        state_file=state_file,
        cert_dir=cert_dir,
    )
    seeded = 0
    if args.seed:
        seeded = standin.set_subscribers(json.loads(Path(args.seed).read_text()), only_new=True)
    standin.start()
    info: dict[str, Any] = {
        "url": standin.url,
        "ca_path": standin.ca_path,
        "client_id": standin.client_id,
        "account_id": standin.parent_mid,
        "mids": list(standin.mids),
    }
    if not secret:
        info["client_secret"] = standin.client_secret
    banner = (
        f"Marketing Cloud stand-in on {standin.url} (auth, SOAP and REST)\n"
        f"  CA certificate:  {standin.ca_path}\n"
        f"  client id:       {standin.client_id}\n"
        f"  business units:  {standin.parent_mid} (parent), {', '.join(standin.child_mids)}\n"
        f"  seeded:          {seeded} subscriber(s)\n"
        f"  state file:      {state_file or '(memory only)'}"
    )
    return serve_until_signalled(standin, info, banner)
