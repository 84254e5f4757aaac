"""Every Linux sensor side by side on the same workload, each in its own process as the agent runs it.

    python -m bench sensors                                   # part of `make bench`
    python -m bench.bench_sensors --readers 10000             # the 10,000-reader storm
    python -m bench.bench_sensors --sensors fanotify,ebpf     # chosen sensors (any create_sensor name)

Default sensors: every one `agent.sensors.create_sensor` can build on this host, plus `inotify` (the
naive inotify + psutil approach, bench/_inotify_baseline.py) and `none` (no agent: the baseline
latency). Environment: TRIPKEY_BENCH_SENSORS, TRIPKEY_BENCH_READERS (what `python -m bench` passes).
Each sensor runs in a child process (bench/_sensor_host.py) under the agent's real deadman
supervisor, and is measured on:

* storm: `readers` short-lived `cat PLANTED UNIQUE_ARG` processes, 8 in flight, every other one as
  uid 65534 (setpriv execs, so the pid is cat's): recorded (a read event for that pid), attributed
  (exe /usr/bin/cat, the full argv, the uid, parent = this bench, chain ending at pid 1), missing;
  lost_events from the sensor's health; the agent's CPU seconds per 10,000 reads (utime+stime of
  all its threads over the storm); its peak RSS during the storm.
* open_*_us: open+read+close of the planted file by this process, `opens` times in a loop
  (p50/p99/max, microseconds), and the opens per second of that loop (with a permission sensor every
  open is held, captured and answered).
* idle_wakeups_per_s: context switches of all the agent's threads over 5 idle seconds (the sensor's
  and the deadman petting; the repair watcher, which the real agent also runs, is not started yet).
* churn (issue #10): meanwhile another user appends to a 10,000-profile credentials file 3x a
  second, which the agent's repair watcher inspects (rate-limited); 300 readers of the planted file
  spread over 20 s: how many are attributed, how many the fail-open guard had to let through.
  `fanotify/no-limits` (in the default set) is the same sensor without the fix, for comparison:
  every change inspected at once, the interpreter's default 5 ms GIL switch interval.
* stopped_wait_s: the agent is SIGSTOPped; how long a `cat` of the planted file waits (the deadman
  kills the agent within 1.5 s); other_file_wait_s: a `cat` of ~/.aws/config meanwhile.
Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TITLE = "sensors side by side: storm of short-lived readers, open latency, CPU, RSS, idle, churn, stopped"
REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
IN_FLIGHT = 8
CHURN_READERS = 300
CHURN_PROFILES = 10_000
CHURN_SECONDS = 20.0  # the churn readers are spread over this long (the appends go on meanwhile)
IDLE_SECONDS = 5.0
NO_LIMITS = "/no-limits"  # suffix: the agent without issue #10's churn limits (for comparison)
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def default_sensors() -> list[str]:
    from agent.sensors import SENSOR_NAMES, unavailable_reason

    linux = [n for n in SENSOR_NAMES if n not in ("auto", "eslogger", "eventlog")]
    usable = [n for n in linux if unavailable_reason(n) is None]
    before = [f"fanotify{NO_LIMITS}"] if "fanotify" in usable else []
    return ["none", *usable, "inotify", *before]


def run(
    sensors: list[str] | None = None, readers: int | None = None, opens: int = 2000, churn: bool = True
) -> list[dict[str, Any]]:
    if os.geteuid() != 0:
        return [{"sensor": "-", "note": "not run: needs root (fanotify, audit, setpriv)"}]
    env_sensors = os.environ.get("TRIPKEY_BENCH_SENSORS")
    names = sensors or (env_sensors.split(",") if env_sensors else default_sensors())
    count = readers or int(os.environ.get("TRIPKEY_BENCH_READERS", "1000"))
    with _workspace(count, churn) as space:
        rows = [_measure(name.strip(), space, count, opens, churn) for name in names if name.strip()]
    return [{c: row[c] for c in COLUMNS if c in row} for row in rows]  # one column order, any subset


COLUMNS = (
    "sensor", "readers", "recorded", "attributed", "missing", "lost_events", "guard_released",
    "readers_per_s", "cpu_s_per_10k", "rss_mb", "open_p50_us", "open_p99_us", "open_max_us",
    "opens_per_s", "loop_recorded", "idle_wakeups_per_s", "churn_recorded", "churn_attributed",
    "churn_lost", "churn_guard_released", "churn_inspections", "stopped_wait_s", "other_file_wait_s",
    "note",
)  # fmt: skip


# ---- the files -------------------------------------------------------------------------------------


class Space:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.target = root / "alice" / ".aws" / "credentials"
        self.config = root / "alice" / ".aws" / "config"
        self.big = root / "bob" / ".aws" / "credentials"
        self.args = root / "args"


@contextlib.contextmanager
def _workspace(readers: int, churn: bool) -> Iterator[Space]:
    root = Path(tempfile.mkdtemp(prefix="tripkey-bench-sensors-", dir="/tmp"))
    space = Space(root)
    try:
        for directory in (space.target.parent, space.big.parent, space.args):
            directory.mkdir(parents=True)
        for directory in (root, *root.rglob("*")):
            directory.chmod(0o755)  # readers run as nobody too
        space.target.write_text("[prod-backup]\naws_access_key_id = AKIAEXAMPLEEXAMPLE00\n")
        space.config.write_text("[default]\nregion = eu-west-1\n")
        for path in (space.target, space.config):
            path.chmod(0o644)
        for i in range(max(readers, CHURN_READERS)):  # cat's unique second argument: an empty file
            (space.args / f"{i:05d}").touch(mode=0o644)
        if churn:
            space.big.write_bytes(_profiles(CHURN_PROFILES))
        yield space
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _profiles(count: int) -> bytes:
    return b"".join(
        b"[user%d]\naws_access_key_id = AKIAUSER%012d\naws_secret_access_key = s%038d\n" % (i, i, i)
        for i in range(count)
    )


# ---- one sensor ------------------------------------------------------------------------------------


def _measure(name: str, space: Space, readers: int, opens: int, churn: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"sensor": name}
    if name == "none":
        row.update(_latency(space.target, opens, None))
        return row
    workdir = Path(tempfile.mkdtemp(prefix="tripkey-bench-sensor-"))
    stderr = (workdir / "host.log").open("wb")
    sensor, no_limits = name.removesuffix(NO_LIMITS), name.endswith(NO_LIMITS)
    command = [sys.executable, "-m", "bench._sensor_host", "--sensor", sensor, "--target", str(space.target),
               "--workdir", str(workdir)] + (["--churn", str(space.big)] if churn else [])  # fmt: skip
    command += ["--no-limits"] if no_limits else []
    supervisor = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    agent = None
    try:
        agent = _wait_ready(workdir, supervisor)
        if agent is None:
            row["note"] = "not run: " + (workdir / "host.log").read_text(errors="replace").strip()[-300:]
            return row
        _readers(space, range(5))  # warm up the page cache, the loader, the sensor
        time.sleep(1.0)
        row["idle_wakeups_per_s"] = _idle_wakeups(agent)
        row.update(_storm(space, workdir, agent, readers))
        row.update(_latency(space.target, opens, workdir))
        if churn:
            row.update(_churn(space, workdir, agent, readers))
        row.update(_stopped(space, agent))
    finally:
        _stop(supervisor, agent)
        stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return row


def _wait_ready(workdir: Path, supervisor: subprocess.Popen[bytes]) -> int | None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and supervisor.poll() is None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((workdir / "ready").read_text())
        time.sleep(0.05)
    return None


def _stop(supervisor: subprocess.Popen[bytes], agent: int | None) -> None:
    supervisor.send_signal(signal.SIGTERM)
    try:
        supervisor.wait(timeout=30)
    except subprocess.TimeoutExpired:
        supervisor.kill()  # PR_SET_PDEATHSIG takes the agent with it
        supervisor.wait(timeout=10)
    if agent is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent, signal.SIGKILL)


def _health(workdir: Path, agent: int) -> dict[str, Any]:
    path = workdir / "health.json"
    before = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(agent, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime_ns != before:
            with contextlib.suppress(ValueError):
                return dict(json.loads(path.read_text()))
        time.sleep(0.02)
    return {}


def _events(workdir: Path) -> list[dict[str, Any]]:
    events = []
    with contextlib.suppress(FileNotFoundError), (workdir / "events.jsonl").open() as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


# ---- readers ---------------------------------------------------------------------------------------


def _readers(space: Space, indices: range, per_second: float = 0.0) -> dict[int, tuple[tuple[str, ...], int]]:
    """Run `cat PLANTED ARG` for each index, IN_FLIGHT at a time (and at most `per_second` starts a
    second, if given); pid -> (argv cat sees, uid)."""
    expected: dict[int, tuple[tuple[str, ...], int]] = {}
    running: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    for n, i in enumerate(indices):
        if per_second:
            time.sleep(max(0.0, started + n / per_second - time.monotonic()))
        argv = ("cat", str(space.target), str(space.args / f"{i:05d}"))
        uid = NOBODY if i % 2 else 0
        proc = subprocess.Popen([*AS_NOBODY, *argv] if uid else list(argv), stdout=subprocess.DEVNULL)
        expected[proc.pid] = (argv, uid)
        running.append(proc)
        if len(running) >= IN_FLIGHT:
            running.pop(0).wait()
    for proc in running:
        proc.wait()
    return expected


def _settle(workdir: Path, pids: set[int], timeout: float = 60.0, quiet: float = 5.0) -> list[dict[str, Any]]:
    """Events once every pid has one, or nothing new came for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        events = _events(workdir)
        if pids <= {e["pid"] for e in events} or time.monotonic() > deadline:
            return events
        if len(events) != last:
            last, last_change = len(events), time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return events
        time.sleep(0.1)


