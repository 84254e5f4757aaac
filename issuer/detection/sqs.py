"""SQS consumer: EventBridge delivers CloudTrail API-call events to a queue; we long-poll it.

Messages are deleted once processed. A malformed message is counted and deleted too, so one bad
message never poisons the queue; a message whose processing failed (database down) is left for SQS
to redeliver after its visibility timeout.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from issuer.detection.events import AwsEvent, MalformedEvent, parse_json_events

log = logging.getLogger(__name__)
_REGION_IN_HOST = re.compile(r"^sqs[.-]([a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)

# handler(events, malformed_count) -> None; raises if the events could not be recorded.
EventHandler = Callable[[list[AwsEvent], int], None]


def region_of_queue(url: str) -> str | None:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    match = _REGION_IN_HOST.match(host)
    return match.group(1) if match else None


def unwrap_sns(body: str) -> str:
    """EventBridge → SNS → SQS wraps the event in an SNS envelope; EventBridge → SQS does not."""
    if '"Notification"' not in body:
        return body
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return body  # not an envelope; the event parser counts it as malformed
    if isinstance(envelope, dict) and envelope.get("Type") == "Notification":
        inner = envelope.get("Message")
        if isinstance(inner, str):
            return inner
    return body


class SqsSource:
    source = "sqs"

    def __init__(self, aws_gateway: Any, queue_url: str, handler: EventHandler) -> None:
        self.queue_url = queue_url
        self.handler = handler
        self._gateway = aws_gateway
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._gateway.client("sqs", region=region_of_queue(self.queue_url))
        return self._client

    def poll_once(self, wait_seconds: int = 20, max_messages: int = 10) -> int:
        """Receive up to `max_messages`, process and delete them; return how many were received."""
        response = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(max_messages, 10)),
            WaitTimeSeconds=max(0, min(wait_seconds, 20)),
        )
        messages = response.get("Messages") or []
        done: list[dict[str, str]] = []
        for message in messages:
            try:
                events, malformed = parse_json_events(
                    unwrap_sns(message.get("Body") or ""), source=self.source
                )
            except MalformedEvent:
                events, malformed = [], 1
            try:
                self.handler(events, malformed)
            except Exception:
                log.exception(
                    "SQS message %s could not be processed; left for redelivery", message.get("MessageId")
                )
                continue
            done.append({"Id": str(len(done)), "ReceiptHandle": message["ReceiptHandle"]})
        if done:
            result = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
            for failure in result.get("Failed") or []:
                log.warning("SQS delete failed for one message: %s", failure.get("Code"))
        return len(messages)
