"""The eBPF sensor matches the planted file's inode, whatever name or path opens it (real kernel, root).

Hard links, a renamed (and renamed back) .aws directory, a bind mount, a /proc/self/fd/N re-open,
open_by_handle_at and io_uring are all attributed; another file of the same directory never is.
A planter's atomic replace is watched before the rename when it calls watch_file; a tmpfs target
checks the device-number encoding.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.sensors import _procinfo as procinfo
from agent.sensors._ebpf_records import identity_of_path, kernel_dev
from tests.support.ebpf import read_with
from tests.support.paths import requires_root
from tests.support.sensors import Collector, fan_plant

pytestmark = requires_root


SYSTEM_PYTHON = "/usr/bin/python3"
SensorFactory = Callable[..., object]


@pytest.fixture
def aws(fan_home: Path) -> tuple[Path, Path]:
    """(planted credentials, its neighbour config) in a world-readable ~/.aws."""
    target = fan_plant(fan_home / ".aws")
    neighbour = fan_plant(fan_home / ".aws", "config", "[default]\nregion = us-east-1\n")
    return target, neighbour


def _one_event(collector: Collector, pid: int, target: Path) -> None:
    assert collector.wait_for(lambda evs: any(e.pid == pid for e in evs), 10), collector.events
    (event,) = collector.for_pid(pid)
    assert event.path == str(target) and event.sensor == "ebpf", event


def _never_reported(collector: Collector, path: Path) -> None:
    time.sleep(1.2)  # a record would have been polled by now
    assert all(e.path != str(path) for e in collector.events)


def test_other_file_in_the_directory_is_never_reported(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, neighbour = aws
    ebpf_sensor_factory([target], fan_collector)
    for _ in range(3):
        read_with(["cat", str(neighbour)])
    control = read_with(["cat", str(target)])
    _one_event(fan_collector, control, target)
    _never_reported(fan_collector, neighbour)
    assert [e.pid for e in fan_collector.events] == [control]


def test_hard_link_elsewhere(
    aws: tuple[Path, Path], fan_home: Path, fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, _ = aws
    ebpf_sensor_factory([target], fan_collector)
    elsewhere = fan_home / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    link = elsewhere / "innocent.txt"
    os.link(target, link)
    pid = read_with(["cat", str(link)])
    _one_event(fan_collector, pid, target)
    assert fan_collector.for_pid(pid)[0].cmdline == ("cat", str(link))


def test_renamed_directory_and_renamed_back(
    aws: tuple[Path, Path], fan_home: Path, fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, _ = aws
    ebpf_sensor_factory([target], fan_collector)
    moved = fan_home / ".aws-moved"
    (fan_home / ".aws").rename(moved)
    try:
        first = read_with(["cat", str(moved / "credentials")])
    finally:
        moved.rename(fan_home / ".aws")
    second = read_with(["head", "-c", "5", str(target)])
    _one_event(fan_collector, first, target)
    _one_event(fan_collector, second, target)


@pytest.fixture
def bind_mount(fan_home: Path) -> Iterator[Callable[[Path], Path]]:
    mounted: list[Path] = []

    def mount(source: Path) -> Path:
        point = Path(tempfile.mkdtemp(prefix="tripkey-bind-", dir="/tmp"))
        point.chmod(0o755)
        subprocess.run(["mount", "--bind", str(source), str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)
        shutil.rmtree(point, ignore_errors=True)


def test_bind_mounted_directory(
    aws: tuple[Path, Path],
    fan_home: Path,
    bind_mount: Callable[[Path], Path],
    fan_collector: Collector,
    ebpf_sensor_factory: SensorFactory,
) -> None:
    target, _ = aws
    ebpf_sensor_factory([target], fan_collector)
    point = bind_mount(fan_home / ".aws")
    pid = read_with(["cat", str(point / "credentials")])
    _one_event(fan_collector, pid, target)


def test_reopen_through_proc_self_fd(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, _ = aws
    ebpf_sensor_factory([target], fan_collector)
    shell = read_with(["sh", "-c", f"exec 3<'{target}'; cat /proc/self/fd/3 >/dev/null"])
    assert fan_collector.wait_for(lambda evs: len(evs) >= 2, 10), fan_collector.events
    time.sleep(1.2)
    by_exe = {e.exe: e for e in fan_collector.events}
    assert len(fan_collector.events) == 2 and set(by_exe) == {"/usr/bin/dash", "/usr/bin/cat"}, by_exe
    assert by_exe["/usr/bin/dash"].pid == shell  # the redirection opened it by name
    reopen = by_exe["/usr/bin/cat"]  # the magic link reaches the same inode
    assert reopen.cmdline == ("cat", "/proc/self/fd/3") and reopen.ppid == shell
    assert reopen.ancestors[0].pid == shell and reopen.path == str(target)


HANDLE_READER = """
import ctypes, os, sys
class Handle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]
libc = ctypes.CDLL(None, use_errno=True)
path = sys.argv[1]
handle, mount_id = Handle(handle_bytes=128), ctypes.c_int()
if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(handle), ctypes.byref(mount_id), 0):
    raise OSError(ctypes.get_errno(), "name_to_handle_at")
