"""Alert sinks: webhook (HMAC-signed JSON), Slack incoming webhook, PagerDuty Events v2, SMTP, JSONL.

Configuration is one table per sink in the issuer settings (``[[sinks]]`` with ``type`` and
``name``). Every sink takes ``max_attempts`` (default 5), ``backoff_seconds`` (default 2, doubled
each retry) and ``timeout`` (default 10 s).

Formats (docs/schema.md): the webhook and JSONL sinks take ``format = "native" | "ocsf" | "ecs"``:
the alert's own JSON (with its `siem` block), an OCSF 1.8.0 Detection Finding (issuer.alerts.ocsf) or an
ECS 8.17.0 document (issuer.alerts.ecs). The webhook's native body is the envelope
``{"type": "tripkey.alert", "schema_version", "siem", "alert"}``; in the other formats the body is the
mapped document itself. The JSONL sink writes exactly one document per line: the alert itself, or
its mapping, nothing around it.

Webhook signature: ``X-Tripkey-Timestamp: <unix seconds>`` and
``X-Tripkey-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``; receivers should
reject stale timestamps to stop replays.

Errors never carry a sink's URL or credentials into `last_error`: a Slack webhook URL *is* a secret.

Text meant for people (the email subject and body, Slack's message, PagerDuty's summary) has every
control and bidirectional character spelled out (issuer.textsafe.visible): a hostname, a reader's
command line or a CloudTrail user agent is chosen by someone else and must not drive a terminal or
fold a mail header. JSON payloads (webhook, JSONL, the alert attached to the email) stay exact.

    SinkError
    ├── SinkConfigError    invalid sink configuration (raised at startup, loudly)
    └── DeliveryFailed     one attempt failed (retried with backoff)
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import json
import os
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

import requests

from issuer.alerts.ecs import to_ecs
from issuer.alerts.ocsf import to_ocsf
from issuer.alerts.text import headline as _headline
from issuer.alerts.text import text_body as _text_body
from issuer.textsafe import visible

DELIVERED = "delivered"
SKIPPED = "skipped"
PAGERDUTY_DEFAULT_ENDPOINT = "https://events.pagerduty.com/v2/enqueue"
SIGNATURE_HEADER = "X-Tripkey-Signature"
TIMESTAMP_HEADER = "X-Tripkey-Timestamp"


class SinkError(Exception):
    """Base of every sink error."""


class SinkConfigError(SinkError):
    """A sink's configuration is invalid."""


class DeliveryFailed(SinkError):
    """One delivery attempt failed; the message is safe to store (no URL, no secret)."""


FORMATS = ("native", "ocsf", "ecs")


def _format(config: dict[str, Any], sink: str) -> str:
    value = str(config.get("format") or "native")
    if value not in FORMATS:
        raise SinkConfigError(f"sink {sink!r}: format {value!r} is not one of {', '.join(FORMATS)}")
    return value


