"""`tripkey-issuer` as users run it: the real console script, a real database, real HTTP, moto as AWS.

Every user mistake ends in one sentence naming the fix and the documented exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from issuer.cli import build_parser, main
from issuer.db import head_revision
from tests.support.cli import (
    assert_json_error,
    assert_one_line_error,
    every_leaf_command,
    help_text,
    run_into_closed_pipe,
    run_tool,
)
from tests.support.net import free_port, wait_http
from tests.support.paths import VENV_BIN


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return run_tool("tripkey-issuer", *args, env=env, cwd=cwd)


def _migrated(tmp_path: Path, name: str = "issuer.db") -> str:
    db = f"sqlite:///{tmp_path / name}"
    assert _cli("migrate", "--db", db).returncode == 0
    return db


# ----------------------------------------------------------------------------------------- tokens


def test_token_create_json_works_against_the_running_issuer(live_issuer: Any) -> None:
    db = live_issuer.settings.db_url
    result = _cli("token", "create", "--role", "responder", "--label", "on-call", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["role"] == "responder" and data["token_id"].startswith("tok_") and data["label"] == "on-call"
    assert data["database"] == {"url": db, "source": "--db"}  # which database, for scripts
    assert result.stderr == ""
    token = data["token"]
    assert live_issuer.request("GET", "/v1/devices", token).status_code == 200

    listed = json.loads(_cli("token", "list", "--db", db, "--json").stdout)["tokens"]
    assert [t["token_id"] for t in listed] == [data["token_id"]]
    assert all("token" not in t for t in listed)  # plaintext is never shown again

    revoked = _cli("token", "revoke", data["token_id"], "--db", db, "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at"]
    assert live_issuer.request("GET", "/v1/devices", token).status_code == 401


def test_token_create_plain_output_is_the_token_first_and_names_the_database(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    result = _cli("token", "create", "--role", "enroll", "--db", db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("tke_")
    assert result.stderr == f"tripkey-issuer: database {db} (from --db)\n"


def test_token_create_never_creates_a_database(tmp_path: Path) -> None:
    """The reported mistake: `token create` without serve's --db/--config made a new database under
    the default data_dir, and the token then got 401 from the running issuer."""
    env = {"TRIPKEY_DATA_DIR": str(tmp_path / "default-data")}
    result = _cli("token", "create", "--role", "enroll", env=env)
    line = assert_one_line_error(
        result,
        3,
        f"there is no issuer database at sqlite:///{tmp_path / 'default-data' / 'issuer.db'}",
        "data_dir set by TRIPKEY_DATA_DIR",
        "pass the --db URL or --config FILE that `tripkey-issuer serve` uses",
        "tripkey-issuer migrate",
    )
    assert line.startswith("tripkey-issuer: error: ")
    assert not (tmp_path / "default-data").exists()
    for argv in (["token", "list"], ["token", "revoke", "tok_x"]):
        assert _cli(*argv, env=env).returncode == 3
    assert not (tmp_path / "default-data").exists()
    # The exit code is in the help, with the fix.
    assert "3    no usable database" in help_text("tripkey-issuer")


def test_a_database_without_the_schema_or_behind_it_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # `touch issuer.db`: an SQLite file without any table
    assert_one_line_error(
        _cli("token", "list", "--db", str(empty)), 3, "holds no Tripkey issuer schema", "migrate"
    )
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("this is not a database, it is a shopping list\n" * 20)
    assert_one_line_error(_cli("token", "list", "--db", str(not_sqlite)), 1, "cannot open the database")

    from issuer.db import create_db_engine, downgrade, upgrade

    old = tmp_path / "old.db"
    engine = create_db_engine(f"sqlite:///{old}")
    upgrade(engine)
    downgrade(engine, "0001")
    engine.dispose()
    assert_one_line_error(
        _cli("token", "list", "--db", str(old)), 3, "revision 0001", "run `tripkey-issuer migrate`"
    )


def test_a_plain_path_as_db_is_an_sqlite_file_relative_to_where_you_are(tmp_path: Path) -> None:
    """`--db issuer.db` is a file path, made absolute (an SQLAlchemy URL parse error before)."""
    work = tmp_path / "work"
    work.mkdir()
    migrated = _cli("migrate", "--db", "issuer.db", "--json", cwd=work)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["database"] == {
        "url": f"sqlite:///{work / 'issuer.db'}",
        "source": "--db",
    }
    assert (work / "issuer.db").is_file()
    # The same file by absolute path, from anywhere.
    created = _cli("token", "create", "--role", "enroll", "--db", str(work / "issuer.db"), cwd=tmp_path)
    assert created.returncode == 0, created.stderr


@pytest.mark.parametrize(
    ("db", "phrase"),
    [
        ("postgres:/tripkey", "is not a database URL"),
        ("mysql://u:hunter2@db/tripkey", "unsupported database 'mysql'"),
        ("sqlite://", "names no file"),
    ],
)
def test_a_malformed_db_url_is_one_line_exit_2(tmp_path: Path, db: str, phrase: str) -> None:
    # Settings are validated alike for every command: each URL through one, one URL through all.
    every = (["token", "list"], ["migrate"], ["serve"], ["check"])
    for argv in every if db.startswith("mysql") else every[:1]:
        line = assert_one_line_error(_cli(*argv, "--db", db), 2, phrase, "sqlite:///PATH")
        assert "hunter2" not in line


def test_unknown_role_and_bad_config_are_clear_errors(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    bad_role = _cli("token", "create", "--role", "admin", "--db", db)
    assert bad_role.returncode == 2
    assert "invalid choice: 'admin'" in bad_role.stderr and "enroll" in bad_role.stderr
    device_role = _cli("token", "create", "--role", "device", "--db", db)
    assert device_role.returncode == 2 and "invalid choice" in device_role.stderr

    config = tmp_path / "issuer.toml"
    config.write_text("colour = 'blue'\n")
    bad_config = _cli("token", "create", "--role", "enroll", "--config", str(config), "--db", db)
    assert_one_line_error(bad_config, 2, "unknown key 'colour'", str(config))

    missing = _cli("token", "revoke", "tok_nope", "--db", db, "--json")
    assert_json_error(missing, 1, "no token with id 'tok_nope' (see `tripkey-issuer token list --all`)")

    unreachable = _cli("migrate", "--db", "postgresql://nobody@127.0.0.1:9/none")
    assert_one_line_error(
        unreachable, 1, "cannot open the database postgresql+psycopg://nobody@127.0.0.1:9/none"
    )


def test_errors_with_json_are_json_on_stderr_too(tmp_path: Path) -> None:
    result = _cli("token", "list", "--json", env={"TRIPKEY_DATA_DIR": str(tmp_path)})
    error = assert_json_error(result, 3, "there is no issuer database")
    assert error["error"]["code"] == "no_database"
    bad = _cli("ingest-secret", "create", "--name", "no spaces please", "--json")
    assert_json_error(bad, 2, "--name must be")
    # Usage errors found by argparse are JSON too when --json was asked for.
    usage = _cli("token", "create", "--role", "admin", "--json")
    assert_json_error(usage, 2, "invalid choice: 'admin'")


# ----------------------------------------------------------------------------------------- sinks


def test_a_sink_missing_a_required_key_is_found_before_anything_runs(tmp_path: Path) -> None:
    """Before: `config show` said the config was fine and `serve` failed after migrating."""
    config = tmp_path / "issuer.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[[sinks]]\ntype = "webhook"\nname = "soar"\n'
        'url = "https://soar.example.com/hook"\n'
    )
    for argv in (["config", "show"], ["serve"], ["check"]):
        assert_one_line_error(
            _cli(*argv, "--config", str(config)), 2, str(config), "sink 'soar': missing required key 'secret'"
        )
    assert not (tmp_path / "data").exists()  # nothing was created or migrated


def test_config_show_hides_secrets(tmp_path: Path) -> None:
    config = tmp_path / "issuer.toml"
    config.write_text(
        "db_url = 'postgresql://tk:hunter2@db/tripkey'\n"
        "[[sinks]]\ntype = 'slack'\nname = 'ops'\nwebhook_url = 'https://hooks.slack.com/services/T/B/SECRET'\n"
    )
    result = _cli("config", "show", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "SECRET" not in result.stdout
    assert json.loads(result.stdout)["sinks"][0]["name"] == "ops"


# ----------------------------------------------------------------------------------------- serve


def test_serve_runs_the_issuer(tmp_path: Path, moto_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "tripkey-issuer"),
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 'issuer.db'}",
            "--listen",
            f"127.0.0.1:{port}",
            "--aws-endpoint",
            moto_url,
            "--poll-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TRIPKEY_DATA_DIR": str(tmp_path)},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)  # type: ignore[arg-type]
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
        assert health["ok"] is True
        assert requests.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()["info"]["title"]
        assert requests.get(f"http://127.0.0.1:{port}/docs", timeout=5).status_code == 200
        token = _cli("token", "create", "--role", "enroll", "--db", f"sqlite:///{tmp_path / 'issuer.db'}")
        raw = token.stdout.splitlines()[0]
        body = {"device_key": "k" * 40, "hostname": "h", "os": "linux"}
        enrolled = requests.post(
            f"http://127.0.0.1:{port}/v1/enroll",
            json=body,
            headers={"Authorization": f"Bearer {raw}"},
            timeout=10,
        )
        assert enrolled.status_code == 200, enrolled.text
        device = enrolled.json()
        minted = requests.post(
            f"http://127.0.0.1:{port}/v1/devices/{device['device_id']}/credentials",
            json={"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"},
            headers={"Authorization": f"Bearer {device['device_token']}"},
            timeout=30,
        )
        assert minted.status_code == 201, minted.text
        # While it runs, its port is busy: a second serve says so (exit 4) and touches nothing.
        second = _cli("serve", "--db", str(tmp_path / "other.db"), "--listen", f"127.0.0.1:{port}")
        assert_one_line_error(
            second, 4, f"127.0.0.1:{port} is already in use", "another tripkey-issuer", "--listen"
        )
        assert not (tmp_path / "other.db").exists()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises SIGTERM (systemd counts that as a clean stop).
    assert proc.returncode in (0, -15), output
    assert "Application shutdown complete" in output
    assert f"database sqlite:///{tmp_path / 'issuer.db'} (from --db)" in output
    # Neither tokens nor the canary's secret ever reach the log.
    assert raw not in output and device["device_token"] not in output
    assert minted.json()["secret_access_key"] not in output
    assert f"issued credential {minted.json()['credential_id']}" in output  # logging was on


def test_serve_on_a_port_in_use_is_exit_4(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _cli("serve", "--db", str(tmp_path / "i.db"), "--listen", f"127.0.0.1:{port}")
    assert_one_line_error(
        result, 4, f"127.0.0.1:{port} is already in use", "choose another address with --listen"
    )
    assert not (tmp_path / "i.db").exists()  # the address is checked before the database is touched


def test_serve_with_bad_settings_exits_2_without_traceback(tmp_path: Path) -> None:
    result = _cli("serve", "--db", f"sqlite:///{tmp_path / 'i.db'}", "--listen", "everywhere")
    assert_one_line_error(result, 2, "HOST:PORT")


def test_serve_with_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = _cli(
        "serve", "--db", "postgresql://nobody@127.0.0.1:9/none", "--listen", f"127.0.0.1:{free_port()}"
    )
    assert_one_line_error(result, 1, "cannot open the database postgresql+psycopg://nobody@127.0.0.1:9/none")


# ----------------------------------------------------------------------------------------- check


def test_check_passes_on_a_good_setup_and_changes_nothing(tmp_path: Path, moto_url: str) -> None:
    db = tmp_path / "issuer.db"
    args = ["--db", str(db), "--aws-endpoint", moto_url, "--listen", f"127.0.0.1:{free_port()}"]
    result = _cli("check", *args, "--sqs-queue-url", "https://sqs.example/q", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    by_check = {r["check"]: r for r in report["checks"]}
    assert report["ok"] is True
    assert set(by_check) == {"settings", "database", "listen", "aws", "detection", "fingerprint"}
    assert by_check["fingerprint"]["status"] == "ok"  # moto's account is on no list of known canaries
    assert by_check["database"]["status"] == "warn" and "will create it" in by_check["database"]["message"]
    assert "AWS account 123456789012" in by_check["aws"]["message"]
    assert not db.exists()  # check never creates the database

    assert _cli("migrate", "--db", str(db)).returncode == 0
    text = _cli("check", *args)
    assert text.returncode == 0, text.stdout
    assert (
        f"OK    database   sqlite:///{db} (from --db) is reachable, schema at revision {head_revision()}"
        in text.stdout
    )
    assert text.stdout.rstrip().endswith("serve has what it needs")


def test_check_fails_on_what_serve_would_trip_over(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens there once closed
    result = _cli(
        "check",
        "--db",
        "postgresql://nobody@127.0.0.1:9/none",
        "--aws-endpoint",
        f"http://127.0.0.1:{closed}",
        "--poll-interval",
        "0",
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAIL  database") and "cannot open" in line for line in lines)
    assert any(
        line.startswith("FAIL  aws") and "Could not connect to the endpoint URL" in line for line in lines
    )
    assert any(line.startswith("FAIL  detection") and "no detection source" in line for line in lines)
    assert lines[-1] == "3 check(s) failed"


def test_checks_are_a_list_that_is_easy_to_extend(tmp_path: Path) -> None:
    from issuer.checks import CHECKS, FAIL, OK, CheckContext, CheckResult, run_checks
    from issuer.settings import load_settings

    def fingerprint(ctx: CheckContext) -> list[CheckResult]:
        return [CheckResult("fingerprint", OK, f"prefix {ctx.settings.minting.name_prefix}")]

    def broken(ctx: CheckContext) -> list[CheckResult]:
        raise RuntimeError("a bug in a check")

    settings = load_settings(env={}, overrides={"data_dir": str(tmp_path)})
    results = run_checks(CheckContext(settings), [("fingerprint", fingerprint), ("broken", broken)])
    assert [(r.check, r.status) for r in results] == [("fingerprint", OK), ("broken", FAIL)]
    assert "a bug in a check" in results[1].message
    assert [name for name, _ in CHECKS][:2] == ["settings", "database"]


# ----------------------------------------------------------------------------------------- output


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`tripkey-issuer token list --json | head -0`: no BrokenPipeError traceback, exit 141."""
    db = _migrated(tmp_path)
    code, err = run_into_closed_pipe("tripkey-issuer", "config", "show", "--db", db, "--json")
    assert (code, err) == (141, "")
    code, err = run_into_closed_pipe("tripkey-issuer", "token", "list", "--db", db, "--all", "--json")
    assert (code, err) == (141, "")


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    top = help_text("tripkey-issuer")  # the console script once; each command's help through main()
    for line in ("0    success", "2    usage or configuration error", "4    serve: cannot listen", "141  "):
        assert line in top
    commands = every_leaf_command(build_parser())
    assert (
        ("check",) in commands and ("token", "revoke") in commands and ("ingest-secret", "create") in commands
    )
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0 and "usage: tripkey-issuer" in text and "examples:" in text, command
        assert f"tripkey-issuer {' '.join(command)} " in text.split("examples:")[1], command


@pytest.mark.postgres
def test_migrate_on_postgresql(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    first = _cli("migrate", "--db", plain, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["revision"] == head_revision()
    again = _cli("migrate", "--db", postgres_url, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["revision"] == head_revision()
    listed = _cli("token", "list", "--db", plain, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["tokens"] == []
