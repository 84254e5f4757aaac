"""The eBPF sensor's process cache, record layout and accounting.

Unit tests drive ProcessCache with an in-memory stand-in for the kernel's `procs` map: pid reuse
and re-exec never mix two images, exited entries are deleted once read, the sweep removes only
what nobody will read. Real-kernel tests: a reader started before the sensor is filled from /proc
and marked partial; a shell that exits right after running the reader is still named (from its
pinned cache entry); a full ring buffer is counted so that nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.sensors import _procinfo as procinfo
from agent.sensors._ebpf_events import EventBuilder
from agent.sensors._ebpf_procs import EXITED_GRACE_NS, ProcessCache
from agent.sensors._ebpf_records import (
    CACHE_ARGS_LEN,
    NS_PER_TICK,
    PATH_LEN,
    PROC_HEADER,
    PROC_SIZE,
    READ_SIZE,
    REPEAT_SIZE,
    Ancestor,
    RawRead,
    check_layout,
    decode_path,
    parse_cmdline,
    proc_key,
)
from tests.support.ebpf import BPF_DIR, read_with
from tests.support.paths import requires_root
from tests.support.sensors import Collector

SensorFactory = Callable[..., object]


# ---- an in-memory `procs` map ---------------------------------------------------------------


def pack_proc(exec_ns: int, exe: str, argv: list[str], exit_ns: int = 0, pinned: int = 0) -> bytes:
    """A struct tk_proc as the BPF program writes it (exe leaf first, NUL-terminated parts)."""
    exe_raw = b"".join(part.encode() + b"\0" for part in reversed(exe.strip("/").split("/")))
    args_raw = b"".join(arg.encode() + b"\0" for arg in argv)
    header = PROC_HEADER.pack(exec_ns, exit_ns, pinned, 1, 0, 0, len(args_raw), len(exe_raw), len(args_raw))
    return header + exe_raw.ljust(PATH_LEN, b"\0") + args_raw.ljust(CACHE_ARGS_LEN, b"\0")


class FakeProcs:
    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}

    def put(self, tgid: int, start_ns: int, value: bytes) -> None:
        self.entries[proc_key(tgid, start_ns)] = value

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        assert value_size == PROC_SIZE
        return self.entries.get(key)

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None

    def keys(self, key_size: int) -> Iterator[bytes]:
        return iter(list(self.entries))


def _my_start_ns() -> int:
    raw = Path("/proc/self/stat").read_bytes()
    return int(raw[raw.rindex(b")") + 2 :].split()[19]) * NS_PER_TICK


def test_pid_reuse_never_mixes_two_processes() -> None:
    procs = FakeProcs()
    pid, first, second = 4242, 10_000_000_000, 20_000_000_000
    procs.put(pid, first, pack_proc(1, "/usr/bin/cat", ["cat", "credentials"]))
    cache = ProcessCache(procs)
    info, complete = cache.ancestor(Ancestor(pid, 1000, first, 1))
    assert (info.pid, info.exe, info.cmdline, info.uid, complete) == (
        pid, "/usr/bin/cat", ("cat", "credentials"), 1000, True,
    )  # fmt: skip
    # The first process exits; a new one gets the same pid.
    procs.entries.clear()
    procs.put(pid, second, pack_proc(2, "/usr/bin/python3.11", ["python3", "steal.py"]))
    newcomer, _ = cache.ancestor(Ancestor(pid, 0, second, 2))
    assert (newcomer.exe, newcomer.cmdline) == ("/usr/bin/python3.11", ("python3", "steal.py"))
    earlier, _ = cache.ancestor(Ancestor(pid, 1000, first, 1))  # a record still naming the first one
    assert earlier.exe == "/usr/bin/cat"
    # A cache that never saw the first one does not lend it the newcomer's image either.
    fresh = ProcessCache(procs)
    unknown, complete = fresh.ancestor(Ancestor(pid, 1000, first, 1))
    assert (unknown.exe, unknown.cmdline, complete) == (None, (), False)
    assert fresh.stats.unfilled == 1


def test_re_exec_is_a_new_image_of_the_same_process() -> None:
    procs, start = FakeProcs(), 5_000_000_000
    procs.put(77, start, pack_proc(100, "/usr/bin/bash", ["bash"]))
    cache = ProcessCache(procs)
    assert cache.ancestor(Ancestor(77, 0, start, 100))[0].exe == "/usr/bin/bash"
    procs.put(77, start, pack_proc(200, "/usr/bin/python3.11", ["python3", "-c", "x"]))  # exec, same key
    assert cache.ancestor(Ancestor(77, 0, start, 200))[0].exe == "/usr/bin/python3.11"
    # a record written before the exec still names the image it saw (remembered per exec stamp)
    assert cache.ancestor(Ancestor(77, 0, start, 100))[0].exe == "/usr/bin/bash"


def test_exited_entry_is_deleted_once_read() -> None:
    procs, start = FakeProcs(), 7_000_000_000
    procs.put(88, start, pack_proc(3, "/usr/bin/dash", ["sh", "-c", "cat x"], exit_ns=9, pinned=1))
    cache = ProcessCache(procs)
    info, complete = cache.ancestor(Ancestor(88, 0, start, 3))
    assert (info.exe, info.cmdline, complete) == ("/usr/bin/dash", ("sh", "-c", "cat x"), True)
    assert procs.entries == {} and cache.stats.exited_deleted == 1
    assert cache.ancestor(Ancestor(88, 0, start, 3))[0].exe == "/usr/bin/dash"  # remembered


def test_cache_miss_is_filled_from_proc_for_the_same_process_only() -> None:
    cache = ProcessCache(FakeProcs())
    me = os.getpid()
    info, complete = cache.ancestor(Ancestor(me, os.getuid(), _my_start_ns(), 0))
    live = procinfo.capture(me, with_ancestors=False)
    # Verified by start time, so it is this process: complete (an ancestor that predates the agent,
    # like pid 1, is the rule, not a gap), and counted.
    assert (info.exe, info.cmdline, complete) == (live.exe, live.cmdline, True)
    assert cache.stats.filled_from_proc == 1
    # the same pid with another start time is another process: never filled with our data
    other, complete = cache.ancestor(Ancestor(me, 0, _my_start_ns() + 50 * NS_PER_TICK, 0))
    assert (other.exe, complete) == (None, False) and cache.stats.unfilled == 1


def test_sweep_removes_only_what_nobody_will_read() -> None:
    procs, now = FakeProcs(), 1_000 * 1_000_000_000
    me, start = os.getpid(), _my_start_ns()
    procs.put(1001, 1, pack_proc(1, "/x", ["old"], exit_ns=now - EXITED_GRACE_NS - 1, pinned=1))
    procs.put(1002, 2, pack_proc(1, "/x", ["recent"], exit_ns=now - 1, pinned=1))
    procs.put(me, start, pack_proc(1, "/x", ["alive"]))
    procs.put(me, start + 50 * NS_PER_TICK, pack_proc(1, "/x", ["never-seen-exit"]))  # dead, leaked
    cache = ProcessCache(procs)
    cache.sweep(now, check_alive=False)  # the frequent sweep: map only, no /proc reads
    assert proc_key(1001, 1) not in procs.entries and len(procs.entries) == 3
    cache.sweep(now)
    assert set(procs.entries) == {proc_key(1002, 2), proc_key(me, start)}
    assert (cache.stats.exited_deleted, cache.stats.dead_swept) == (1, 1)


def _raw(tgid: int, ancestors: tuple[Ancestor, ...]) -> RawRead:
    return RawRead(
        time_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME), start_ns=_my_start_ns(), exec_ns=0, dev=1, ino=2,
        tgid=tgid, tid=tgid, ppid=ancestors[0].tgid, uid=0, flags=0, source=257, args_total=6,
        exe=b"cat\0bin\0usr\0", cwd=b"tmp\0", args=b"cat\0x\0", ancestors=ancestors,
    )  # fmt: skip


def test_readers_of_one_parent_share_its_scrubbed_chain() -> None:
    """Scrubbing a chain (redacting every ancestor's argv) is done once per chain, not per reader."""
    procs, start = FakeProcs(), 3_000_000_000
    secret = "aws_secret_access_key=" + "Ab1" * 13 + "x"
    procs.put(500, start, pack_proc(9, "/usr/bin/bash", ["bash", "-c", secret]))
    builder = EventBuilder(ProcessCache(procs), lambda dev, ino: "/home/u/.aws/credentials", "ebpf")
    chain = (Ancestor(500, 0, start, 9), Ancestor(os.getpid(), 0, _my_start_ns(), 0))
    first, second = builder.build(_raw(600, chain)), builder.build(_raw(601, chain))
    assert first.ancestors[0].cmdline == ("bash", "-c", "aws_secret_access_key=[REDACTED]")
    assert second.ancestors is first.ancestors and second.pid == 601
    assert first.partial and second.partial  # the readers were never exec'd under the sensor (exec_ns 0)
    reexec = (Ancestor(500, 0, start, 10), *chain[1:])  # the parent exec'd since: another chain
    procs.put(500, start, pack_proc(10, "/usr/bin/python3.11", ["python3"]))
    assert builder.build(_raw(602, reexec)).ancestors[0].exe == "/usr/bin/python3.11"


def test_wall_clock_offset_ignores_a_preempted_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Converting boot time to UTC must not shift by however long the thread was preempted."""
    from agent.sensors import _ebpf_records

    true_offset = 1_700_000_000 * 10**9
    boot = iter([5 * 10**9, 5 * 10**9, 5 * 10**9 + 80_000_000, 6 * 10**9, 6 * 10**9 + 1_000])
    # wall reads: taken mid-pair; the first pair straddles an 80 ms preemption
    wall = iter([5 * 10**9 + true_offset, 6 * 10**9 + 500 + true_offset])
    monkeypatch.setattr(_ebpf_records.time, "clock_gettime_ns", lambda clock: next(boot))
    monkeypatch.setattr(_ebpf_records.time, "time_ns", lambda: next(wall))
    clock = _ebpf_records._WallClock()
    assert clock.offset_ns() == true_offset  # the 1 us pair, not the 80 ms one (40 ms off)


def test_layout_matches_the_header_and_decoders() -> None:
    assert check_layout((BPF_DIR / "tripkey.h").read_text()) == []
    assert (READ_SIZE, REPEAT_SIZE, PROC_SIZE) == (5976, 56, 936)  # sizeof the C structs
    assert decode_path(b"cat\0bin\0usr\0") == "/usr/bin/cat"
    assert decode_path(b"x\0", cut=True, deleted=True) == ".../x (deleted)"
    assert decode_path(b"") is None
    assert decode_path(b"", empty="/") == "/"  # a cwd walk that starts at the root
    assert decode_path(b"", cut=True, empty="/") is None  # a walk that failed at once: unknown
    assert parse_cmdline(b"sh\0-c\0\0") == ("sh", "-c", "")  # a trailing empty argument survives
    assert parse_cmdline(b"\xff\0") == ("\udcff",)  # undecodable bytes reach ReadEvent's printable()


# ---- the real kernel ------------------------------------------------------------------------


@requires_root
def test_reader_started_before_the_sensor_is_filled_and_partial(
    fan_target: Path, fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    script = f"import sys\nsys.stdin.readline()\nopen({str(fan_target)!r}).read()\nsys.stdin.readline()\n"
    reader = subprocess.Popen([sys.executable, "-S", "-c", script], stdin=subprocess.PIPE)
    try:
        time.sleep(0.2)
        sensor = ebpf_sensor_factory([fan_target], fan_collector)  # the reader's exec is long past
        assert reader.stdin is not None
        reader.stdin.write(b"go\n")
        reader.stdin.flush()
        assert fan_collector.wait_for(lambda evs: any(e.pid == reader.pid for e in evs), 10)
        (event,) = fan_collector.for_pid(reader.pid)
        live = procinfo.capture(reader.pid)
        assert (event.exe, event.cmdline, event.start_time) == (live.exe, live.cmdline, live.start_time)
        assert event.partial  # the reader itself predates the sensor: nothing saw its exec
        assert event.ancestors[0].pid == os.getpid() and event.ancestors[0].exe == live.ancestors[0].exe
        counters = sensor.details()["counters"]  # type: ignore[attr-defined]
        assert counters["reader_cache_misses"] >= 1 and counters["filled_from_proc"] >= 1, counters
        assert counters["ancestor_cache_misses"] >= 1
        assert json.loads(json.dumps(event.to_dict()))["partial"] is True
        reader.stdin.write(b"done\n")
        reader.stdin.close()
        assert reader.wait(timeout=10) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()


class Gate:
    """A callback that holds the poll thread in its first call until released (test control)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, event: object) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
        self.collector(event)  # type: ignore[arg-type]


