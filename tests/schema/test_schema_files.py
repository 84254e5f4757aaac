"""docs/schemas themselves: valid JSON Schema (Draft 2020-12), every `$ref` resolves, docs/schema.md
names every file, and the definitions refuse what the conventions forbid (a time with an offset or
without a zone, a bare epoch number, an id of the wrong kind, an error without its exit code)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.support.paths import REPO_ROOT
from tests.support.schema import BASE_URI, registry, schema_files, validate


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_each_schema_file_is_valid_and_every_ref_resolves(path: Any) -> None:
    contents = json.loads(path.read_text())
    Draft202012Validator.check_schema(contents)
    resolver = registry().resolver(base_uri=BASE_URI + path.name)
    refs = re.findall(r'"\$ref": "([^"]+)"', path.read_text())
    assert refs or path.name == "common.json"
    for ref in set(refs):
        resolver.lookup(ref)  # raises if the file or the definition does not exist


def test_docs_name_every_schema_file() -> None:
    text = (REPO_ROOT / "docs" / "schema.md").read_text()
    for path in schema_files():
        assert f"`{path.name}`" in text, path.name


@pytest.mark.parametrize(
    "value",
    ["2026-11-30T04:34:34+00:00", "2026-11-30 04:34:34Z", "2026-11-30T04:34:34", "1796013274", "2026-11-30"],
)
def test_a_time_is_only_the_one_format(value: str) -> None:
    with pytest.raises(AssertionError):
        validate(value, "common.json#/$defs/time")
    validate("2026-11-30T04:34:34.648522Z", "common.json#/$defs/time")
    validate("2026-11-30T04:34:34Z", "common.json#/$defs/time")


def test_ids_and_errors_are_refused_when_they_break_the_conventions() -> None:
    with pytest.raises(AssertionError):
        validate("dev_abc", "common.json#/$defs/alert_id")
    with pytest.raises(AssertionError):
        validate({"error": {"code": "not_found", "message": "no alert"}}, "common.json#/$defs/error")
    with pytest.raises(AssertionError):  # the old flat shape
        validate({"error": "no alert", "exit_code": 1}, "common.json#/$defs/error")
    validate(
        {"error": {"code": "not_found", "message": "no alert"}, "exit_code": 1}, "common.json#/$defs/error"
    )
