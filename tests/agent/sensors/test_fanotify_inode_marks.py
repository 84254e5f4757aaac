"""The fanotify sensor marks the planted file's inode (real kernel, root).

Every name of the file is watched — a hard link, a renamed (and renamed back) ~/.aws, a bind mount,
a reopen through /proc/self/fd of an O_PATH handle — and nothing else in the directory is ever held
or reported, even while every capture is stalled. A replace by the agent is marked before the
rename; stale marks of replaced inodes do not accumulate.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sensors import _procinfo as procinfo
from tests.support.paths import requires_root
from tests.support.sensors import FanCollector, fan_atomic_replace, fan_plant

pytestmark = requires_root

SYSTEM_PYTHON = "/usr/bin/python3"


def _run(argv: list[str]) -> int:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return proc.pid


def _only_event(collector: FanCollector, pid: int, target: Path, *, context: bool = True) -> None:
    assert collector.wait_for(lambda evs: any(e.pid == pid for e in evs), 5), "read not recorded"
    time.sleep(0.05)
    (event,) = collector.for_pid(pid)
    assert event.path == str(target) and event.access == "open", event
    if context:  # notification mode reads /proc after the fact: a reader that is gone has none
        assert event.exe is not None and event.cmdline, event


@pytest.mark.parametrize("notify", [False, True], ids=["permission", "notify"])
def test_read_through_a_hard_link_is_attributed(
    fan_home: Path, fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object],
    notify: bool,
) -> None:  # fmt: skip
    fan_sensor_factory([fan_target], fan_collector, notify=notify)
    elsewhere = fan_home / "innocent-looking"
    elsewhere.mkdir()
    link = elsewhere / "notes.txt"
    os.link(fan_target, link)
    pid = _run(["cat", str(link)])
    _only_event(fan_collector, pid, fan_target, context=not notify)
    if not notify:
        assert fan_collector.for_pid(pid)[0].cmdline == ("cat", str(link))


def test_read_through_a_renamed_directory_and_after_renaming_back_is_attributed(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector)
    aws = fan_target.parent
    hidden = aws.with_name(".aws-moved")
    os.rename(aws, hidden)
    try:
        away = _run(["cat", str(hidden / "credentials")])
        _only_event(fan_collector, away, fan_target)
        health = sensor.health()  # type: ignore[attr-defined]
        assert "still watched under its new name" in (health.error or ""), health
    finally:
        os.rename(hidden, aws)
    back = _run(["cat", str(fan_target)])
    _only_event(fan_collector, back, fan_target)
    assert sensor.health().healthy  # type: ignore[attr-defined]


def test_read_through_a_bind_mount_is_attributed(
    fan_home: Path, fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    fan_sensor_factory([fan_target], fan_collector)
    mountpoint = fan_home / "mnt"
    mountpoint.mkdir()
    # A private mount namespace (unshare -m): the bind mount cannot outlive the reader. unshare and
    # sh exec, so the pid that reads is the one we started.
    script = f"mount --bind {fan_target.parent} {mountpoint} && exec cat {mountpoint}/credentials"
    pid = _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    _only_event(fan_collector, pid, fan_target)
    assert fan_collector.for_pid(pid)[0].exe == "/usr/bin/cat"


@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="needs /usr/bin/python3")
def test_reopen_of_an_o_path_handle_through_proc_self_fd_is_attributed(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """O_PATH opens no file (no event); the reopen through /proc/self/fd/N is a real open: seen."""
    fan_sensor_factory([fan_target], fan_collector)
    code = (
        "import os\n"
        f"handle = os.open({str(fan_target)!r}, os.O_PATH)\n"
        "fd = os.open(f'/proc/self/fd/{handle}', os.O_RDONLY)\n"
        "assert os.read(fd, 100).startswith(b'[prod-backup]')\n"
    )
    pid = _run([SYSTEM_PYTHON, "-S", "-c", code])
    _only_event(fan_collector, pid, fan_target)


def test_other_files_in_the_directory_are_never_held_even_with_every_capture_stuck(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """~/.aws/config and friends are not marked at all: no event, no hold, no guard needed."""
    release = threading.Event()
    captured: list[int] = []

    def stuck(pid: int, pidfd: int | None) -> procinfo.ProcContext:
        captured.append(pid)
        release.wait(30)
        return procinfo.ProcContext(pid=pid, gone=True)

    config = fan_plant(fan_target.parent, "config", "[default]\nregion = eu-west-1\n")
    sensor = fan_sensor_factory([fan_target], fan_collector, capture=stuck, capture_workers=1, budget=5.0)
    try:
        cache = fan_target.parent / "sso" / "cache"
        for argv in (
            ["cat", str(config)],
            ["sh", "-c", f"echo x >> {config}"],  # a writer too
            ["mkdir", "-p", str(cache)],
            ["sh", "-c", f"echo {{}} > {cache}/token.json && cat {cache}/token.json"],
        ):
            started = time.monotonic()
            _run(argv)
            # A 5 s budget and a capture that never returns: any hold would show as seconds here.
            assert time.monotonic() - started < 1.0, f"{argv} was held"
        assert captured == [] and sensor.health().guard_answered == 0  # type: ignore[attr-defined]
    finally:
        release.set()


def test_new_version_is_marked_before_it_becomes_visible(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """Between watch_new_file and the rename, the temp file is already watched (as the target)."""
    sensor = fan_sensor_factory([fan_target], fan_collector)
    seen_before_rename: list[int] = []

    def before_replace(fd: int) -> None:
        sensor.watch_new_file(str(fan_target), fd)  # type: ignore[attr-defined]
        temp = os.readlink(f"/proc/self/fd/{fd}")
        seen_before_rename.append(_run(["cat", temp]))

    fan_atomic_replace(fan_target, "[prod-backup]\nversion = 2\n", before_replace)
    _only_event(fan_collector, seen_before_rename[0], fan_target)
    after = _run(["cat", str(fan_target)])
    _only_event(fan_collector, after, fan_target)


def _pins(target: Path) -> int:
    """O_PATH fds of this process on any version of the target (the marks' pins)."""
    count = 0
    for entry in os.scandir("/proc/self/fd"):
        try:
            link = os.readlink(entry.path)
        except OSError:
            continue
        count += link.removesuffix(" (deleted)") == str(target) or link.startswith(str(target.parent) + "/.")
    return count


def test_marks_of_replaced_versions_do_not_accumulate(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector)
    for version in range(20):
        fan_atomic_replace(
            fan_target,
            f"[prod-backup]\nversion = {version}\n",
            lambda fd: sensor.watch_new_file(str(fan_target), fd),  # type: ignore[attr-defined]
        )
        sensor.refresh([str(fan_target)])  # type: ignore[attr-defined]  (the watcher's call)
    marks = sensor._marks  # type: ignore[attr-defined]
    assert list(marks.inodes().values()) == [str(fan_target)]  # only the version at the path
    assert next(iter(marks.inodes()))[1] == os.stat(fan_target).st_ino
    assert _pins(fan_target) == 1
    # Even without refreshes in between, at most a few versions stay marked.
    for version in range(10):
        fan_atomic_replace(
            fan_target,
            f"[prod-backup]\nunrefreshed = {version}\n",
            lambda fd: sensor.watch_new_file(str(fan_target), fd),  # type: ignore[attr-defined]
        )
    assert 1 <= len(marks) <= 4 and _pins(fan_target) == len(marks)
    sensor.set_paths([])  # type: ignore[attr-defined]  (the target was retired: unplant)
    assert len(marks) == 0 and _pins(fan_target) == 0
    unwatched = _run(["cat", str(fan_target)])
    time.sleep(0.1)
    assert fan_collector.for_pid(unwatched) == []


def test_a_symlink_at_the_target_path_is_not_followed(
    fan_home: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """A user who points ~/.aws/credentials at another file must not get that file watched (held)."""
    victim = fan_plant(fan_home / "elsewhere", "victim")
    target = fan_home / ".aws" / "credentials"
    target.parent.mkdir()
    target.symlink_to(victim)
    sensor = fan_sensor_factory([target], fan_collector)
    health = sensor.health()  # type: ignore[attr-defined]
    assert not health.healthy and "symlink" in (health.error or ""), health
    reader = _run(["cat", str(victim)])
    time.sleep(0.1)
    assert fan_collector.for_pid(reader) == []