def render(alert: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The alert as one document in `fmt` (native: the alert itself)."""
    if fmt == "ocsf":
        return to_ocsf(alert)
    if fmt == "ecs":
        return to_ecs(alert)
    return alert


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _require(config: dict[str, Any], key: str, sink: str) -> Any:
    value = config.get(key)
    if value in (None, "", []):
        raise SinkConfigError(f"sink {sink!r}: missing required key {key!r}")
    return value


def _post_json(
    url: str,
    payload: dict[str, Any],
    timeout: float,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> None:
    data = body if body is not None else json.dumps(payload).encode()
    try:
        response = requests.post(
            url,
            data=data,
            timeout=timeout,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
    except requests.Timeout:
        raise DeliveryFailed(f"timed out after {timeout}s") from None
    except requests.ConnectionError:
        raise DeliveryFailed("connection failed") from None
    except requests.RequestException as exc:
        raise DeliveryFailed(f"request failed ({type(exc).__name__})") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"HTTP {response.status_code}")


class Sink(abc.ABC):
    type: ClassVar[str]

    def __init__(self, config: dict[str, Any]) -> None:
        self.name = str(config.get("name") or self.type)
        self.max_attempts = int(config.get("max_attempts", 5))
        self.backoff_seconds = float(config.get("backoff_seconds", 2.0))
        self.timeout = float(config.get("timeout", 10.0))
        if self.max_attempts < 1 or self.backoff_seconds < 0 or self.timeout <= 0:
            raise SinkConfigError(f"sink {self.name!r}: max_attempts >= 1, backoff_seconds >= 0, timeout > 0")

    @abc.abstractmethod
    def send(self, alert: dict[str, Any]) -> str:
        """Deliver `alert` (the API's alert JSON); return DELIVERED or SKIPPED, raise DeliveryFailed."""

    def retry_delay(self, attempts: int) -> float:
        return self.backoff_seconds * (2 ** max(attempts - 1, 0))


class WebhookSink(Sink):
    type = "webhook"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.url = str(_require(config, "url", self.name))
        self.secret = str(_require(config, "secret", self.name))
        self.format = _format(config, self.name)

    def payload(self, alert: dict[str, Any]) -> dict[str, Any]:
        if self.format != "native":
            return render(alert, self.format)
        return {
            "type": "tripkey.alert",
            "schema_version": alert.get("schema_version"),
            "siem": alert.get("siem"),
            "alert": alert,
        }

    def send(self, alert: dict[str, Any]) -> str:
        body = json.dumps(self.payload(alert), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign_webhook(self.secret, timestamp, body)}
        _post_json(self.url, {}, self.timeout, headers=headers, body=body)
        return DELIVERED


def _slack_escape(text: str) -> str:
    """Slack's three control characters: hostnames, paths and command lines come from the device, and
    `<!channel>` would page everyone, `<https://...|text>` would plant a link in the alert."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackSink(Sink):
    type = "slack"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.url = str(config.get("webhook_url") or _require(config, "url", self.name))

    def send(self, alert: dict[str, Any]) -> str:
        headline = _slack_escape(_headline(alert))
        payload = {
            "text": headline,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*"}},
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": "```" + _slack_escape(_text_body(alert)[:2800]) + "```",
                    },
                },
            ],
        }
        _post_json(self.url, payload, self.timeout)
        return DELIVERED


_PD_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}


class PagerDutySink(Sink):
    type = "pagerduty"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.routing_key = str(_require(config, "routing_key", self.name))
        self.endpoint = str(config.get("endpoint") or PAGERDUTY_DEFAULT_ENDPOINT)

    def send(self, alert: dict[str, Any]) -> str:
        if alert.get("selftest"):
            return SKIPPED  # a self-test is expected; it must never page anyone
        device = (alert.get("enrichment") or {}).get("device") or {}
        payload = {
            "routing_key": self.routing_key,
            "event_action": "trigger",  # the same dedup_key: an update refreshes the same incident
            "dedup_key": f"tripkey-{alert.get('alert_id')}",
            "payload": {
                "summary": visible(str(alert.get("title")))[:1024],
                "source": visible(str(device.get("hostname") or "tripkey-issuer")),
                "severity": _PD_SEVERITY.get(str(alert.get("severity")), "error"),
                "timestamp": alert.get("first_seen"),
                "component": "tripkey",
                "class": alert.get("kind"),
                "custom_details": {
                    "alert_id": alert.get("alert_id"),
                    "schema_version": alert.get("schema_version"),
                    "siem": alert.get("siem"),
                    "verdict": alert.get("verdict"),
                    "summary": alert.get("summary"),
                    "first_seen": alert.get("first_seen"),
                    "event_count": alert.get("event_count"),
                },
            },
        }
        _post_json(self.endpoint, payload, self.timeout)
        return DELIVERED


class SmtpSink(Sink):
    type = "smtp"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.host = str(_require(config, "host", self.name))
        self.port = int(config.get("port", 465 if config.get("tls") else 25))
        self.sender = str(_require(config, "from", self.name))
        to = _require(config, "to", self.name)
        self.recipients = [to] if isinstance(to, str) else [str(r) for r in to]
        self.starttls = bool(config.get("starttls", False))
        self.tls = bool(config.get("tls", False))  # implicit TLS from the first byte (SMTPS, port 465)
        self.ca_bundle = config.get("ca_bundle")  # a private relay's CA; the system's CAs otherwise
        self.username = config.get("username")
        self.password = config.get("password")
        if self.starttls and self.tls:
            raise SinkConfigError(f"sink {self.name!r}: set starttls or tls, not both")
        if self.username and not (self.starttls or self.tls):
            raise SinkConfigError(
                f"sink {self.name!r}: username needs starttls or tls (the password would cross the "
                "network in clear text)"
            )
        if self.ca_bundle is not None and not Path(str(self.ca_bundle)).is_file():
            raise SinkConfigError(f"sink {self.name!r}: ca_bundle {self.ca_bundle} is not a file")

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)

    def _connect(self) -> smtplib.SMTP:
        if self.tls:
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._tls_context())
        client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.starttls:
            try:
                client.starttls(context=self._tls_context())
            except BaseException:
                client.close()
                raise
        return client

    def send(self, alert: dict[str, Any]) -> str:
        message = EmailMessage()
        message["Subject"] = _headline(alert)[:250]
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(_text_body(alert) + "\n\n" + json.dumps(alert, indent=2, sort_keys=True))
        try:
            with self._connect() as client:
                if self.username:
                    client.login(str(self.username), str(self.password or ""))
                client.send_message(message)
        except smtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"SMTP {exc.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP failed ({type(exc).__name__})") from None
        return DELIVERED


class JsonlSink(Sink):
    type = "jsonl"
    _lock = threading.Lock()

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.path = Path(str(_require(config, "path", self.name))).expanduser()
        self.format = _format(config, self.name)

    def line(self, alert: dict[str, Any]) -> str:
        """Exactly one document, one line: the alert itself (native) or its mapping."""
        return json.dumps(render(alert, self.format), sort_keys=True) + "\n"

    def send(self, alert: dict[str, Any]) -> str:
        line = self.line(alert)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write of one line with O_APPEND: concurrent writers never interleave a record.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                with self._lock:
                    os.write(fd, line.encode())
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeliveryFailed(f"cannot append to {self.path}: {exc.strerror}") from None
        return DELIVERED


SINK_CLASSES: dict[str, type[Sink]] = {
    cls.type: cls for cls in (WebhookSink, SlackSink, PagerDutySink, SmtpSink, JsonlSink)
}


def build_sink(config: dict[str, Any]) -> Sink:
    kind = config.get("type")
    cls = SINK_CLASSES.get(str(kind))
    if cls is None:
        raise SinkConfigError(f"unknown sink type {kind!r}; expected one of {', '.join(SINK_CLASSES)}")
    return cls(dict(config))


def build_sinks(configs: list[dict[str, Any]]) -> list[Sink]:
    sinks = [build_sink(config) for config in configs]
    names = [sink.name for sink in sinks]
    if len(set(names)) != len(names):
        raise SinkConfigError(f"duplicate sink names in {names}")
    return sinks
