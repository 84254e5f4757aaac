"""Text for people in sinks spells out control and bidirectional characters; JSON stays exact.

Hostile input: an alert whose title, hostname, reader command line and user agent carry ESC/CSI
sequences, BEL, a right-to-left override and a CRLF that would fold a mail header (`Bcc:`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import Message
from typing import Any

import pytest

from issuer.alerts.sinks import DELIVERED, build_sink
from tests.support.detection import ALERT
from tests.support.net import free_port

CLEAR = "\x1b[2J\x1b[H"
HOSTILE = f"{CLEAR}ALL CLEAR\x07 \u202egnp.exe\r\nBcc: attacker@example.com"
RAW = ("\x1b", "\x07", "\u202e", "\r")


def hostile_alert() -> dict[str, Any]:
    alert = copy.deepcopy(ALERT)
    alert["title"] = f"Canary used by {HOSTILE}"
    alert["enrichment"]["device"]["hostname"] = f"lap{HOSTILE}"
    alert["enrichment"]["reads"][0]["cmdline"] = ["cat", HOSTILE]
    alert["summary"]["user_agents"] = [f"aws-cli{HOSTILE}"]
    return alert


def _no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text, (char, text)


def test_slack_text_is_escaped(det_webhook: Any) -> None:
    receiver = det_webhook()
    sink = build_sink({"type": "slack", "name": "slack", "url": receiver.url})
    assert sink.send(hostile_alert()) == DELIVERED
    payload = receiver.json_bodies()[0]
    texts = [payload["text"], *(block["text"]["text"] for block in payload["blocks"])]
    for text in texts:
        _no_raw_controls(text)
    assert "\\x1b[2J" in payload["text"] and "\\u202e" in payload["text"]


@pytest.fixture
def inbox() -> Iterator[tuple[list[Message], int]]:
    from aiosmtpd.controller import Controller

    messages: list[Message] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            messages.append(message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    yield messages, port
    controller.stop()


def test_email_subject_and_body_are_escaped_and_the_json_is_exact(inbox: Any) -> None:
    messages, port = inbox
    sink = build_sink(
        {"type": "smtp", "host": "127.0.0.1", "port": port, "from": "t@example.com", "to": "soc@example.com"}
    )
    alert = hostile_alert()
    assert sink.send(alert) == DELIVERED  # before: the CRLF in the title made every delivery fail
    [message] = messages
    assert message["Bcc"] is None, "no header was injected"
    subject = str(message["Subject"])
    _no_raw_controls(subject)
    assert "\\x1b[2J" in subject
    body = message.get_content().replace("\r\n", "\n")  # SMTP line endings are the transport's
    text, _, attached = body.partition("\n\n{")
    _no_raw_controls(text)
    assert "\\x1b[2J\\x1b[HALL CLEAR\\x07" in text
    assert json.loads("{" + attached) == alert  # the machine-readable part is exact


def test_webhook_payload_is_exact(det_webhook: Any) -> None:
    receiver = det_webhook(secret="s")
    sink = build_sink({"type": "webhook", "name": "soc", "url": receiver.url, "secret": "s"})
    alert = hostile_alert()
    sink.send(alert)
    assert receiver.json_bodies()[0]["alert"] == alert
