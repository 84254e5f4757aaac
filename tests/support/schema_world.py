"""A live issuer with an alert delivered to every kind of sink, for the schema tests (fixture
`schema_world`, one per session): the real `tripkey`, `tripkey-agent` and `tripkey-issuer` commands run
against it, and every JSON they print and every payload a sink received is checked against
docs/schemas.

Real parts: the issuer on loopback (SQLite) minting in the session's moto server; the device, its
reads and heartbeat come through the API (tests/support/client.py `build_world`), the uses of the key
through the EventBridge ingest route; sinks deliver to HTTP receivers (webhook in all three formats,
Slack, PagerDuty), to an SMTP server (aiosmtpd) and to JSONL files (all three formats).
"""

from __future__ import annotations

import dataclasses
import email
import hashlib
import json
import time
from collections.abc import Iterator
from email import policy
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_tool
from tests.support.client import INGEST_DESTINATION, INGEST_SECRET, World, build_world
from tests.support.detection import WebhookReceiver
from tests.support.net import free_port

FORMATS = ("native", "ocsf", "ecs")
HOOK_SECRET = "schema-hook-secret"


@dataclasses.dataclass
class SchemaWorld:
    world: World
    hooks: dict[str, WebhookReceiver]  # webhook-native/-ocsf/-ecs, slack, pagerduty
    jsonl: dict[str, Path]  # by format
    mails: list[Message]
    alert_id: str
    tmp: Path

    @property
    def env(self) -> dict[str, str]:
        return {"TRIPKEY_ISSUER_URL": self.world.url, "TRIPKEY_TOKEN": self.world.responder_token}

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.world.issuer.db_path}"

    def tripkey(self, *args: str) -> Any:
        return run_tool("tripkey", *args, env=self.env)


@pytest.fixture(scope="session")
def schema_world(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaWorld]:
    from aiosmtpd.controller import Controller

    from tests.support.issuer import running_issuer

    tmp = tmp_path_factory.mktemp("schema")
    mails: list[Message] = []

    class Inbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mails.append(email.message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    hooks = {f"webhook-{fmt}": WebhookReceiver(secret=HOOK_SECRET) for fmt in FORMATS}
    hooks["slack"] = WebhookReceiver()
    hooks["pagerduty"] = WebhookReceiver(status=202)
    jsonl = {fmt: tmp / f"alerts-{fmt}.jsonl" for fmt in FORMATS}
    sinks: list[dict[str, Any]] = [
        {
            "type": "webhook",
            "name": f"webhook-{fmt}",
            "url": hooks[f"webhook-{fmt}"].url,
            "secret": HOOK_SECRET,
        }
        | {"format": fmt}
        for fmt in FORMATS
    ]
    sinks += [
        {"type": "jsonl", "name": f"jsonl-{fmt}", "path": str(jsonl[fmt]), "format": fmt} for fmt in FORMATS
    ]
    sinks += [
        {"type": "slack", "name": "slack", "url": hooks["slack"].url},
        {
            "type": "pagerduty",
            "name": "pagerduty",
            "routing_key": "R0UTING",
            "endpoint": hooks["pagerduty"].url,
        },
        {
            "type": "smtp",
            "name": "mail",
            "host": "127.0.0.1",
            "port": smtp.port,
            "from": "tk@x.test",
            "to": "soc@x.test",
        },
    ]
    ingest = [
        {"name": INGEST_DESTINATION, "secret_sha256": hashlib.sha256(INGEST_SECRET.encode()).hexdigest()}
    ]
    try:
        with running_issuer(
            data_dir=str(tmp / "issuer"),
            aws_endpoint=moto_server,
            poll_interval=0,
            ingest_destinations=ingest,
            sinks=sinks,
            alert_update_min_interval=0,
        ) as issuer:
            world = build_world(issuer)
            alert_id = world.alert(event_name="GetCallerIdentity", source_ip="203.0.113.9")
            _wait_delivered(world, alert_id, revisions=1, sinks=len(sinks))
            # A use from another address with another kind of call: the alert follows the incident
            # and the sinks get an update (revision 1) with the first and the last address differing.
            assert world.alert(event_name="ListBuckets", source_ip="198.51.100.23") == alert_id
            _wait_delivered(world, alert_id, revisions=2, sinks=len(sinks))
            yield SchemaWorld(world, hooks, jsonl, mails, alert_id, tmp)
    finally:
        for hook in hooks.values():
            hook.close()
        smtp.stop()


def _wait_delivered(world: World, alert_id: str, *, revisions: int, sinks: int, timeout: float = 60) -> None:
    """Until every sink has a finished delivery of every revision (delivered, or skipped: PagerDuty
    pages no self-test)."""
    from server_api_client import IssuerClient

    client = IssuerClient(world.url, world.responder_token)
    deadline = time.monotonic() + timeout
    deliveries: list[Any] = []
    while time.monotonic() < deadline:
        deliveries = list(client.get_alert(alert_id).deliveries)
        done = [d for d in deliveries if d.get("status") in ("delivered", "skipped")]
        if len(done) >= revisions * sinks:
            return
        time.sleep(0.2)
    raise AssertionError(f"deliveries did not finish: {json.dumps(deliveries)[:2000]}")
