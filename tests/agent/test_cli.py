"""`tripkey-agent` commands against a LIVE issuer + moto: plant-once, status, check, reads, unplant,
trigger (real AWS CLI), exit codes and error messages."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.events.model import ReadEvent
from tests.support.agent import SEED, make_users, seed
from tests.support.net import free_port
from tests.support.paths import REPO_ROOT, requires_root


@pytest.fixture
def setup(tmp_path: Path, live_issuer: Any, moto_url: str) -> dict[str, Any]:
    passwd, users = make_users(tmp_path)
    seed(users[0])
    config = tmp_path / "agent.toml"
    targets = "".join(f'[[target]]\npath = "{u.credentials}"\nowner = "{u.name}"\n' for u in users)
    config.write_text(
        f'issuer_url = "{live_issuer.url}"\nenroll_token = "{live_issuer.create_token("enroll")}"\n'
        f'state_dir = "{tmp_path / "state"}"\nall_users = false\npasswd_file = "{passwd}"\n'
        f'aws_endpoint_url = "{moto_url}"\nselfreport_socket = "{tmp_path / "sr.sock"}"\n' + targets
    )
    return {"config": str(config), "users": users, "state": tmp_path / "state", "issuer": live_issuer}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plant_once_status_and_unplant(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup["config"]
    alice = setup["users"][0]
    code, out, _ = run(capsys, "plant-once", "--config", cfg)
    assert code == 0, out
    code, out, _ = run(capsys, "status", "--config", cfg, "--json")
    data = json.loads(out)
    assert code == 0 and data["enrolled"] and data["device_id"].startswith("dev")
    assert [t["status"] for t in data["targets"]] == ["planted", "planted"]
    keys = [t["access_key_id"] for t in data["targets"]]
    assert len(set(keys)) == 2 and all(k for k in keys)
    secret = alice.credentials.read_text().split("aws_secret_access_key = ")[-1].split()[0]
    assert secret not in out
    assert data["service"]["running"] is False and data["sensor"] is None

    code, table, _ = run(capsys, "status", "--config", cfg)
    assert code == 0
    assert "PATH" in table and "ACCESS KEY ID" in table and keys[0] in table and keys[1] in table
    assert str(alice.credentials) in table and "never (long-term)" in table and "RENEWS" in table
    created = dt.datetime.fromisoformat(data["targets"][0]["created_at"].replace("Z", "+00:00"))
    renews = dt.datetime.fromisoformat(data["targets"][0]["renews_at"].replace("Z", "+00:00"))
    assert renews - created == dt.timedelta(days=90)
    assert "service:    not running" in table and secret not in table

    code, out, _ = run(capsys, "check", "--config", cfg, "--json")
    assert code == 0 and {t["state"] for t in json.loads(out)["targets"]} == {"ours"}

    code, out, _ = run(capsys, "unplant", "--config", cfg, "--json")
    results = json.loads(out)["results"]
    assert code == 0 and [(r["removed"], r["revoked"]) for r in results] == [(True, True), (True, True)]
    assert alice.credentials.read_bytes() == SEED
    code, out, _ = run(capsys, "check", "--config", cfg)
    assert code == 3 and "absent" in out


def test_unplant_without_issuer_says_keys_were_not_revoked(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = setup["config"]
    assert run(capsys, "plant-once", "--config", cfg)[0] == 0
    setup["issuer"].stop()
    code, out, _ = run(
        capsys,
        "unplant",
        "--config",
        cfg,
        "--issuer-url",
        f"http://127.0.0.1:{free_port()}",
        "--set",
        "issuer_timeout=2",
    )
    assert code == 4
    assert "NOT revoked" in out and "removed" in out
    assert setup["users"][0].credentials.read_bytes() == SEED
    # The exact commands that finish the job later: on this host, or by key / device from a responder.
    state = json.loads((setup["state"] / "state.json").read_text())
    keys = [state["targets"][path]["access_key_id"] for path in sorted(state["targets"])]
    assert len(keys) == 2
    assert "  sudo tripkey-agent unplant   # on this host, once the issuer is reachable" in out
    assert f"  tripkey credentials revoke {' '.join(keys)}   # with a responder token" in out
    assert f"  tripkey devices retire {state['device_id']}   # if this host is being offboarded" in out


def test_conflict_gives_exit_3(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    alice = setup["users"][0]
    seed(alice, b"[prod-backup]\naws_access_key_id = AKIAFOREIGN\naws_secret_access_key = z\n")
    code, out, _ = run(capsys, "plant-once", "--config", setup["config"])
    assert code == 3 and "conflict" in out


def test_trigger_uses_the_canary_with_the_aws_cli(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = setup["config"]
    alice = setup["users"][0]
    assert run(capsys, "plant-once", "--config", cfg)[0] == 0
    code, out, err = run(capsys, "trigger", "--config", cfg, "--target", str(alice.credentials), "--json")
    # The session's moto server allows every call, so the canary's deny is not in effect: exit 7
    # (tests/e2e/test_selftest_e2e.py runs the trigger against a moto that enforces IAM).
    assert code == 7, err
    report = json.loads(out)
    state = json.loads((setup["state"] / "state.json").read_text())
    planted = state["targets"][str(alice.credentials)]
    assert report["used"] is True and report["credential_id"] == planted["credential_id"]
    assert report["outcome"] == "not_denied" and json.loads(err)["exit_code"] == 7
    assert json.loads(err)["error"]["code"] == "not_denied"
    assert report["identity"]["Arn"].startswith("arn:aws:iam::")
    assert report["selftest_id"]
    code, out, err = run(capsys, "trigger", "--config", cfg, "--target", "/nowhere/credentials")
    assert code == 5 and "no Tripkey credential is planted in /nowhere/credentials" in err


def test_trigger_without_aws_cli(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "plant-once", "--config", setup["config"])[0] == 0
    monkeypatch.setattr("agent.trigger.find_aws_cli", lambda: None)
    code, _, err = run(capsys, "trigger", "--config", setup["config"])
    assert code == 6 and "AWS CLI (`aws`) is not installed" in err


def test_trigger_not_enrolled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "trigger", "--state-dir", str(tmp_path / "none"), "--issuer-url", "http://x:1")
    assert code == 5 and "not enrolled" in err


def test_reads_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.events.readlog import ReadLog

    state = tmp_path / "state"
    with ReadLog(state / "reads.db") as log:
        log.record(
            ReadEvent(
                time=dt.datetime.now(dt.UTC),
                path="/h/a/.aws/credentials",
                pid=77,
                sensor="fanotify",
                exe="/usr/bin/cat",
                cmdline=("cat", "x"),
                user="alice",
            ),
            "shell_utility",
        )
        log.record(
            ReadEvent(
                time=dt.datetime.now(dt.UTC) - dt.timedelta(days=3), path="/h/b", pid=78, sensor="fanotify"
            ),
            "unknown",
        )
    code, out, _ = run(capsys, "reads", "--state-dir", str(state), "--json")
    rows = json.loads(out)["reads"]
    assert code == 0 and [r["pid"] for r in rows] == [77]
    code, out, _ = run(capsys, "reads", "--state-dir", str(state), "--since", "7d", "--path", "/h/b")
    assert code == 0 and "78" in out and "/usr/bin/cat" not in out
    code, _, err = run(capsys, "reads", "--state-dir", str(state), "--since", "yesterday")
    assert code == 2 and "invalid --since" in err


def test_status_before_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--state-dir", str(tmp_path / "fresh"))
    assert code == 0 and "enrolled:   NO" in out and "targets:    none planted" in out


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("all_user = true\n")
    code, _, err = run(capsys, "status", "--config", str(bad))
    assert code == 2 and "unknown configuration key 'all_user'" in err
    code, _, err = run(capsys, "plant-once", "--state-dir", str(tmp_path / "s"))
    assert code == 2 and "issuer_url is not set" in err


def test_plant_once_refuses_while_service_holds_the_state(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.state import DirLock

    with DirLock(setup["state"]):
        code, _, err = run(capsys, "unplant", "--config", setup["config"])
    assert code == 1 and "another tripkey-agent" in err


def test_plant_once_with_a_refused_enroll_token(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "plant-once", "--config", setup["config"], "--set", 'enroll_token="wrong"')
    assert code == 1 and "refused the enrollment token" in err


def test_help_documents_exit_codes_and_module_entry() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0
    for word in ("run", "status", "reads", "unplant", "plant-once", "check", "trigger", "tray", "exit codes"):
        assert word in proc.stdout
    sub = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert "--config" in sub.stdout and "--json" in sub.stdout


def test_reads_opens_the_log_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.events.readlog import ReadLog

    state = tmp_path / "state"
    with ReadLog(state / "reads.db") as log:
        log.record(ReadEvent(time=dt.datetime.now(dt.UTC), path="/p", pid=5, sensor="fanotify"), "unknown")
    os.chmod(state / "reads.db", 0o400)  # a write would fail
    before = (state / "reads.db").stat().st_mtime_ns
    code, out, err = run(capsys, "reads", "--state-dir", str(state), "--json")
    assert code == 0, err
    assert len(json.loads(out)["reads"]) == 1
    assert (state / "reads.db").stat().st_mtime_ns == before


def test_unplant_revokes_at_the_enrolled_issuer_even_without_issuer_url(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, "plant-once", "--config", setup["config"])[0] == 0
    text = Path(setup["config"]).read_text()
    bare = tmp_path / "bare.toml"
    bare.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith(("issuer_url", "enroll")))
    )
    code, out, err = run(capsys, "unplant", "--config", str(bare), "--json")
    assert code == 0, err
    assert [r["revoked"] for r in json.loads(out)["results"]] == [True, True]


@pytest.mark.parametrize(
    "command", ["run", "status", "reads", "unplant", "plant-once", "check", "trigger", "tray"]
)
def test_every_command_has_help_with_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "--config" in out and "exit codes:" in out
    scripted = command not in ("run", "tray")  # a service and a GUI have no output to parse
    assert ("--json" in out.split("exit codes:")[0]) is scripted


def test_errors_are_json_with_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A script that asked for --json gets the error as one JSON object on stderr, and on stdout."""
    bad = tmp_path / "bad.toml"
    bad.write_text("all_user = true\n")
    code, out, err = run(capsys, "status", "--json", "--config", str(bad))
    assert code == 2 and "unknown configuration key 'all_user'" in json.loads(err)["error"]["message"]
    assert json.loads(out) == json.loads(err) == {"error": json.loads(err)["error"], "exit_code": 2}
    assert json.loads(err)["error"]["code"] == "config_error"
    code, out, err = run(capsys, "status", "--config", str(bad))
    assert code == 2 and err.startswith("tripkey-agent: configuration error: unknown configuration key")
    with pytest.raises(SystemExit) as usage:  # argparse's own usage errors, as JSON when --json is given
        main(["reads", "--limit", "many", "--json"])
    out, err = capsys.readouterr()
    assert usage.value.code == 2 and "invalid int value: 'many'" in json.loads(err)["error"]["message"]
    assert json.loads(out) == json.loads(err)
    code, out, err = run(capsys, "unplant", "--json", "--state-dir", str(tmp_path / "s"), "--set", "x=1")
    assert code == 2 and json.loads(out)["exit_code"] == 2
    code, out, _ = run(capsys, "status", "--config", str(bad))
    assert code == 2 and out == ""  # without --json nothing goes to stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the state directory away")
