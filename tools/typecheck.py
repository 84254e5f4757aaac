"""The type checker, once per operating system the code runs on (as watchdog does).

    python -m tools.typecheck            # every pass; exit status non-zero on any error
    python -m tools.typecheck win32      # one pass

mypy reads its settings from pyproject.toml. Each pass sets agent/osflags.py's flags (LINUX, MACOS,
WINDOWS, POSIX) to what that OS has, so mypy treats `if osflags.WINDOWS:` branches as live or dead
there, and `--platform` gives it that OS's standard library (winreg on win32, no fcntl, ...). The
Linux pass checks the whole project; the macOS and Windows passes check the whole agent but the
Linux kernel sensors, and the client, with imported modules read for their types but not reported
(their own OS pass reports them).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

FLAGS = ("LINUX", "MACOS", "WINDOWS", "POSIX")


# Modules that exist for Linux only (kernel interfaces); the other OS passes leave them out.
LINUX_ONLY = (
    "agent/sensors/_fanotify",
    "agent/sensors/_audit",
    "agent/sensors/_procinfo",
    "agent/sensors/_ebpf",
    "agent/sensors/_libbpf",
    "agent/runtime/supervisor",  # the deadman's supervisor process: fork, pidfd, prctl
)


def agent_modules(*, exclude: Sequence[str]) -> tuple[str, ...]:
    """Every agent module (as a path) but those whose path starts with one of `exclude`."""
    root = Path(__file__).resolve().parent.parent
    found = sorted(p.relative_to(root).as_posix() for p in (root / "agent").rglob("*.py"))
    return tuple(p for p in found if not p.startswith(tuple(exclude)))


@dataclasses.dataclass(frozen=True)
class Pass:
    platform: str
    true_flags: tuple[str, ...]
    targets: tuple[str, ...] = ()  # empty: the `files` of pyproject.toml, errors reported everywhere

    def command(self, targets: Sequence[str] | None = None) -> list[str]:
        argv = [sys.executable, "-m", "mypy", "--platform", self.platform]
        for flag in FLAGS:
            argv += ["--always-true" if flag in self.true_flags else "--always-false", flag]
        chosen = list(targets) if targets is not None else list(self.targets)
        if chosen:
            argv += ["--follow-imports", "silent", *chosen]
        return argv


PASSES = {
    "linux": Pass("linux", ("LINUX", "POSIX")),
    # The macOS agent runs everything of the agent but the Linux kernel sensors.
    "darwin": Pass("darwin", ("MACOS", "POSIX"), (*agent_modules(exclude=LINUX_ONLY), "server_api_client")),
    # The Windows agent: the same, with its service entry, Win32 sensor, pipe and ACL writers.
    "win32": Pass("win32", ("WINDOWS",), (*agent_modules(exclude=LINUX_ONLY), "server_api_client")),
}


def main(argv: Sequence[str]) -> int:
    names = list(argv) or list(PASSES)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        print(f"unknown pass {unknown[0]!r}; choose from {', '.join(PASSES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"== mypy, {name} pass", flush=True)
        if subprocess.run(PASSES[name].command(), check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"type check failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
