"""Linux eBPF read sensor: the kernel attributes each open of a planted file; nobody ever waits.

The BPF side (agent/sensors/bpf/tripkey.bpf.c) matches opens by inode in the kernel and writes
one ring-buffer record per open of a watched file, with the reader's exe, cwd, argv and its
ancestors by (pid, start time). This side:

  poll thread  ring_buffer__poll with a 1 s timeout (an idle agent wakes once a second, and
               stop() returns within a second), turns each record into one ReadEvent
               (EventBuilder) and hands it to the callback at once. Every 30 s it sweeps process
               cache entries nobody will read any more.
  watches      planted paths -> (s_dev, i_ino) in the kernel's `watched` map (Watches). A planter
               replacing a file calls watch_file() on the temp file before the rename, so the new
               inode is watched before any reader can open it by name.

A full ring buffer is counted by the kernel (lost), never waited on: this sensor cannot hold a
reader, even when the agent is stopped. The agent's own opens are skipped in the kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent import osflags
from agent.sensors import _ebpf_loader as loader
from agent.sensors import _libbpf as bpf
from agent.sensors._ebpf_events import EventBuilder
from agent.sensors._ebpf_procs import ProcessCache
from agent.sensors._ebpf_records import COUNTERS, PROC_SIZE, file_key, kernel_dev
from agent.sensors._ebpf_watch import Watches, pin
from agent.sensors.base import AFTER_THE_FACT, ReadCallback, Sensor, SensorHealth, SensorUnavailable

log = logging.getLogger(__name__)

__all__ = ["EbpfHealth", "EbpfSensor"]

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
BTF_PATH = "/sys/kernel/btf/vmlinux"
ALIVE_CHECK_EVERY = 20  # sweeps (every sweep_interval s) between checks for leaked entries


@dataclasses.dataclass(frozen=True, slots=True)
class EbpfHealth(SensorHealth):
    syscall_hook: str = ""  # "tracepoint" | "raw"
    events_reported: int = 0
    partial_events: int = 0
    unfilled: int = 0  # ancestors that could be named by pid and uid only
    cache_misses: int = 0
    callback_errors: int = 0
    own_opens_skipped: int = 0
    unwatched: tuple[str, ...] = ()  # targets that could not be watched, with why
    uncovered: tuple[str, ...] = ()  # opens no attached hook sees
    detail: str | None = None


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _possible_cpus() -> int:
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


class EbpfSensor(Sensor):
    """Open-family syscall tracepoints + exec/fork/exit process cache, matched by inode in the kernel."""

    name = "ebpf"
    mode = "tracepoints"
    capabilities = AFTER_THE_FACT

    def __init__(
        self,
        paths: Iterable[str],
        callback: ReadCallback,
        *,
        ring_bytes: int = 4 << 20,
        max_processes: int = 32768,
        syscall_hook: str = "auto",
        try_lsm: bool = True,
        poll_ms: int = 1000,
        sweep_interval: float = 30.0,
        object_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(paths, callback)
        if ring_bytes < 4096 or ring_bytes & (ring_bytes - 1):
            raise ValueError("ring_bytes must be a power of two of at least one page")
        self.ring_bytes, self.max_processes = ring_bytes, max_processes
        self.syscall_hook, self.try_lsm = syscall_hook, try_lsm
        self.poll_ms, self.sweep_interval = poll_ms, sweep_interval
        self.object_path = Path(object_path) if object_path else loader.object_path()
        self._watches = Watches()
        self._loaded: loader.Loaded | None = None
        self._ring: bpf.RingBuffer | None = None
        self._events = EventBuilder(ProcessCache(None), self._watches.path_of, self.name)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started = self._stopped = False
        self._fatal: str | None = None
        self._reported = self._cb_errors = self._decode_errors = 0
        self._ncpus = _possible_cpus()
        self._final_counters: dict[str, int] | None = None

    # -- availability -------------------------------------------------------------------------

    @classmethod
    def check_available(cls) -> str | None:
        missing = cls._static_check(loader.object_path())
        if missing:
            return missing
        bpf.route_messages(log)  # the verifier's complaint goes to the log, not to stderr
        try:  # what the kernel says: load everything, attach the hooks that need no tracefs, undo
            probe = loader.load(loader.object_path(), ring_bytes=4096, max_processes=64,
                                syscall_hook="raw", try_lsm=False)  # fmt: skip
        except bpf.LibbpfError as exc:
            return cls._refused(exc)
        probe.close()
        return None

    @classmethod
    def _static_check(cls, obj: Path) -> str | None:
        if not osflags.LINUX:
            return f"{cls.name} exists only on Linux"
        caps = _capabilities()
        if not (caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1)):
            return (
                f"{cls.name} needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN); this process "
                f"(uid {os.geteuid()}) has neither. Run tripkey-agent as root, or choose another sensor"
            )
        if not os.path.exists(BTF_PATH):
            return (
                f"{cls.name}: the kernel exposes no BTF ({BTF_PATH} is missing; CONFIG_DEBUG_INFO_BTF): "
                'choose sensor = "fanotify"'
            )
        if not obj.exists():
            return (
                f"{cls.name}: the BPF object {obj} is not built: run `make -C agent/sensors/bpf` "
                "(`make test` does it; needs clang, bpftool and libbpf-dev)"
            )
        try:
            bpf.library()
        except OSError as exc:
            return f"{cls.name}: {exc}"
        return None

    @classmethod
    def _refused(cls, exc: bpf.LibbpfError) -> str:
        return (
            f"{cls.name}: the kernel refused the BPF program: {exc} (lockdown=confidentiality, "
            'an old kernel or a seccomp/LSM policy can do this); choose sensor = "fanotify"'
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError("sensor already started")
        missing = self._static_check(self.object_path)
        if missing:
            raise SensorUnavailable(missing)
        self._started = True
        self._watches.set_paths(self.paths)
        bpf.route_messages(log)
        try:
            self._loaded = loader.load(
                self.object_path,
                ring_bytes=self.ring_bytes,
                max_processes=self.max_processes,
                syscall_hook=self.syscall_hook,
                try_lsm=self.try_lsm,
                watched={file_key(*key): 1 for key in self._watches.inode_keys()},
                agent_tgid=os.getpid(),
            )
            procs = self._loaded.obj.map("procs")
            if procs.value_size != PROC_SIZE:  # an object built from another tripkey.h
                raise SensorUnavailable(
                    f"{self.name}: {self.object_path} does not match this agent (process entries of "
                    f"{procs.value_size} bytes, not {PROC_SIZE}): rebuild it (make -C agent/sensors/bpf)"
                )
            self._events.cache = ProcessCache(procs)
            self._watches.attach(self._loaded.obj.map("watched"))
            self._ring = bpf.RingBuffer(self._loaded.obj.map("events"), self._on_record, self._on_error)
        except bpf.LibbpfError as exc:
            self.stop()
            raise SensorUnavailable(self._refused(exc)) from exc
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._poll_loop, name="tripkey-ebpf-poll", daemon=True)
        self._thread.start()
        log.info("ebpf sensor started (%s syscall hooks) watching %d file(s); hooks: %s; not covered: %s",
                 self._loaded.syscall_mode, len(self._watches), self._loaded.hooks,
                 "; ".join(self._loaded.uncovered))  # fmt: skip

    def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.poll_ms / 1000 + 5)
        self._watches.attach(None)
        if self._loaded is not None:
            self._final_counters = self._read_counters()  # health() after stop still says what was lost
            self._loaded.close()  # detaches every hook, then frees the maps
        self._watches.close()  # unpinned only now that no hook can match a reused inode number
        if self._ring is not None:
            if thread is not None and thread.is_alive():  # stuck in the callback: freeing would crash it
                log.error("ebpf poll thread did not stop; its ring buffer is left allocated")
            else:
                self._ring.free()
        log.info("ebpf sensor stopped")

    def _poll_loop(self) -> None:
        assert self._ring is not None
        next_sweep = time.monotonic() + self.sweep_interval
        sweeps = 0
        while not self._stopping.is_set():
            try:
                self._ring.poll(self.poll_ms)
            except Exception as exc:
                self._fatal = f"ring buffer poll failed: {exc}"
                log.critical("ebpf sensor stopped sensing: %s", self._fatal)
                return
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_interval
                sweeps += 1
                try:  # the /proc liveness check costs a read per cached process: 1 sweep in 20
                    self._events.cache.sweep(check_alive=sweeps % ALIVE_CHECK_EVERY == 0)
                except Exception:
                    log.exception("ebpf: process cache sweep failed")

    def _on_record(self, data: bytes) -> None:
        event = self._events.event(data)
        try:
            self.callback(event)
        except Exception:
            self._cb_errors += 1
            log.exception("ebpf callback failed for pid %d", event.pid)
            return
        self._reported += 1

    def _on_error(self, exc: BaseException) -> None:
        self._decode_errors += 1
        log.error("ebpf: a read record could not be reported: %s: %s", type(exc).__name__, exc)

    # -- watches ------------------------------------------------------------------------------

    def set_paths(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        if self._started and not self._stopped:
            self._watches.set_paths(self.paths)

    def watch_file(self, target: str | os.PathLike[str] | int, path: str | None = None) -> tuple[int, int]:
        """Watch the inode of an open fd or a path as planted file `path` (default: target's path).

        The planter calls this with its temp file's fd BEFORE renaming it over the target, so the
        new inode is watched before any reader can open it. Returns the kernel's (s_dev, i_ino)."""
        if path is None:
            if isinstance(target, int):
                raise ValueError("watch_file(fd) needs the planted path the file will have")
            path = os.fspath(target)
        key, fd = pin(target)
        self._watches.watch(key, path, fd)
        return key

    def watch_new_file(self, path: str, fd: int) -> None:
        """The planter's hook (Sensor.watch_new_file): the new inode is watched before its rename."""
        if self._started and not self._stopped:
            self.watch_file(fd, path)

    def refresh(self, paths: Iterable[str] | None = None) -> None:
        """A target was replaced by someone else (an editor's rename): watch what each path names now."""
        if self._started and not self._stopped:
            self._watches.set_paths(self.paths)

    def watch_inode(self, dev: int, ino: int, path: str) -> None:
        """Watch an inode given by its userspace stat (st_dev, st_ino) as planted file `path`.

        Prefer watch_file: it pins the inode. This one pins it only if `path` names it now;
        otherwise its number could be reused once the file is deleted."""
        key = (kernel_dev(dev), ino)
        fd: int | None = None
        with contextlib.suppress(OSError):
            found, fd = pin(path)
            if found != key:
                os.close(fd)
                fd = None
        self._watches.watch(key, path, fd)

    def unwatch_inode(self, dev: int, ino: int) -> None:
        """Stop watching an inode given by its userspace stat (st_dev, st_ino)."""
        self._watches.unwatch((kernel_dev(dev), ino))

    # -- health ---------------------------------------------------------------------------------

    def kernel_counters(self) -> dict[str, int]:
        """The BPF program's per-CPU counters, summed (zeros before start; final values after stop)."""
        if self._final_counters is not None:
            return dict(self._final_counters)
        if self._loaded is None or self._stopped:
            return dict.fromkeys(COUNTERS, 0)
        return self._read_counters()

    def _read_counters(self) -> dict[str, int]:
        assert self._loaded is not None
        counters = self._loaded.obj.map("counters")
        out: dict[str, int] = {}
        for index, name in enumerate(COUNTERS):
            raw = counters.lookup(index.to_bytes(4, "little"), 8 * self._ncpus) or b""
            out[name] = sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
        return out

    def details(self) -> dict[str, Any]:
        """What status and the heartbeat show: hooks, what is not covered, every counter."""
        loaded = self._loaded
        return {
            "syscall_hook": loaded.syscall_mode if loaded else None,
            "hooks": dict(loaded.hooks) if loaded else {},
            "uncovered": list(loaded.uncovered) if loaded else [],
            "watched_inodes": len(self._watches),
            "ring_bytes": self.ring_bytes,
            "max_processes": self.max_processes,
            "counters": {
                **self.kernel_counters(),
                **dataclasses.asdict(self._events.cache.stats),
                "events_reported": self._reported,
                "partial_events": self._events.partial,
                "unresolved_repeats": self._events.unresolved_repeats,
                "callback_errors": self._cb_errors,
                "decode_errors": self._decode_errors,
            },
        }

    def health(self) -> EbpfHealth:
        kernel = self.kernel_counters()
        problems = self._watches.problems
        running = self._started and not self._stopped and self._fatal is None
        error = self._fatal or ("cannot watch " + "; ".join(problems) if problems else None)
        if not self._started:
            error = error or "not started"
        elif self._stopped:
            error = error or "stopped"
        loaded = self._loaded
        return EbpfHealth(
            name=self.name,
            mode=self.mode,
            healthy=running and not problems,
            error=error,
            lost_events=kernel["lost"] + self._decode_errors + self._cb_errors,
            weaker=self.capabilities.weaker,
            syscall_hook=loaded.syscall_mode if loaded else "",
            events_reported=self._reported,
            partial_events=self._events.partial,
            unfilled=self._events.cache.stats.unfilled,
            cache_misses=kernel["ancestor_cache_misses"],
            callback_errors=self._cb_errors,
            own_opens_skipped=kernel["own_opens_skipped"],
            unwatched=problems,
            uncovered=tuple(loaded.uncovered) if loaded else (),
            detail=None if not loaded else "hooks: " + ", ".join(f"{k} {v}" for k, v in loaded.hooks.items()),
        )