def test_state_dir_of_another_user_is_refused_by_every_writer(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    setup["state"].mkdir(mode=0o755)
    os.chown(setup["state"], 23999, 23999)
    for command in ("plant-once", "unplant"):
        code, out, err = run(capsys, command, "--json", "--config", setup["config"])
        assert code == 1 and "owned by uid 23999" in json.loads(err)["error"]["message"], (command, err)
        assert json.loads(out)["exit_code"] == 1
    assert list(setup["state"].iterdir()) == []
    assert not any(
        u.credentials.exists() and b"prod-backup" in u.credentials.read_bytes() for u in setup["users"]
    )


def test_trigger_never_follows_a_users_symlink(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The trigger runs the AWS CLI as root: a user who swaps their planted file for a symlink to
    root's own credentials must not get root's keys used (or their file read) — refused, exit 1."""
    cfg = setup["config"]
    alice = setup["users"][0]
    assert run(capsys, "plant-once", "--config", cfg)[0] == 0
    planted = alice.credentials.read_bytes()
    roots = tmp_path / "root-credentials"  # root's: same profile name, root's (fake) key
    roots.write_bytes(planted.replace(b"aws_access_key_id = ", b"aws_access_key_id = AKIAROOTKEY"))
    os.chmod(roots, 0o600)
    alice.credentials.unlink()
    os.symlink(roots, alice.credentials)
    code, out, err = run(capsys, "trigger", "--config", cfg, "--target", str(alice.credentials), "--json")
    assert (
        code == 1 and "symlink" in json.loads(err)["error"]["message"] and json.loads(out)["exit_code"] == 1
    )
    assert "AKIAROOTKEY" not in out + err
    # A file whose profile is no longer the planted canary (e.g. the user's own key) is not used either.
    alice.credentials.unlink()
    seed(alice, planted.replace(b"aws_access_key_id = ", b"aws_access_key_id = AKIAUSERREAL"))
    code, _, err = run(capsys, "trigger", "--config", cfg, "--target", str(alice.credentials))
    assert code == 1 and "not the planted canary" in err


def _sensor_args(tmp_path: Path, *extra: str) -> list[str]:
    target = f'target=[{{path="{tmp_path}/c", owner="root"}}]'
    return [
        "sensors",
        "--json",
        "--state-dir",
        str(tmp_path / "s"),
        "--set",
        "all_users=false",
        "--set",
        target,
        *extra,
    ]


@requires_root
def test_sensors_command_says_what_auto_picks_and_proves_it_live(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = run(capsys, *_sensor_args(tmp_path, "--live"))
    report = json.loads(out)
    assert code == 0 and report["pick"] == "ebpf" and "strongest" in report["reason"]
    assert report["sensors"]["ebpf"] is None  # available here
    assert report["live"]["ok"] and report["live"]["read"]["exe"].endswith("/cat")


def test_sensors_command_names_what_is_missing_for_an_explicit_sensor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = run(capsys, *_sensor_args(tmp_path, "--set", "sensor=eventlog"))
    report = json.loads(out)
    assert code == 1 and report["pick"] is None and "exists only on Windows" in report["reason"]
