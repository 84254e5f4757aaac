"""A real moto server on loopback as the AWS account (fixtures `moto_server`, `moto_url`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from tests.support.net import free_port, wait_http
from tests.support.paths import FAKE_AWS_ENV


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
