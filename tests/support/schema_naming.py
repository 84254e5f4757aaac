"""The one naming of docs/schema.md ("Conventions") as a test helper: `assert_naming(document, what)`.

Keys are snake_case; an id is `<thing>_id`, never a bare `id`; the local account a file is planted for
is `local_user`, never `owner`/`username`; a `*_at` field is a time in the one format or null. Maps
whose keys are data (counts by OS, sensors by name) are named here and their keys left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from tests.support.schema import ONE_TIME_FORMAT

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
FORBIDDEN = {"id": "an id is <thing>_id", "owner": "local_user", "username": "user", "user_name": "user"}
# Objects whose keys are values (an OS name, a sensor name, a version, a counter's name).
DATA_KEYED = frozenset(
    {
        "by_os",
        "by_agent_version",
        "by_backend",
        "by_status",
        "by_name",
        "counters",
        "skipped_aws_events",
    }
)


def _walk(value: Any, where: str, data_keyed: frozenset[str]) -> Iterator[tuple[str, str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield where, key, item
            if key not in data_keyed:
                yield from _walk(item, f"{where}/{key}", data_keyed)
            elif isinstance(item, dict):
                for inner in item.values():
                    yield from _walk(inner, f"{where}/{key}/*", data_keyed)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}/{index}", data_keyed)


def naming_problems(document: Any, data_keyed: frozenset[str] = DATA_KEYED) -> list[str]:
    """`data_keyed`: keys whose objects are maps keyed by data (the agent's `sensors` by name)."""
    problems = []
    for where, key, value in _walk(document, "", data_keyed):
        if not SNAKE.match(key):
            problems.append(f"{where}/{key}: not snake_case")
        elif key == "owner" and "/provenance" in where:
            continue  # an executable's file owner (a reader's provenance), not the local user
        elif key in FORBIDDEN:
            problems.append(f"{where}/{key}: use {FORBIDDEN[key]}")
        elif key.endswith("_at") and not (
            value is None or (isinstance(value, str) and ONE_TIME_FORMAT.fullmatch(value))
        ):
            problems.append(f"{where}/{key}: {value!r} is not a time in the one format or null")
    return problems


def assert_naming(document: Any, what: str, data_keyed: frozenset[str] = DATA_KEYED) -> None:
    problems = naming_problems(document, data_keyed)
    assert not problems, f"{what}: not the one naming (docs/schema.md):\n" + "\n".join(problems[:20])
