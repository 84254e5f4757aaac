"""The SMTP sink against a real SMTP server on loopback (aiosmtpd): plain relay, STARTTLS with login,
implicit TLS, certificate checks against a private CA, refusals, and configs that would leak."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from issuer.alerts.sinks import DELIVERED, DeliveryFailed, SinkConfigError, build_sink
from tests.support.detection import ALERT
from tests.support.net import free_port
from tests.support.tls import TlsFiles, make_test_tls

pytest.importorskip("cryptography", reason="cryptography (installed with moto) makes the test CA")
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

LOGIN, PASSWORD = "tripkey-alerts", "relay-pass-123"


@dataclass
class Inbox:
    """The server's handler: keeps what it accepted; answers `reject_with` to DATA when set."""

    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str | None] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    reject_with: int | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reject_with:
            return f"{self.reject_with} rejected by the test"
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(message_from_bytes(envelope.content))
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.logins.append(login.decode() if login else None)
        self.tls.append(server.transport.get_extra_info("ssl_object") is not None)
        return "250 OK"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        LOGIN.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_test_tls(tmp_path)


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[Inbox, int]]]:
    """`smtp_server(**aiosmtpd options) -> (inbox, port)`; every server is stopped after the test."""
    running: list[Controller] = []

    def start(**options: Any) -> tuple[Inbox, int]:
        inbox = Inbox()
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        running.append(controller)
        return inbox, port

    yield start
    for controller in running:
        controller.stop()


def _sink(port: int, **extra: Any) -> Any:
    config = {"type": "smtp", "host": "127.0.0.1", "port": port, "from": "tripkey@example.com"}
    return build_sink({**config, "to": ["soc@example.com", "oncall@example.com"], "timeout": 10, **extra})


def _starttls_server(smtp_server: Any, tls_files: TlsFiles) -> tuple[Inbox, int]:
    return smtp_server(
        tls_context=tls_files.server_context,
        require_starttls=True,
        authenticator=_authenticate,
        auth_required=True,
        auth_require_tls=True,
    )


def test_plain_relay_delivers_to_every_recipient_and_reports_refusals(smtp_server: Any) -> None:
    inbox, port = smtp_server()
    sink = _sink(port)
    assert sink.send(ALERT) == DELIVERED
    [message] = inbox.messages
    assert message["Subject"].startswith("[Tripkey HIGH]")
    assert inbox.envelopes == [("tripkey@example.com", ["soc@example.com", "oncall@example.com"])]
    assert "/usr/bin/cat" in message.get_payload()
    assert inbox.tls == [False] and inbox.logins == [None]
    inbox.reject_with = 550
    with pytest.raises(DeliveryFailed, match="SMTP 550"):
        sink.send(ALERT)


def test_starttls_then_login_against_a_private_ca(smtp_server: Any, tls_files: TlsFiles) -> None:
    inbox, port = _starttls_server(smtp_server, tls_files)
    sink = _sink(port, starttls=True, ca_bundle=str(tls_files.ca_bundle), username=LOGIN, password=PASSWORD)
    assert sink.send(ALERT) == DELIVERED
    assert inbox.logins == [LOGIN] and inbox.tls == [True]
    assert inbox.messages[0]["Subject"].startswith("[Tripkey HIGH]")


def test_a_wrong_password_is_a_failed_delivery_that_never_shows_the_password(
    smtp_server: Any, tls_files: TlsFiles
) -> None:
    inbox, port = _starttls_server(smtp_server, tls_files)
    sink = _sink(
        port, starttls=True, ca_bundle=str(tls_files.ca_bundle), username=LOGIN, password="wrong-pass"
    )
    with pytest.raises(DeliveryFailed, match="SMTP 535") as failure:
        sink.send(ALERT)
    assert "wrong-pass" not in str(failure.value) and not inbox.messages


def test_a_relay_certificate_the_system_does_not_trust_is_refused(
    smtp_server: Any, tls_files: TlsFiles
) -> None:
    inbox, port = _starttls_server(smtp_server, tls_files)
    sink = _sink(port, starttls=True, username=LOGIN, password=PASSWORD)  # no ca_bundle: system CAs
    with pytest.raises(DeliveryFailed, match="SSLCertVerificationError"):
        sink.send(ALERT)
    assert not inbox.messages


def test_without_starttls_a_relay_that_requires_it_refuses(smtp_server: Any, tls_files: TlsFiles) -> None:
    inbox, port = _starttls_server(smtp_server, tls_files)
    with pytest.raises(DeliveryFailed, match="SMTP 530"):
        _sink(port).send(ALERT)
    assert not inbox.messages


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_with_login(smtp_server: Any, tls_files: TlsFiles) -> None:
    # aiosmtpd only sees STARTTLS as TLS for its auth_require_tls check; this socket is TLS from
    # the first byte (the Inbox records the transport's TLS object to prove it).
    inbox, port = smtp_server(
        ssl_context=tls_files.server_context,
        authenticator=_authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    sink = _sink(port, tls=True, ca_bundle=str(tls_files.ca_bundle), username=LOGIN, password=PASSWORD)
    assert sink.send(ALERT) == DELIVERED
    assert inbox.logins == [LOGIN] and inbox.tls == [True]


def test_implicit_tls_defaults_to_port_465() -> None:
    sink = build_sink({"type": "smtp", "host": "h", "from": "a@b", "to": "x@y", "tls": True})
    assert sink.port == 465


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"username": LOGIN, "password": PASSWORD}, "clear text"),
        ({"starttls": True, "tls": True}, "not both"),
        ({"starttls": True, "ca_bundle": "/nonexistent/ca.pem"}, "is not a file"),
    ],
)
def test_configs_that_would_leak_or_cannot_work_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(SinkConfigError, match=message):
        build_sink({"type": "smtp", "host": "h", "from": "a@b", "to": "x@y", **extra})
