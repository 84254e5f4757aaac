"""`tripkey-agent` for the operator: it checks what it needs before enrolling anything, says "run as
root" when that is the problem, warns about a world-readable enrollment token, stays quiet into a
closed pipe and shows examples in every help."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import build_parser, main
from tests.support.agent import make_users
from tests.support.aws import inspector
from tests.support.cli import (
    assert_one_line_error,
    every_leaf_command,
    help_text,
    run_agent_as_user,
    run_into_closed_pipe,
    run_tool,
)
from tests.support.paths import requires_root

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root-only), owned by root."""
    path = Path(tempfile.mkdtemp(prefix="tripkey-operator-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(directory: Path, issuer: Any, users: list[Any], passwd: Path, state: Path) -> Path:
    config = directory / "agent.toml"
    targets = "".join(f'[[target]]\npath = "{u.credentials}"\nowner = "{u.name}"\n' for u in users)
    config.write_text(
        f'issuer_url = "{issuer.url}"\nenroll_token = "{issuer.create_token("enroll")}"\n'
        f'state_dir = "{state}"\nall_users = false\npasswd_file = "{passwd}"\n' + targets
    )
    config.chmod(0o600)
    return config


@requires_root
def test_plant_once_as_an_ordinary_user_says_run_as_root_and_enrolls_nothing(
    shared_dir: Path, live_issuer: Any, moto_url: str
) -> None:
    passwd, users = make_users(shared_dir)
    passwd.chmod(0o644)
    config = _config(shared_dir, live_issuer, users, passwd, shared_dir / "state")
    os.chown(config, NOBODY, NOBODY)  # readable by the user who runs it, by nobody else

    result = run_agent_as_user(NOBODY, NOBODY, "plant-once", "--config", str(config))
    assert_one_line_error(
        result,
        1,
        f"the state directory {shared_dir / 'state'} cannot be created ({shared_dir} is not writable)",
        "planting into files of other users (alice, bob) needs root",
        "run as root (sudo tripkey-agent plant-once ...)",
        "nothing was enrolled or planted",
    )
    # Nothing happened anywhere: no device, no key in AWS, no state, no file touched.
    assert live_issuer.request("GET", "/v1/devices", live_issuer.create_token()).json()["devices"] == []
    assert inspector(moto_url, "iam").list_users()["Users"] == []
    assert not (shared_dir / "state").exists()
    assert not any(u.credentials.exists() for u in users)

    as_json = run_agent_as_user(NOBODY, NOBODY, "plant-once", "--config", str(config), "--json")
    assert as_json.returncode == 1 and "run as root" in json.loads(as_json.stderr)["error"]["message"]
    # `run` checks the same before it enrolls.
    service = run_agent_as_user(NOBODY, NOBODY, "run", "--config", str(config))
    assert_one_line_error(service, 1, "run as root (sudo tripkey-agent run ...)")


@requires_root
def test_a_root_only_config_read_by_a_user_says_run_as_root(shared_dir: Path) -> None:
    config = shared_dir / "agent.toml"
    config.write_text('issuer_url = "https://tripkey.example.com"\nenroll_token = "tke_x"\n')
    config.chmod(0o600)  # root's, as MDM installs it
    result = run_agent_as_user(NOBODY, NOBODY, "status", "--config", str(config))
    assert_one_line_error(
        result,
        2,
        f"cannot read config file {config}: Permission denied",
        "it holds the enrollment token, so it is root-only: run as root",
    )


def test_a_world_readable_config_holding_the_enroll_token_gets_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'enroll_token = "tke_x"\nstate_dir = "{tmp_path / "state"}"\n')
    config.chmod(0o644)
    loose = run_tool("tripkey-agent", "status", "--config", str(config))
    assert loose.returncode == 0, loose.stderr
    assert f"config file {config} holds the enrollment token and every local user can read it" in loose.stderr
    assert f"(mode -rw-r--r--): chmod 600 {config}" in loose.stderr
    config.chmod(0o600)
    tight = run_tool("tripkey-agent", "status", "--config", str(config))
    assert tight.returncode == 0 and tight.stderr == ""
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')  # no token: nothing to protect
    config.chmod(0o644)
    assert run_tool("tripkey-agent", "status", "--config", str(config)).stderr == ""


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`tripkey-agent status --json | head -0`: no BrokenPipeError traceback, exit 141."""
    code, err = run_into_closed_pipe("tripkey-agent", "status", "--json", "--state-dir", str(tmp_path / "s"))
    assert (code, err) == (141, "")


def test_every_command_has_help_with_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    top = help_text("tripkey-agent")  # the console script once; each command's help through main()
    for line in (
        "7    trigger: the canary was NOT denied",
        "8    trigger: AWS could not be reached",
        "141  ",
    ):
        assert line in top
    for command in every_leaf_command(build_parser()):
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0 and "exit codes:" in text and "examples:" in text, command
        assert f"tripkey-agent {command[0]}" in text.split("examples:")[1], command
