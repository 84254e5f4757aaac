"""Repeat records: a process opening the file again with nothing changed costs 56 bytes, not 6 KiB.

Every open is still one event with its own time; anything that changes what a full record says
(cwd here) makes the next record full again; a repeat whose full record was forgotten is named
from /proc and marked partial, never dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.sensors._ebpf_events import EventBuilder
from agent.sensors._ebpf_procs import ProcessCache
from agent.sensors._ebpf_records import NS_PER_TICK, RawRepeat
from tests.support.paths import requires_root
from tests.support.sensors import Collector

SensorFactory = Callable[..., object]


@requires_root
def test_a_looping_reader_is_reported_once_per_open(
    fan_target: Path, fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    sensor = ebpf_sensor_factory([fan_target], fan_collector)
    opens = 500
    loop = f"import os\nfor _ in range({opens}):\n    os.close(os.open({str(fan_target)!r}, os.O_RDONLY))"
    subprocess.run([sys.executable, "-S", "-c", loop], check=True, timeout=30)
    assert fan_collector.wait_for(lambda evs: len(evs) >= opens, 10), len(fan_collector.events)
    time.sleep(1.2)
    events = fan_collector.events
    assert len(events) == opens and len({e.pid for e in events}) == 1
    first = events[0]
    for event in events:
        assert (event.exe, event.cmdline, event.cwd, event.ancestors) == (
            first.exe, first.cmdline, first.cwd, first.ancestors,
        )  # fmt: skip
    times = [e.time for e in events]
    # each open keeps its own time (microsecond resolution: two opens may share one)
    assert times == sorted(times) and len(set(times)) > opens // 2
    counters = sensor.details()["counters"]  # type: ignore[attr-defined]
    assert counters["reads"] == opens and counters["lost"] == 0
    assert counters["repeats"] >= opens - 10, counters  # a full record at least once a second
    assert counters["unresolved_repeats"] == 0


@requires_root
def test_a_change_of_cwd_makes_the_next_record_full(
    fan_target: Path, fan_collector: Collector, ebpf_sensor_factory: SensorFactory
) -> None:
    sensor = ebpf_sensor_factory([fan_target], fan_collector)
    script = (
        "import os\n"
        f"for _ in range(3): os.close(os.open({str(fan_target)!r}, os.O_RDONLY))\n"
        "os.chdir('/tmp')\n"
        f"for _ in range(3): os.close(os.open({str(fan_target)!r}, os.O_RDONLY))\n"
    )
    subprocess.run([sys.executable, "-S", "-c", script], check=True, cwd="/", timeout=30)
    assert fan_collector.wait_for(lambda evs: len(evs) >= 6, 10)
    assert [e.cwd for e in fan_collector.events] == ["/"] * 3 + ["/tmp"] * 3
    assert sensor.details()["counters"]["repeats"] == 4  # type: ignore[attr-defined]


def test_a_forgotten_full_record_is_named_from_proc_and_partial() -> None:
    builder = EventBuilder(ProcessCache(None), lambda dev, ino: "/home/u/.aws/credentials", "ebpf")
    raw = Path("/proc/self/stat").read_bytes()
    start_ns = int(raw[raw.rindex(b")") + 2 :].split()[19]) * NS_PER_TICK
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    repeat = RawRepeat(
        time_ns=now, start_ns=start_ns, dev=1, ino=2, tgid=os.getpid(), tid=0, source=257, seq=42
    )
    event = builder.repeat(repeat)
    assert (event.pid, event.path, event.partial) == (os.getpid(), "/home/u/.aws/credentials", True)
    assert event.exe == os.path.realpath(sys.executable) and event.cmdline  # from /proc, verified
    assert event.ppid == os.getppid() and event.ancestors[0].pid == os.getppid()
    assert builder.unresolved_repeats == 1
