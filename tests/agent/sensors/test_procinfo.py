"""Process context capture from /proc: real processes, a pidfd, exited ones, odd names and uids."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent.sensors import _procinfo as procinfo
from tests.support.paths import requires_root
from tests.support.sensors import NOBODY


@pytest.fixture
def sleeper() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "30"], cwd="/tmp")
    yield proc
    proc.kill()
    proc.wait()


def test_capture_live_child(sleeper: subprocess.Popen[bytes]) -> None:
    ctx = procinfo.capture(sleeper.pid)
    assert not ctx.gone and not ctx.verified  # no pidfd given
    assert ctx.exe == os.path.realpath("/usr/bin/sleep")
    assert ctx.cmdline == ("sleep", "30")
    assert ctx.uid == os.getuid() and ctx.user is not None
    assert ctx.ppid == os.getpid() and ctx.cwd == "/tmp"
    assert ctx.start_time is not None
    expected = dt.datetime.fromtimestamp(psutil.Process(sleeper.pid).create_time(), tz=dt.UTC)
    assert abs((ctx.start_time - expected).total_seconds()) < 1.5  # psutil's btime is whole seconds
    assert ctx.ancestors[0].pid == os.getpid()
    assert ctx.ancestors[0].exe == os.path.realpath(sys.executable)
    assert ctx.ancestors[-1].pid == 1
    chain = [a.pid for a in ctx.ancestors]
    assert len(chain) == len(set(chain))
    assert chain == _psutil_chain(os.getpid())


def _psutil_chain(pid: int) -> list[int]:
    chain = []
    proc: psutil.Process | None = psutil.Process(pid)
    while proc is not None and proc.pid != 0:
        chain.append(proc.pid)
        proc = proc.parent()
    return chain


def test_capture_through_pidfd_is_verified(sleeper: subprocess.Popen[bytes]) -> None:
    pidfd = os.pidfd_open(sleeper.pid)
    try:
        ctx = procinfo.capture(sleeper.pid, pidfd)
        assert ctx.verified and ctx.exe is not None
        sleeper.kill()
        sleeper.wait()  # reaped: the pid may now belong to anyone
        assert not procinfo.pidfd_alive(pidfd)
        gone = procinfo.capture(sleeper.pid, pidfd)
        assert gone.gone and gone.exe is None and gone.cmdline == ()
    finally:
        os.close(pidfd)


def test_capture_of_missing_pid_is_gone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    ctx = procinfo.capture(proc.pid)
    assert ctx.gone and ctx.ppid is None and ctx.ancestors == ()


def test_zombie_keeps_what_can_be_read() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        ctx = procinfo.capture(proc.pid)
        assert ctx.ppid == os.getpid() and ctx.uid == os.getuid()
        assert ctx.exe is None  # the mm is gone; never invented
    finally:
        proc.wait()


def test_odd_command_names_and_arguments(tmp_path: Path) -> None:
    odd = tmp_path / "we ird) (name"
    odd.symlink_to("/bin/sh")
    argv = [str(odd), "-c", "read line", "arg with space", "tab\targ", "", "non-utf8-\udcff", ""]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
    try:
        time.sleep(0.05)
        ctx = procinfo.capture(proc.pid)
        assert ctx.ppid == os.getpid()  # stat parsed despite ") (" in comm
        assert ctx.exe == os.path.realpath("/bin/sh")
        assert ctx.cmdline == tuple(argv)  # empty and undecodable arguments survive
    finally:
        proc.communicate(b"\n", timeout=10)


def test_parse_helpers_on_bad_input() -> None:
    assert procinfo._parse_stat(None) == (None, None)
    assert procinfo._parse_stat(b"garbage") == (None, None)
    assert procinfo._parse_stat(b"12 (a) b) S 34 " + b"0 " * 17 + b"777 0") == (34, 777)
    assert procinfo._parse_uid(b"Name:\tx\nUid:\t1000\t0\t0\t0\n") == 1000
    assert procinfo._parse_uid(b"Name:\tx\n") is None
    assert procinfo._parse_cmdline(b"a\0b\xff\0") == ("a", "b\udcff")
    assert procinfo._parse_cmdline(b"") == ()
    assert procinfo._parse_cmdline(b"a\0\0") == ("a", "")


def test_ancestors_stop_on_cycles_and_depth() -> None:
    assert procinfo.ancestors_of(None) == ()
    assert procinfo.ancestors_of(0) == ()
    chain = procinfo.ancestors_of(os.getpid(), max_depth=1)
    assert [a.pid for a in chain] == [os.getpid()]


@requires_root
def test_real_uid_of_an_unprivileged_process() -> None:
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sleep", "30"]
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 5
        ctx = procinfo.capture(proc.pid)
        while ctx.exe != "/usr/bin/sleep" and time.monotonic() < deadline:  # until setpriv exec'd
            time.sleep(0.01)
            ctx = procinfo.capture(proc.pid)
        assert (ctx.uid, ctx.user) == (NOBODY, "nobody")
        assert ctx.ancestors[0].uid == 0
    finally:
        proc.kill()
        proc.wait()


def test_psutil_variant_agrees(sleeper: subprocess.Popen[bytes]) -> None:
    fast = procinfo.capture(sleeper.pid)
    slow = procinfo.capture_with_psutil(sleeper.pid)
    assert (slow.exe, slow.cmdline, slow.uid, slow.ppid, slow.cwd) == (
        fast.exe, fast.cmdline, fast.uid, fast.ppid, fast.cwd,
    )  # fmt: skip
    assert [a.pid for a in slow.ancestors] == [a.pid for a in fast.ancestors]
    assert procinfo.capture_with_psutil(2**22 + 1).gone
