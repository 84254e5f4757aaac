"""Helpers for the self-report socket tests: clients as other local users, raw requests."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ALICE_UID = 23101
BOB_UID = 23102
MALLORY_UID = 23103


@contextlib.contextmanager
def public_socket_dir() -> Iterator[Path]:
    """A directory every local user can reach (pytest's tmp_path is 0700 root): sockets go here."""
    path = Path("/tmp") / f"tk-selfreport-{secrets.token_hex(4)}"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def raw_request(socket_path: Path, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` as is; the agent's answer line (b"" if it closed without one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        with contextlib.suppress(OSError):  # the agent may answer and close before we are done
            sock.sendall(data)
        answer = b""
        with contextlib.suppress(OSError):
            while b"\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer


def run_as(uid: int, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` in this interpreter as `uid` (gid the same, no groups). Needs root.

    The interpreter and its stdlib may live under a 0700 /root, so the modules the code needs are
    imported first, as root; the child then drops to `uid` and runs `code` (read from stdin)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test speaks to the socket as other local users")
    preload = (
        "import sys, os, json, socket, time, threading, contextlib, struct, encodings.utf_8\n"
        "import agent.selfreport.server\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        "assert os.geteuid() != 0\nos.chdir('/')\n"
        "exec(compile(sys.stdin.read(), '<as-other-user>', 'exec'))"
    )
    return subprocess.run(
        [sys.executable, "-c", preload],
        input=code,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )


def start_as(uid: int, code: str) -> subprocess.Popen[str]:
    """Like run_as, in the background; read its output with communicate()."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test speaks to the socket as other local users")
    program = (
        "import sys, os, json, socket, time, threading, contextlib, encodings.utf_8\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        "os.chdir('/')\n" + code
    )
    return subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