def _attributed(event: dict[str, Any], argv: tuple[str, ...], uid: int, cat: str) -> bool:
    ancestors = event.get("ancestors") or []
    return (
        event.get("exe") == cat
        and tuple(event.get("cmdline") or ()) == argv
        and event.get("uid") == uid
        and event.get("ppid") == os.getpid()
        and bool(ancestors)
        and ancestors[0].get("pid") == os.getpid()
        and ancestors[-1].get("pid") == 1
    )


def _score(events: list[dict[str, Any]], expected: dict[int, tuple[tuple[str, ...], int]]) -> tuple[int, int]:
    cat = os.path.realpath(shutil.which("cat") or "/bin/cat")
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        by_pid.setdefault(event["pid"], []).append(event)
    recorded = sum(1 for pid in expected if pid in by_pid)
    attributed = sum(
        1
        for pid, (argv, uid) in expected.items()
        if any(_attributed(e, argv, uid, cat) for e in by_pid.get(pid, []))
    )
    return recorded, attributed


def _storm(space: Space, workdir: Path, agent: int, readers: int) -> dict[str, Any]:
    rss = _RssSampler(agent)
    cpu_before = _cpu_seconds(agent)
    started = time.monotonic()
    expected = _readers(space, range(readers))
    spawned = time.monotonic() - started
    events = _settle(workdir, set(expected))
    cpu = _cpu_seconds(agent) - cpu_before
    peak = rss.stop()
    recorded, attributed = _score(events, expected)
    health = _health(workdir, agent)
    return {
        "readers": readers,
        "recorded": recorded,
        "attributed": attributed,
        "missing": readers - recorded,
        "lost_events": health.get("lost_events"),
        "guard_released": health.get("guard_answered"),
        "readers_per_s": round(readers / spawned),
        "cpu_s_per_10k": round(cpu / readers * 10_000, 2),
        "rss_mb": round(peak / 1024, 1),
    }