@requires_root
def test_shell_that_exits_right_away_is_still_named(
    fan_target: Path, fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    gate = Gate(fan_collector)
    sensor = ebpf_sensor_factory([fan_target], gate)
    try:
        read_with(["cat", str(fan_target)])  # its event holds the poll thread in the callback
        assert gate.entered.wait(10)
        shell = read_with(["sh", "-c", f"cat '{fan_target}' >/dev/null; exit 0"])
        assert not Path(f"/proc/{shell}").exists()  # gone before its child's record is processed
    finally:
        gate.release.set()
    assert fan_collector.wait_for(lambda evs: len(evs) >= 2, 10)
    (event,) = [e for e in fan_collector.events if e.ppid == shell]
    parent = event.ancestors[0]
    assert (parent.pid, parent.exe) == (shell, "/usr/bin/dash")
    assert parent.cmdline == ("sh", "-c", f"cat '{fan_target}' >/dev/null; exit 0")
    assert event.ancestors[1].pid == os.getpid()
    counters = sensor.details()["counters"]  # type: ignore[attr-defined]
    assert counters["exited_kept"] >= 1 and counters["exited_deleted"] >= 1, counters


@requires_root
def test_ring_buffer_overflow_is_counted_never_silent(
    fan_target: Path, fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    gate = Gate(fan_collector)
    sensor = ebpf_sensor_factory([fan_target], gate, ring_bytes=16384)  # ~2 full or ~250 repeat records
    opens = 2000
    try:
        read_with(["cat", str(fan_target)])
        assert gate.entered.wait(10)
        loop = f"import os\nfor _ in range({opens}):\n    os.close(os.open({str(fan_target)!r}, os.O_RDONLY))"
        read_with([sys.executable, "-S", "-c", loop])
    finally:
        gate.release.set()
    time.sleep(1.5)
    health = sensor.health()  # type: ignore[attr-defined]
    counters = sensor.details()["counters"]  # type: ignore[attr-defined]
    assert health.lost_events > 0 and health.lost_events == counters["lost"]
    assert len(fan_collector.events) + health.lost_events == opens + 1, (len(fan_collector.events), health)
    assert counters["reads"] == len(fan_collector.events) == health.events_reported


@requires_root
def test_details_say_what_is_attached_and_what_is_not_covered(
    fan_target: Path, ebpf_sensor_factory: SensorFactory
) -> None:
    sensor = ebpf_sensor_factory([fan_target], lambda event: None)
    details = sensor.details()  # type: ignore[attr-defined]
    hooks = details["hooks"]
    for hook in ("sched_process_exec", "sched_process_fork", "sched_process_exit"):
        assert hooks[hook] == "attached"
    assert details["syscall_hook"] == "tracepoint"
    for syscall in ("openat", "openat2", "open", "creat", "open_by_handle_at"):
        assert hooks[f"syscalls/sys_exit_{syscall}"] == "attached"
    assert hooks["lsm/file_open"] == "attached" or hooks["lsm/file_open"].startswith("refused by the kernel")
    assert any("already open" in item for item in details["uncovered"])
    health = sensor.health()  # type: ignore[attr-defined]
    assert health.healthy and health.syscall_hook == "tracepoint" and health.uncovered
    assert json.loads(json.dumps(health.to_dict()))["name"] == "ebpf"


@pytest.fixture(autouse=True)
def _no_leftover_pins() -> Iterator[None]:
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) <= before  # every watched inode's O_PATH fd is closed
