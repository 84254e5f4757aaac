"""tools/typecheck.py fails on a type error, and each OS pass sees that OS's code and library.

The real passes over the project run in `make test` (before pytest); these tests prove the runner
would catch a violation rather than pass vacuously.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tools import typecheck

# `if WINDOWS:` is dead code on Linux and live on Windows, exactly as agent/osflags.py's flag is.
PLATFORM_CODE = """
import sys

WINDOWS = sys.platform == "win32"


def lock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)


def policy() -> int:
    if WINDOWS:
        import winreg

        return winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, 42)  # wrong: the sub-key must be a str
    return 0
"""


def _check(tmp_path: Path, platform: str, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sample.py"
    path.write_text(source)
    argv = typecheck.PASSES[platform].command([str(path)])
    argv += ["--cache-dir", str(tmp_path / "cache"), "--no-incremental", "--config-file", "/dev/null"]
    return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)


def test_a_type_error_fails_the_check(tmp_path: Path) -> None:
    result = _check(tmp_path, "linux", "def f(x: int) -> str:\n    return x\n")
    assert result.returncode == 1, result.stdout
    assert "Incompatible return value type" in result.stdout


def test_each_os_pass_checks_that_os(tmp_path: Path) -> None:
    linux = _check(tmp_path, "linux", PLATFORM_CODE)
    assert linux.returncode == 0, linux.stdout  # fcntl exists, the winreg branch is dead here
    windows = _check(tmp_path, "win32", PLATFORM_CODE)
    assert windows.returncode == 1
    assert 'Module has no attribute "flock"' in windows.stdout  # no fcntl on Windows
    assert "OpenKey" in windows.stdout  # the Windows-only branch is type-checked there


def test_unknown_pass_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert typecheck.main(["beos"]) == 2
    assert "unknown pass 'beos'" in capsys.readouterr().err


def test_darwin_pass_leaves_out_linux_kernel_sensors() -> None:
    darwin = typecheck.PASSES["darwin"].targets
    assert "agent/sensors/_eslogger.py" in darwin and "agent/selfreport/server.py" in darwin
    assert not [t for t in darwin if t.startswith("agent/sensors/_fanotify")]
