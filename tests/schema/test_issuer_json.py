"""Issue 13, "One schema": every `tripkey-issuer ... --json` output validates against
docs/schemas/cli-issuer.json (times, ids, the `database` it used), and its errors are the one error
object with the documented exit codes.

Real parts: the installed `tripkey-issuer` on the live issuer's SQLite database
(tests/support/schema_world.py) and on paths that do not exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_tool
from tests.support.schema import assert_one_time_format, validate
from tests.support.schema_naming import assert_naming
from tests.support.schema_world import SchemaWorld

CLI = "cli-issuer.json#/$defs/"


def _issuer(world: SchemaWorld, *args: str) -> Any:
    result = run_tool("tripkey-issuer", *args, "--db", world.db_url, "--json")
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _check(document: Any, ref: str, what: str) -> None:
    validate(document, CLI + ref)
    assert_one_time_format(document, what)
    assert_naming(document, what)


def test_token_commands_speak_the_schema_and_never_list_a_token_value(schema_world: SchemaWorld) -> None:
    created = _issuer(schema_world, "token", "create", "--role", "responder", "--label", "soc laptop")
    _check(created, "token_create", "token create")
    assert created["database"] == {"url": schema_world.db_url, "source": "--db"}
    listed = _issuer(schema_world, "token", "list", "--all")
    _check(listed, "token_list", "token list")
    assert created["token"] not in json.dumps(listed)
    revoked = _issuer(schema_world, "token", "revoke", created["token_id"])
    _check(revoked, "token_revoke", "token revoke")
    assert revoked["token_id"] == created["token_id"] and revoked["revoked_at"]


def test_database_config_and_secrets_commands_speak_the_schema(schema_world: SchemaWorld) -> None:
    _check(_issuer(schema_world, "migrate"), "migrate", "migrate")
    _check(_issuer(schema_world, "config", "show"), "config_show", "config show")
    # It touches no database, so it takes no --db.
    result = run_tool(
        "tripkey-issuer", "ingest-secret", "create", "--name", "eventbridge-us-east-1", "--json"
    )
    assert result.returncode == 0, result.stderr
    secret = json.loads(result.stdout)
    _check(secret, "ingest_secret_create", "ingest-secret create")


def test_check_speaks_the_schema_whatever_it_finds(schema_world: SchemaWorld) -> None:
    # Offline: AWS is not asked; the database and settings are. It may pass or fail; its JSON is the same.
    result = run_tool("tripkey-issuer", "check", "--offline", "--db", schema_world.db_url, "--json")
    assert result.returncode in (0, 1), result.stderr
    _check(json.loads(result.stdout), "check", "check")


@pytest.mark.parametrize(
    ("args", "code", "word"),
    [
        (("token", "revoke", "tok_doesnotexist"), 1, "failed"),
        (("token", "create", "--role", "emperor"), 2, "usage_error"),
    ],
    ids=["unknown-token", "unknown-role"],
)
def test_errors_are_the_one_error_object(
    schema_world: SchemaWorld, args: tuple[str, ...], code: int, word: str
) -> None:
    result = run_tool("tripkey-issuer", *args, "--db", schema_world.db_url, "--json")
    assert result.returncode == code, (result.stdout, result.stderr)
    error = json.loads(result.stderr)
    validate(error, "common.json#/$defs/error")
    assert (error["exit_code"], error["error"]["code"]) == (code, word), error


def test_a_database_that_is_not_there_is_exit_3_no_database(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'never-made.db'}"
    result = run_tool("tripkey-issuer", "token", "list", "--db", missing, "--json", clean_env=True)
    error = json.loads(result.stderr)
    validate(error, "common.json#/$defs/error")
    assert (result.returncode, error["error"]["code"]) == (3, "no_database"), error
    assert not (tmp_path / "never-made.db").exists()
