"""Shared fixtures: real servers on loopback (moto as the AWS account). Subdirectories add their own."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import settings as hypothesis_settings

# Property tests: no per-example deadline (2 shared cores make timings noisy). On CI the examples are
# derandomized, so a run is reproducible and a landing never depends on the luck of the draw;
# developers' runs keep exploring new examples (and record failures in .hypothesis/).
hypothesis_settings.register_profile("tripkey", deadline=None, print_blob=True)
hypothesis_settings.register_profile(
    "tripkey-ci", deadline=None, print_blob=True, derandomize=True, database=None
)
hypothesis_settings.load_profile("tripkey-ci" if os.environ.get("CI") else "tripkey")

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Never let a developer's real AWS configuration leak into a test.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/tripkey-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/tripkey-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(autouse=True, scope="session")
def _isolate_aws_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


@contextlib.contextmanager
def run_moto_server(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a real moto server on a free loopback port; yield its URL; stop it."""
    port = free_port()
    env = {**os.environ, **FAKE_AWS_ENV, **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One moto server for the session (no IAM authorization). Use `moto_url` for a clean state."""
    with run_moto_server() as url:
        yield url


@pytest.fixture
def moto_url(moto_server: str) -> str:
    """The session's moto server, reset to an empty account for this test."""
    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    return moto_server


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


requires_root = pytest.mark.skipif(not is_root(), reason="needs root (real kernel sensor)")


# ----- issuer: real PostgreSQL and a live issuer (helper A1) -----------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the session; yields its admin URL (postgresql+psycopg://...)."""
    from tests.issuer.pg import postgres_bindir, run_postgres

    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are missing: apt-get install postgresql")
    with run_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server; dropped after the test."""
    import secrets

    from tests.issuer.pg import create_database, drop_database

    name = "t_" + secrets.token_hex(6)
    yield create_database(postgres_server, name)
    drop_database(postgres_server, name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Store tests run twice: on a SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'issuer.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def issuer_factory(moto_url: str, tmp_path: Path) -> Iterator[Any]:
    """`issuer_factory(**settings_overrides) -> LiveIssuer`: a real issuer (uvicorn thread, loopback).

    Defaults: a SQLite DB under tmp_path, aws_endpoint = the (reset) moto server, poll_interval 0
    (no detection runner unless the test configures detection). The LiveIssuer has .url,
    .settings, .db_path, .create_token(role), .enroll(), .request(), .session(); stopped after the test.
    """
    from tests.issuer.live import start_issuer

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
