"""``python -m standins.salesforce``: run the stand-in for the demo until interrupted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from standins.common.cli import parse_arguments, serve_until_signalled, standin_parser, state_paths
from standins.salesforce.oauth import DEFAULT_JWT_AUDIENCES
from standins.salesforce.query import DEFAULT_PAGE_SIZE
from standins.salesforce.routes import API_VERSION
from standins.salesforce.schema import DEFAULT_ASCEND_ID_FIELD, DEFAULT_TASK_EXTERNAL_ID
from standins.salesforce.standin import SalesforceStandIn
from standins.salesforce.store import DEFAULT_API_ALLOWANCE


def main(argv: list[str] | None = None) -> int:
    parser = standin_parser(
        "python -m standins.salesforce",
        "Run the Salesforce stand-in (HTTPS on loopback) until interrupted.",
        port=8443,
        client_id_env="SALESFORCE_CLIENT_ID",
        state_help="keep contacts and tasks here across restarts",
    )
    parser.add_argument(
        "--jwt-public-key", help="PEM file of the public key that signs JWT bearer assertions"
    )
    parser.add_argument("--jwt-username", help="the only username JWT assertions may name")
    parser.add_argument(
        "--jwt-audience",
        action="append",
        dest="jwt_audiences",
        help="an aud JWT assertions may name; repeat for each (default: "
        f"{', '.join(DEFAULT_JWT_AUDIENCES)})",
    )
    parser.add_argument(
        "--login-port",
        type=int,
        default=0,
        help="where the generic login host (login.salesforce.com) listens (default: any)",
    )
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--api-allowance", type=int, default=DEFAULT_API_ALLOWANCE)
    parser.add_argument("--task-external-id", default=DEFAULT_TASK_EXTERNAL_ID)
    parser.add_argument("--ascend-id-field", default=DEFAULT_ASCEND_ID_FIELD)
    parser.add_argument(
        "--person-accounts", action="store_true", help="the org has person accounts enabled"
    )
    parser.add_argument(
        "--auto-create", action="store_true", help="create unknown contacts on first update"
    )
    parser.add_argument(
        "--no-version-rule",
        dest="version_rule",
        action="store_false",
        help="run an org without the Preference_Version_Not_Older validation rule",
    )
    parser.add_argument(
        "--bulk-in-progress-polls",
        type=int,
        default=0,
        help="status reads a Bulk API query job answers InProgress before it completes",
    )
    args = parse_arguments(parser, argv)

    # The secret comes from the environment only (a command line is visible to every user);
    # SALESFORCE_CLIENT_SECRET is the name the app reads too, so one export serves both.
    secret = os.environ.get("SALESFORCE_CLIENT_SECRET", "")
    state_file, cert_dir = state_paths(args, "salesforce-standin")
    standin = SalesforceStandIn(
        host=args.host,
        port=args.port,
        login_port=args.login_port,
        client_id=args.client_id,
        client_secret=secret or None,
        jwt_public_key=Path(args.jwt_public_key).read_bytes() if args.jwt_public_key else None,
        jwt_username=args.jwt_username,
        jwt_audiences=args.jwt_audiences or DEFAULT_JWT_AUDIENCES,
        task_external_id=args.task_external_id,
        ascend_id_field=args.ascend_id_field,
        person_accounts=args.person_accounts,
        page_size=args.page_size,
        api_allowance=args.api_allowance,
        auto_create=args.auto_create,
        version_rule=args.version_rule,
        bulk_in_progress_polls=args.bulk_in_progress_polls,
        state_file=state_file,
        cert_dir=cert_dir,
    )
    standin.start()
    info: dict[str, Any] = {
        "url": standin.url,
        "login_url": standin.login_url,
        "ca_path": standin.ca_path,
        "client_id": standin.client_id,
    }
    if not secret:
        info["client_secret"] = standin.client_secret
    banner = (
        f"Salesforce stand-in on {standin.url} (API {API_VERSION}; the org's My Domain)\n"
        f"  login host:     {standin.login_url} (login.salesforce.com)\n"
        f"  CA certificate: {standin.ca_path}\n"
        f"  client id:      {standin.client_id}\n"
        f"  state file:     {state_file or '(memory only)'}"
    )
    return serve_until_signalled(standin, info, banner)