mount_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
fd = libc.open_by_handle_at(mount_fd, ctypes.byref(handle), os.O_RDONLY)
if fd < 0:
    raise OSError(ctypes.get_errno(), "open_by_handle_at")
assert os.read(fd, 100).startswith(b"[prod-backup]")
"""


def test_open_by_handle_at(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, _ = aws
    sensor = ebpf_sensor_factory([target], fan_collector)
    # name_to_handle_at does not open the file: the only open of it is open_by_handle_at's
    pid = read_with([SYSTEM_PYTHON, "-c", HANDLE_READER, str(target)])
    _one_event(fan_collector, pid, target)
    assert fan_collector.for_pid(pid)[0].exe == os.path.realpath(SYSTEM_PYTHON)
    assert sensor.details()["hooks"]["syscalls/sys_exit_open_by_handle_at"] == "attached"  # type: ignore[attr-defined]


def test_io_uring_open_attributed_and_direct_open_counted(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory, iouring_open: Path
) -> None:
    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() != "0":
        pytest.skip("io_uring is disabled on this host (kernel.io_uring_disabled)")
    target, _ = aws
    sensor = ebpf_sensor_factory([target], fan_collector)
    pid = read_with([str(iouring_open), str(target)])
    _one_event(fan_collector, pid, target)
    event = fan_collector.for_pid(pid)[0]
    assert event.exe == str(iouring_open) and event.cmdline == (str(iouring_open), str(target))
    direct = read_with([str(iouring_open), str(target), "direct"])
    _never_reported_pid(fan_collector, direct)
    counters = sensor.details()["counters"]  # type: ignore[attr-defined]
    assert (counters["iouring_opens"], counters["iouring_direct_opens"]) == (1, 1), counters
    uncovered = sensor.details()["uncovered"]  # type: ignore[attr-defined]
    assert any("io_uring direct opens" in item for item in uncovered), uncovered


def _never_reported_pid(collector: Collector, pid: int) -> None:
    time.sleep(1.2)
    assert not collector.for_pid(pid)


def test_tmpfs_target_and_device_encoding(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    root_target, _ = aws
    shm = Path(tempfile.mkdtemp(prefix="tripkey-shm-", dir="/dev/shm"))
    try:
        shm.chmod(0o755)
        tmpfs_target = fan_plant(shm / ".aws")
        for path in (root_target, tmpfs_target):
            st = path.stat()
            # the kernel's s_dev, read from fdinfo + mountinfo, is the stat number re-encoded
            assert identity_of_path(path) == (kernel_dev(st.st_dev), st.st_ino)
        assert os.major(tmpfs_target.stat().st_dev) == 0  # an anonymous device: tmpfs
        ebpf_sensor_factory([root_target, tmpfs_target], fan_collector)
        on_root = read_with(["cat", str(root_target)])
        on_tmpfs = read_with(["cat", str(tmpfs_target)])
        _one_event(fan_collector, on_root, root_target)
        _one_event(fan_collector, on_tmpfs, tmpfs_target)
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def _replace(target: Path, text: str, before_rename: Callable[[int], object] | None = None) -> None:
    """The planter's atomic replace: temp file in the same directory, fsync, (watch), rename."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".credentials.tmp-")
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        os.fchmod(fd, 0o644)
        if before_rename is not None:
            before_rename(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)


