"""SQS consumer: EventBridge delivers CloudTrail API-call events to a queue; we long-poll it.

Messages are deleted once processed. Every event is parsed and recorded on its own
(issuer.detection.pipeline): a malformed or unrecordable one is counted, kept as a dead letter and
skipped, and the message is deleted, so one bad event never poisons the queue nor hides its
neighbours. A message whose processing failed because the database is down is left for SQS to
redeliver after its visibility timeout, but not forever: from its MAX_RECEIVES-th delivery on it is
kept as a dead letter and deleted as soon as the database takes the dead letter. (Give the queue a
redrive policy to a dead-letter queue as well: it catches what the issuer cannot even record.)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from issuer.detection.events import AwsEvent, MalformedEvent, Rejected, parse_json_events

log = logging.getLogger(__name__)
_REGION_IN_HOST = re.compile(r"^sqs[.-]([a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)
MAX_RECEIVES = 5  # deliveries of one message before it is kept as a dead letter instead

# handler(events, rejected) -> None; raises if the events could not be recorded (database down).
EventHandler = Callable[[list[AwsEvent], list[Rejected]], None]
# give_up(message_body, reason) -> None: keep a message that keeps failing as a dead letter.
GiveUp = Callable[[str, str], None]


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

    def __init__(
        self, aws_gateway: Any, queue_url: str, handler: EventHandler, give_up: GiveUp | None = None
    ) -> None:
        self.queue_url = queue_url
        self.handler = handler
        self.give_up = give_up
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
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = response.get("Messages") or []
        done: list[dict[str, str]] = []
        for message in messages:
            if self._process(message):
                done.append({"Id": str(len(done)), "ReceiptHandle": message["ReceiptHandle"]})
        if done:
            result = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
            for failure in result.get("Failed") or []:
                log.warning("SQS delete failed for one message: %s", failure.get("Code"))
        return len(messages)

    def _process(self, message: dict[str, Any]) -> bool:
        """Record the message's events; True when it may be deleted."""
        body = message.get("Body") or ""
        try:
            events, rejected = parse_json_events(unwrap_sns(body), source=self.source)
        except MalformedEvent as exc:
            events, rejected = [], [Rejected(f"message body: {exc}", body)]
        try:
            self.handler(events, rejected)
            return True
        except Exception as exc:
            received = _receive_count(message)
            if received < MAX_RECEIVES or self.give_up is None:
                log.exception(
                    "SQS message %s could not be processed (delivery %d); left for redelivery",
                    message.get("MessageId"),
                    received,
                )
                return False
            reason = f"could not be processed in {received} deliveries: {type(exc).__name__}: {exc}"
        try:
            self.give_up(body, reason)
        except Exception:
            log.exception("SQS message %s: not even a dead letter could be kept", message.get("MessageId"))
            return False
        log.error("SQS message %s kept as a dead letter and deleted: %s", message.get("MessageId"), reason)
        return True


def _receive_count(message: dict[str, Any]) -> int:
    try:
        return int((message.get("Attributes") or {}).get("ApproximateReceiveCount") or 1)
    except ValueError:
        return 1
