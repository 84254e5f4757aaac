"""The documented schema (docs/schemas/*.json, JSON Schema Draft 2020-12) and the one time format
(docs/schema.md), as test helpers: `validate(document, "alert.json")`, `assert_one_time_format`.

The schema files are loaded by their `$id` (https://tripkey.invalid/schemas/<file>) into one
`referencing` registry, so `"$ref": "common.json#/$defs/time"` works offline; `.invalid` never
resolves, nothing is fetched.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support.paths import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "docs" / "schemas"
BASE_URI = "https://tripkey.invalid/schemas/"

# The one time format: RFC 3339, UTC, `Z`, whole seconds or up to six fraction digits.
ONE_TIME_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
# Anything that looks like a date and a time of day, in any of the forms Python or a database writes
# (`2026-11-30 03:23:25`, `...T03:23:25.783898+00:00`, `...T03:23`): each must be the one format.
LOOKS_LIKE_A_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2}|(?![\d.:]))"
)


@functools.cache
def registry() -> Registry:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text())
        assert contents.get("$id") == BASE_URI + path.name, f"{path.name}: $id must be {BASE_URI + path.name}"
        resources.append(
            (contents["$id"], Resource.from_contents(contents, default_specification=DRAFT202012))
        )
    return Registry().with_resources(resources)


def schema_files() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.json"))


def validate(document: Any, ref: str) -> None:
    """Validate `document` against `ref` ("alert.json" or "cli-tripkey.json#/$defs/devices_list"):
    every error is listed, with where it is, so a failure says what to fix."""
    validator = Draft202012Validator({"$ref": BASE_URI + ref}, registry=registry())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}" for e in errors[:20]]
        raise AssertionError(f"{ref}: {len(errors)} schema error(s):\n" + "\n".join(lines))


def _strings(value: Any, where: str, skip: frozenset[str]) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in skip:
                yield from _strings(item, f"{where}/{key}", skip)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}/{index}", skip)
    elif isinstance(value, str):
        yield where, value


def times_not_in_the_one_format(document: Any, skip_keys: frozenset[str] = frozenset()) -> list[str]:
    """Every time in `document` (a whole value, or inside a sentence) that is not RFC 3339 UTC with
    `Z`; `skip_keys` names fields that hold foreign data kept as it came (a refused input)."""
    bad = []
    for where, text in _strings(document, "", skip_keys):
        for match in LOOKS_LIKE_A_TIME.finditer(text):
            if not ONE_TIME_FORMAT.fullmatch(match.group(0)):
                bad.append(f"{where or '(top)'}: {match.group(0)!r} in {text[:120]!r}")
    return bad


def assert_one_time_format(document: Any, what: str, skip_keys: frozenset[str] = frozenset()) -> None:
    bad = times_not_in_the_one_format(document, skip_keys)
    assert not bad, f"{what}: times not in the one format (docs/schema.md):\n" + "\n".join(bad[:20])


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_jsonl(path: Path) -> list[Any]:
    return json_lines(path.read_text()) if path.exists() else []
