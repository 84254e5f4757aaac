"""Test session setup. Fixtures and helpers live in tests/support/ (registered below as plugins and
imported from there, never from a conftest)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from tests.support.paths import FAKE_AWS_ENV

# Property tests: no per-example deadline (2 shared cores make timings noisy). On CI the examples are
# derandomized, so a run is reproducible and a landing never depends on the luck of the draw;
# developers' runs keep exploring new examples (and record failures in .hypothesis/).
hypothesis_settings.register_profile("tripkey", deadline=None, print_blob=True)
hypothesis_settings.register_profile(
    "tripkey-ci", deadline=None, print_blob=True, derandomize=True, database=None
)
hypothesis_settings.load_profile("tripkey-ci" if os.environ.get("CI") else "tripkey")

pytest_plugins = [
    "tests.support.moto",
    "tests.support.pg",
    "tests.support.issuer",
    "tests.support.sensors",
    "tests.support.ebpf",
    "tests.support.detection",
    "tests.support.client",
    "tests.support.e2e",
    "tests.support.enforced",
    "tests.support.pushpath",
    "tests.support.schema_world",
]


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
