"""A real issuer on loopback for tests: uvicorn in a background thread, real HTTP, real database.

Used through the `issuer_factory` / `live_issuer` fixtures of tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session

from issuer import tokens as auth
from issuer.api.app import create_app
from issuer.api.server import server_config
from issuer.settings import Settings, load_settings


@dataclass
class LiveIssuer:
    """A running issuer. `url` has no trailing slash; `db_path` is None for PostgreSQL."""

    url: str
    settings: Settings
    app: FastAPI
    db_path: Path | None
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def session(self) -> Session:
        return self.app.state.sessionmaker()  # type: ignore[no-any-return]

    def create_token(self, role: str = "responder", label: str | None = None) -> str:
        """A new enroll or responder token (plaintext), as `tripkey-issuer token create` makes."""
        with self.session() as session:
            return auth.create_token(session, role, label=label)[1]

    def revoke_token(self, raw_token: str) -> None:
        with self.session() as session:
            principal = auth.authenticate(session, raw_token)
            auth.revoke_token(session, principal.token_id)

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def enroll(
        self, hostname: str = "lap-17", device_key: str | None = None, **facts: Any
    ) -> tuple[str, str]:
        """Enroll a device through the API; return (device_id, device_token)."""
        body = {
            "device_key": device_key or secrets.token_urlsafe(32),
            "hostname": hostname,
            "os": "linux",
            **facts,
        }
        response = self.request("POST", "/v1/enroll", self.create_token("enroll"), json=body)
        response.raise_for_status()
        data = response.json()
        return data["device_id"], data["device_token"]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def start_issuer(*, aws_gateway: Any = None, **overrides: Any) -> LiveIssuer:
    """Start an issuer with `overrides` on top of the defaults; wait until it answers."""
    settings = load_settings(env={}, overrides=overrides)
    app = create_app(settings, aws_gateway=aws_gateway)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound before the server starts: no port race
    port = sock.getsockname()[1]
    # As `tripkey-issuer serve` runs it (issuer.api.server): its HTTP protocol, uvicorn's own
    # X-Forwarded-For handling off (the issuer decides whom to believe, setting `trusted_proxies`).
    config = server_config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-issuer", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the issuer did not start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the issuer did not start within 60 s")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    db_path = (
        Path(settings.db_url.removeprefix("sqlite:///")) if settings.db_url.startswith("sqlite") else None
    )
    return LiveIssuer(url=url, settings=settings, app=app, db_path=db_path, _server=server, _thread=thread)


@contextlib.contextmanager
def running_issuer(**overrides: Any) -> Iterator[LiveIssuer]:
    issuer = start_issuer(**overrides)
    try:
        yield issuer
    finally:
        issuer.stop()


# ----- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def issuer_factory(moto_url: str, tmp_path: Path) -> Iterator[Any]:
    """`issuer_factory(**settings_overrides) -> LiveIssuer`: a real issuer (uvicorn thread, loopback).

    Defaults: a SQLite DB under tmp_path, aws_endpoint = the (reset) moto server, poll_interval 0
    (no detection runner unless the test configures detection). The LiveIssuer has .url,
    .settings, .db_path, .create_token(role), .enroll(), .request(), .session(); stopped after the test.
    """
    started: list[Any] = []

    def factory(**overrides: Any) -> Any:
        defaults = {
            "data_dir": str(tmp_path / f"issuer-{len(started)}"),
            "aws_endpoint": moto_url,
            "poll_interval": 0,
        }
        issuer = start_issuer(**{**defaults, **overrides})
        started.append(issuer)
        return issuer

    yield factory
    for issuer in started:
        issuer.stop()


@pytest.fixture
def live_issuer(issuer_factory: Any) -> Any:
    """A real issuer with default settings on SQLite, minting in the moto server."""
    return issuer_factory()
