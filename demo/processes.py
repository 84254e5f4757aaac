"""The demo's process plumbing: numbered progress lines, signals, child processes in their own
groups (all stopped at the end, whatever happened), free ports and waiting."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP while the demo runs; `signum` gives the exit code 128 + signum."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_handled(handler: Any) -> Iterator[None]:
    """Install `handler` for SIGINT/SIGTERM/SIGHUP for the block (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, handler)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        # A signal ignored on purpose (`nohup`, a background job) stays ignored; one handled outside
        # Python (getsignal() is None) cannot be restored, so it is left alone.
        if signal.getsignal(sig) not in (signal.SIG_IGN, None)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def raise_interrupted(signum: int, _frame: Any) -> None:
    raise DemoInterrupted(signum)


class Steps:
    """Prints numbered progress lines with the elapsed time."""

    def __init__(self, quiet: bool = False) -> None:
        self.start = time.monotonic()
        self.count = 0
        self.quiet = quiet

    def step(self, text: str) -> None:
        self.count += 1
        self.say(f"[{self.count}] {text}")

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"{time.monotonic() - self.start:6.1f}s  {text}", flush=True)

    def detail(self, text: str) -> None:
        if not self.quiet:
            print(f"{'':8}    {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """A console script of this installation (same venv as this interpreter), else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise DemoError(f"`{name}` is not installed (run `make demo`, which installs everything)")
    return found


def wait_until(check: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise DemoError(f"{what}: a demo process exited early (code {proc.returncode})")
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


class Processes:
    """Starts child processes in their own process groups and always stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        # The children run in their own sessions, so a terminal's Ctrl-C never reaches them: only
        # this method stops them. A second Ctrl-C or a SIGTERM must not cut it short (it is bounded
        # by the SIGKILL below), or moto, the issuer and the agent would outlive the demo.
        with signals_handled(signal.SIG_IGN):
            self._stop_all()

    def _stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tripkey-demo-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