def test_atomic_replace_watched_before_the_rename(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, _ = aws
    sensor = ebpf_sensor_factory([target], fan_collector)
    for round_ in range(3):
        _replace(target, f"[prod-backup]\nround = {round_}\n", lambda fd: sensor.watch_file(fd, str(target)))  # type: ignore[attr-defined]
        pid = read_with(["cat", str(target)])  # the first reader of the new inode
        _one_event(fan_collector, pid, target)
    # Without the call the new inode is not watched until the next set_paths (why the planter calls it).
    _replace(target, "[prod-backup]\nunannounced = 1\n")
    unseen = read_with(["cat", str(target)])
    _never_reported_pid(fan_collector, unseen)
    sensor.set_paths([str(target)])  # type: ignore[attr-defined]
    seen = read_with(["cat", str(target)])
    _one_event(fan_collector, seen, target)
    assert sensor.details()["watched_inodes"] == 1  # type: ignore[attr-defined]  # old inodes dropped


def test_set_paths_replaces_the_watched_set(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, neighbour = aws
    sensor = ebpf_sensor_factory([target], fan_collector)
    sensor.set_paths([str(neighbour)])  # type: ignore[attr-defined]
    old = read_with(["cat", str(target)])
    new = read_with(["cat", str(neighbour)])
    _one_event(fan_collector, new, neighbour)
    assert not fan_collector.for_pid(old)
    st = neighbour.stat()
    sensor.unwatch_inode(st.st_dev, st.st_ino)  # type: ignore[attr-defined]
    sensor.watch_inode(target.stat().st_dev, target.stat().st_ino, str(target))  # type: ignore[attr-defined]
    again = read_with(["cat", str(target)])
    gone = read_with(["cat", str(neighbour)])
    _one_event(fan_collector, again, target)
    _never_reported_pid(fan_collector, gone)


def test_raw_sys_exit_fallback(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    """Without tracefs the sensor uses the raw sys_exit tracepoint: same events, one per open."""
    target, _ = aws
    sensor = ebpf_sensor_factory([target], fan_collector, syscall_hook="raw")
    details = sensor.details()  # type: ignore[attr-defined]
    assert details["syscall_hook"] == "raw" and details["hooks"]["sys_exit"] == "attached"
    assert not any(hook.startswith("syscalls/") for hook in details["hooks"])
    pids = [read_with(["cat", str(target)]), read_with([SYSTEM_PYTHON, "-S", "-c", f"open({str(target)!r})"])]
    for pid in pids:
        _one_event(fan_collector, pid, target)


def test_start_time_and_context_match_procinfo(
    aws: tuple[Path, Path], fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    target, _ = aws
    ebpf_sensor_factory([target], fan_collector)
    script = f"import sys\nsys.stdin.readline()\nopen({str(target)!r}).read()\nsys.stdin.readline()\n"
    reader = subprocess.Popen([SYSTEM_PYTHON, "-S", "-c", script], stdin=subprocess.PIPE, cwd="/tmp")
    try:
        assert reader.stdin is not None
        reader.stdin.write(b"go\n")
        reader.stdin.flush()
        assert fan_collector.wait_for(lambda evs: any(e.pid == reader.pid for e in evs), 10)
        live = procinfo.capture(reader.pid)  # the same process, read by the fanotify sensor's code
        (event,) = fan_collector.for_pid(reader.pid)
        assert event.start_time == live.start_time
        assert (event.exe, event.cmdline, event.cwd, event.ppid) == (
            live.exe,
            live.cmdline,
            live.cwd,
            live.ppid,
        )
        assert [a.pid for a in event.ancestors] == [a.pid for a in live.ancestors]
        reader.stdin.write(b"done\n")
        reader.stdin.close()
        assert reader.wait(timeout=10) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