def _latency(target: Path, opens: int, workdir: Path | None) -> dict[str, Any]:
    samples = []
    started = time.perf_counter()
    for _ in range(opens):
        t = time.perf_counter_ns()
        fd = os.open(target, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
        samples.append((time.perf_counter_ns() - t) / 1000)
    elapsed = time.perf_counter() - started
    samples.sort()
    row = {
        "open_p50_us": round(statistics.median(samples), 1),
        "open_p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
        "open_max_us": round(samples[-1], 1),
        "opens_per_s": round(opens / elapsed),
    }
    if workdir is not None:
        time.sleep(1.0)
        row["loop_recorded"] = sum(1 for e in _events(workdir) if e["pid"] == os.getpid())
    return row


def _churn(space: Space, workdir: Path, agent: int, readers: int) -> dict[str, Any]:
    """Another user's 10,000-profile file appended to 3x a second while others read the canary."""
    os.kill(agent, signal.SIGUSR2)  # the host starts the agent's repair watcher on the big file
    time.sleep(0.5)
    before = _health(workdir, agent)
    stop = threading.Event()

    def append() -> None:
        n = 0
        while not stop.wait(1 / 3):
            with space.big.open("ab") as fh:
                fh.write(b"[churn%d]\naws_access_key_id = AKIACHURN%011d\n" % (n, n))
            n += 1

    appender = threading.Thread(target=append, daemon=True)
    appender.start()
    try:
        time.sleep(1.0)  # the first inspections start
        offset = max(readers, CHURN_READERS) - CHURN_READERS
        expected = _readers(space, range(offset, offset + CHURN_READERS), CHURN_READERS / CHURN_SECONDS)
    finally:
        stop.set()
        appender.join()
    recorded, attributed = _score(_settle(workdir, set(expected)), expected)
    after = _health(workdir, agent)
    released = (after.get("guard_answered") or 0) - (before.get("guard_answered") or 0)
    lost = (after.get("lost_events") or 0) - (before.get("lost_events") or 0)
    return {
        "churn_recorded": f"{recorded}/{CHURN_READERS}",
        "churn_attributed": f"{attributed}/{CHURN_READERS}",
        "churn_lost": lost,
        "churn_guard_released": released if "guard_answered" in after else None,
        "churn_inspections": after.get("inspections"),
    }


def _stopped(space: Space, agent: int) -> dict[str, Any]:
    os.kill(agent, signal.SIGSTOP)
    try:
        other = _timed(["cat", str(space.config)])
        waited = _timed(["cat", str(space.target)])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent, signal.SIGCONT)  # if the deadman has not killed it yet
    return {"stopped_wait_s": round(waited, 3), "other_file_wait_s": round(other, 3)}


def _timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
    return time.monotonic() - started


# ---- /proc ---------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def _idle_wakeups(pid: int) -> float:
    before = _switches(pid)
    time.sleep(IDLE_SECONDS)
    return round((_switches(pid) - before) / IDLE_SECONDS, 1)


class _RssSampler:
    """Peak VmRSS (KiB) of a process, sampled every 50 ms until stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, StopIteration, ValueError):
                status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
                self.peak = max(self.peak, int(next(x for x in status if x.startswith("VmRSS")).split()[1]))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import format_table

    parser = argparse.ArgumentParser(prog="python -m bench.bench_sensors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sensors", help="comma-separated names (default: every one this host can run)")
    parser.add_argument("--readers", type=int, default=None, help="storm size (default 1000)")
    parser.add_argument("--opens", type=int, default=2000, help="open+read+close loop length")
    parser.add_argument("--no-churn", action="store_true", help="skip the 10,000-profile churn scenario")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sensors = args.sensors.split(",") if args.sensors else None
    rows = run(sensors, args.readers, args.opens, churn=not args.no_churn)
    print(json.dumps(rows, indent=2) if args.json else f"== {TITLE}\n{format_table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
