"""Running the three console scripts as a user would, and asserting how they fail.

Every user mistake must end in one sentence on stderr (or one JSON object with --json) and the
documented exit code — never a Python traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.paths import VENV_BIN


def run_tool(
    tool: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120,
    clean_env: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`tool` (tripkey, tripkey-agent, tripkey-issuer) from the venv, with `env` on top of ours.

    `clean_env`: start from PATH and HOME only (no TRIPKEY_* of the developer, no test AWS keys).
    """
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ} if clean_env else dict(os.environ)
    return subprocess.run(
        [str(VENV_BIN / tool), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=cwd,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> str:
    """Exit `code`, one line on stderr holding every phrase, no traceback; return that line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def assert_json_error(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> dict[str, Any]:
    """With --json: the error is one JSON object on stderr (and the same on stdout), exit `code`:
    `{"error": {"code", "message"}, "exit_code"}` (docs/schema.md, "Errors")."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    error = json.loads(result.stderr)
    assert set(error) == {"error", "exit_code"} and set(error["error"]) == {"code", "message"}, error
    assert error["exit_code"] == code and isinstance(error["error"]["message"], str)
    assert isinstance(error["error"]["code"], str) and error["error"]["code"], error
    for phrase in phrases:
        assert phrase in error["error"]["message"], (phrase, error)
    assert json.loads(result.stdout) == error
    return dict(error)


def run_into_closed_pipe(tool: str, *args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run `tool` with its stdout a pipe whose reader is already gone (`tool ... | head -0`).

    Returns (exit code, stderr).
    """
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write gets EPIPE
    try:
        done = subprocess.run(
            [str(VENV_BIN / tool), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
            check=False,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


def help_text(tool: str, *command: str) -> str:
    done = run_tool(tool, *command, "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


def every_leaf_command(parser: Any, prefix: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path of an argparse parser (`("token", "create")`, ...)."""
    import argparse

    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(every_leaf_command(sub, (*prefix, name)))
            return found
    return [tuple(prefix)]


# Modules the agent imports lazily: loaded before the privileges are dropped, because the
# interpreter's own files (under root's home in this environment) are out of reach afterwards.
_AGENT_MODULES = (
    "agent.cli",
    "agent.service",
    "agent.runtime.preflight",
    "agent.planting.planter",
    "agent.reporting.uploader",
    "agent.events.readlog",
    "agent.status",
    "json",
    "encodings.idna",
)


def run_agent_as_user(
    uid: int, gid: int, *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`tripkey-agent ARGV` run by an ordinary user (uid/gid): its main(argv) in a child that drops
    root after importing the agent (setresgid/setresuid: real and effective ids, as sudo -u would)."""
    import sys

    script = (
        "import importlib, os, sys\n"
        f"for name in {_AGENT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "os.setgroups([])\n"
        f"os.setresgid({gid}, {gid}, {gid})\n"
        f"os.setresuid({uid}, {uid}, {uid})\n"
        "os.environ['HOME'] = '/nonexistent'\n"
        "from agent.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
        check=False,
    )
