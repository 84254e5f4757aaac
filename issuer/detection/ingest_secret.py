"""`tripkey-issuer ingest-secret create --name NAME`: a secret for one EventBridge API destination.

The issuer keeps only the SHA-256 of the secret, in its configuration (`[[ingest_destinations]]`);
the secret itself is printed once, to be pasted into the EventBridge connection's API-key auth
(header `X-Tripkey-Ingest-Key`). issuer/cli.py registers it as the `ingest-secret` subcommand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys
from typing import Any

from server_api_client.cli_conventions import HelpFormatter, report_error

#: The HTTP header an EventBridge API destination sends the ingest key in.
INGEST_KEY_HEADER = "X-Tripkey-Ingest-Key"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ingest-secret",
        help="make secrets for EventBridge API destinations",
        description="Secrets authenticating POST /v1/ingest/eventbridge/{destination}.",
    )
    actions = parser.add_subparsers(dest="ingest_secret_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="print a new secret once, and the config lines holding its hash",
        description=(
            "Generate a random secret for ingest destination NAME. The secret is printed once: put it "
            f"in the EventBridge connection (API key auth, header {INGEST_KEY_HEADER}). Put the printed "
            "[[ingest_destinations]] table in the issuer's config file; the issuer stores only the hash."
        ),
    )
    create.epilog = (
        "examples:\n"
        "  tripkey-issuer ingest-secret create --name eventbridge-us-east-1\n"
        "  tripkey-issuer ingest-secret create --name eventbridge-eu-west-1 --json\n"
    )
    create.formatter_class = HelpFormatter
    create.add_argument("--name", required=True, help="destination name, the last part of the ingest URL")
    create.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def create_secret(name: str) -> dict[str, str]:
    if not _NAME.match(name):
        raise ValueError(f"--name must be 1-100 of A-Z a-z 0-9 _ . -, got {name!r}")
    secret = "tki_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return {
        "name": name,
        "secret": secret,
        "secret_sha256": digest,
        "header": INGEST_KEY_HEADER,
        "path": f"/v1/ingest/eventbridge/{name}",
        "config": f'[[ingest_destinations]]\nname = "{name}"\nsecret_sha256 = "{digest}"\n',
    }


def run(args: argparse.Namespace) -> int:
    try:
        data = create_secret(args.name)
    except ValueError as exc:
        return report_error("tripkey-issuer", str(exc), 2, as_json=args.json)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"secret (shown once; EventBridge connection, header {data['header']}):\n  {data['secret']}\n")
        print(f"endpoint path: {data['path']}\n\nadd to the issuer config file:\n\n{data['config']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m issuer.detection.ingest_secret create --name NAME` (same as the CLI subcommand)."""
    parser = argparse.ArgumentParser(prog="python -m issuer.detection.ingest_secret")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    return run(parser.parse_args(["ingest-secret", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
