"""Linux eBPF read sensor: the kernel attributes each open of a planted file; nobody ever waits.

The BPF side (agent/sensors/bpf/tripkey.bpf.c) matches opens by inode in the kernel and writes
one ring-buffer record per open of a watched file, with the reader's exe, cwd, argv and its
ancestors by (pid, start time). This side:

  poll thread  ring_buffer__poll with a 1 s timeout (so an idle agent wakes once a second and
               stop() returns within a second), decodes each record, names the ancestors from
               the kernel's process cache or /proc (ProcessCache) and hands one ReadEvent per open
               to the callback. Every 30 s it sweeps cache entries nobody will read.
  watches      planted paths -> (s_dev, i_ino) in the `watched` map. A planter replacing a file
               calls watch_file() on the temp file before the rename, so the new inode is watched
               before any reader can open it by name.

A full ring buffer is counted by the kernel (lost), never waited on: this sensor cannot hold a
reader, even when the agent is stopped. The agent's own opens are skipped in the kernel.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import operator
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent import osflags
from agent.sensors import _ebpf_loader as loader
from agent.sensors import _libbpf as bpf
from agent.sensors._ebpf_procs import ProcessCache, read_proc_verified
from agent.sensors._ebpf_records import (
    COUNTER_SLOTS,
    COUNTERS,
    F_ANC_CUT,
    F_ARGS_CUT,
    F_ARGS_FAULT,
    F_CWD_CUT,
    F_EXE_CUT,
    F_EXE_DELETED,
    F_NO_EXE,
    EbpfReadEvent,
    RawRead,
    boot_ns_to_utc,
    decode_path,
    file_key,
    identity_of_fd,
    identity_of_path,
    kernel_dev,
    parse_cmdline,
    parse_read,
    record_identity,
    record_time_ns,
    start_time_utc,
)
from agent.sensors.base import (
    AFTER_THE_FACT,
    ProcessInfo,
    ReadCallback,
    Sensor,
    SensorHealth,
    SensorUnavailable,
    user_name,
)
from agent.sensors.procinfo import ancestors_of

log = logging.getLogger(__name__)

__all__ = ["EbpfHealth", "EbpfSensor"]

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
BTF_PATH = "/sys/kernel/btf/vmlinux"
MAX_RETIRED = 1024  # unwatched inodes still named for records already in the ring
MAX_TEMPLATES = 64  # recent events kept to clone for repeated opens by the same process


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


_FIELDS = tuple(f.name for f in dataclasses.fields(EbpfReadEvent))
_GET_FIELDS = operator.attrgetter(*_FIELDS)


def _clone(template: EbpfReadEvent, time: dt.datetime) -> EbpfReadEvent:
    """A copy of an already built (already scrubbed) event with another time; 10x cheaper than
    copy.copy, and unlike dataclasses.replace it does not scrub the same strings again."""
    event = object.__new__(EbpfReadEvent)
    for name, value in zip(_FIELDS, _GET_FIELDS(template), strict=True):
        object.__setattr__(event, name, value)
    object.__setattr__(event, "time", time)
    return event


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
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
        self._lock = threading.Lock()  # watch changes; readers use the dicts swapped in whole
        self._inodes: dict[tuple[int, int], str] = {}  # (s_dev, ino) -> planted path
        self._explicit: dict[tuple[int, int], str] = {}  # from watch_file/watch_inode
        self._retired: collections.OrderedDict[tuple[int, int], str] = collections.OrderedDict()
        self._unwatched: tuple[str, ...] = ()
        self._loaded: loader.Loaded | None = None
        self._ring: bpf.RingBuffer | None = None
        self._cache = ProcessCache(None)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started = self._stopped = False
        self._fatal: str | None = None
        self._reported = self._partial = self._cb_errors = self._decode_errors = 0
        self._ncpus = _possible_cpus()
        self._final_counters: dict[str, int] | None = None
        self._recent: collections.OrderedDict[bytes, EbpfReadEvent] = collections.OrderedDict()

    # -- availability -------------------------------------------------------------------------

    @classmethod
    def check_available(cls) -> str | None:
        missing = cls._static_check(loader.object_path())
        if missing:
            return missing
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
        self._set_inodes(self._resolve(self.paths))
        bpf.route_messages(log)
        try:
            self._loaded = loader.load(
                self.object_path,
                ring_bytes=self.ring_bytes,
                max_processes=self.max_processes,
                syscall_hook=self.syscall_hook,
                try_lsm=self.try_lsm,
                watched={file_key(*key): 1 for key in self._inodes},
                agent_tgid=os.getpid(),
            )
            self._cache = ProcessCache(self._loaded.obj.map("procs"))
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
                 self._loaded.syscall_mode, len(self._inodes), self._loaded.hooks,
                 "; ".join(self._loaded.uncovered))  # fmt: skip

    def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.poll_ms / 1000 + 5)
        if self._loaded is not None:
            self._final_counters = self._read_counters()  # health() after stop still says what was lost
            self._loaded.close()  # detach first: no new records
        if self._ring is not None:
            if thread is not None and thread.is_alive():  # stuck in the callback: freeing would crash it
                log.error("ebpf poll thread did not stop; its ring buffer is left allocated")
            else:
                self._ring.free()
        log.info("ebpf sensor stopped")

    def _poll_loop(self) -> None:
        assert self._ring is not None
        next_sweep = time.monotonic() + self.sweep_interval
        while not self._stopping.is_set():
            try:
                self._ring.poll(self.poll_ms)
            except Exception as exc:
                self._fatal = f"ring buffer poll failed: {exc}"
                log.critical("ebpf sensor stopped sensing: %s", self._fatal)
                return
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_interval
                try:
                    self._cache.sweep()
                except Exception:
                    log.exception("ebpf: process cache sweep failed")

    # -- watches ------------------------------------------------------------------------------

    def set_paths(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        inodes = self._resolve(self.paths)
        with self._lock:
            for key, path in self._explicit.items():
                if path in self.paths:
                    inodes.setdefault(key, path)
            self._explicit = {k: p for k, p in self._explicit.items() if p in self.paths}
            self._apply(inodes)

    def watch_file(self, target: str | os.PathLike[str] | int, path: str | None = None) -> tuple[int, int]:
        """Watch the inode of an open fd or a path as planted file `path` (default: target's path).

        The planter calls this with its temp file's fd BEFORE renaming it over the target, so the
        new inode is watched before any reader can open it. Returns the kernel's (s_dev, i_ino)."""
        if isinstance(target, int):
            if path is None:
                raise ValueError("watch_file(fd) needs the planted path the file will have")
            key = identity_of_fd(target)
        else:
            key = identity_of_path(target)
            path = path or os.fspath(target)
        self._watch_key(key, path)
        return key

    def watch_inode(self, dev: int, ino: int, path: str) -> None:
        """Watch an inode by its userspace stat (st_dev, st_ino) as planted file `path`."""
        self._watch_key((kernel_dev(dev), ino), path)

    def unwatch_inode(self, dev: int, ino: int) -> None:
        """Stop watching an inode given by its userspace stat (st_dev, st_ino)."""
        key = (kernel_dev(dev), ino)
        with self._lock:
            self._explicit.pop(key, None)
            self._apply({k: p for k, p in self._inodes.items() if k != key})

    def _watch_key(self, key: tuple[int, int], path: str) -> None:
        with self._lock:
            self._explicit[key] = path
            self._apply({**self._inodes, key: path})

    def _resolve(self, paths: Iterable[str]) -> dict[tuple[int, int], str]:
        inodes: dict[tuple[int, int], str] = {}
        problems: list[str] = []
        for path in sorted(paths):
            try:
                inodes[identity_of_path(path)] = path
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
        self._unwatched = tuple(problems)
        return inodes

    def _apply(self, inodes: dict[tuple[int, int], str]) -> None:
        """Make the kernel's watched map equal `inodes` (caller holds the lock, or before start)."""
        if self._loaded is not None and not self._stopped:
            watched = self._loaded.obj.map("watched")
            for key in inodes.keys() - self._inodes.keys():
                watched.update(file_key(*key), b"\1\0\0\0")
            for key in self._inodes.keys() - inodes.keys():
                watched.delete(file_key(*key))
        for key in self._inodes.keys() - inodes.keys():
            self._retired[key] = self._inodes[key]
            while len(self._retired) > MAX_RETIRED:
                self._retired.popitem(last=False)
        self._set_inodes(inodes)

    def _set_inodes(self, inodes: dict[tuple[int, int], str]) -> None:
        self._inodes = dict(inodes)  # swapped whole: the poll thread reads it without the lock

    # -- records -> events ----------------------------------------------------------------------

    def _on_error(self, exc: BaseException) -> None:
        self._decode_errors += 1
        log.error("ebpf: a read record could not be reported: %s: %s", type(exc).__name__, exc)

    def _on_record(self, data: bytes) -> None:
        # A process opening the file in a loop produces records identical but for the time and
        # thread: reuse the event built (and scrubbed, which costs ~0.3 ms for a long ancestor
        # chain) for the first one, with the new time (_clone does not re-run __post_init__).
        key = record_identity(data)
        template = self._recent.get(key)
        if template is None:
            event = self._build(parse_read(data))
            self._recent[key] = event
            if len(self._recent) > MAX_TEMPLATES:
                self._recent.popitem(last=False)
        else:
            event = _clone(template, boot_ns_to_utc(record_time_ns(data)))
            self._partial += event.partial
        try:
            self.callback(event)
        except Exception:
            self._cb_errors += 1
            log.exception("ebpf callback failed for pid %d", event.pid)
            return
        self._reported += 1

    def _path_of(self, dev: int, ino: int) -> str:
        key = (dev, ino)
        path = self._inodes.get(key) or self._retired.get(key)
        return path if path is not None else f"<inode {dev >> 20}:{dev & 0xFFFFF}:{ino}>"

    def _build(self, raw: RawRead) -> EbpfReadEvent:
        partial = False
        exe = None if raw.flags & F_NO_EXE else decode_path(
            raw.exe, cut=bool(raw.flags & F_EXE_CUT), deleted=bool(raw.flags & F_EXE_DELETED))  # fmt: skip
        cmdline = parse_cmdline(raw.args)
        if raw.flags & (F_ARGS_CUT | F_ARGS_FAULT | F_EXE_CUT | F_NO_EXE):
            found = read_proc_verified(raw.tgid, raw.start_ns)  # still running: the whole thing
            if found is not None:
                self._cache.stats.completed_from_proc += 1
                exe = found[0].exe if raw.flags & (F_EXE_CUT | F_NO_EXE) else exe
                cmdline = found[0].cmdline if raw.flags & (F_ARGS_CUT | F_ARGS_FAULT) else cmdline
            else:
                partial = True
        chain: list[ProcessInfo] = []
        for anc in raw.ancestors:
            info, complete = self._cache.ancestor(anc)
            chain.append(info)
            partial = partial or not complete
        if raw.flags & F_ANC_CUT and raw.ancestors:  # deeper than the record holds: /proc for the rest
            last = raw.ancestors[-1]
            found = read_proc_verified(last.tgid, last.start_ns)
            chain.extend(ancestors_of(found[1]) if found else ())
            partial = True
        if partial:
            self._partial += 1
        return EbpfReadEvent(
            time=boot_ns_to_utc(raw.time_ns),
            path=self._path_of(raw.dev, raw.ino),
            pid=raw.tgid,
            sensor=self.name,
            access="open",
            ppid=raw.ppid or None,
            exe=exe,
            cmdline=cmdline,
            uid=raw.uid,
            user=user_name(raw.uid),
            start_time=start_time_utc(raw.start_ns),
            cwd=decode_path(raw.cwd, cut=bool(raw.flags & F_CWD_CUT)),
            ancestors=tuple(chain),
            partial=partial,
        )

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
        for index, name in enumerate(COUNTERS[:COUNTER_SLOTS]):
            raw = counters.lookup(index.to_bytes(4, "little"), 8 * self._ncpus) or b""
            out[name] = sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
        return out

    def details(self) -> dict[str, Any]:
        """What status and the heartbeat show: hooks, what is not covered, every counter."""
        loaded = self._loaded
        kernel = self.kernel_counters()
        stats = dataclasses.asdict(self._cache.stats)
        return {
            "syscall_hook": loaded.syscall_mode if loaded else None,
            "hooks": dict(loaded.hooks) if loaded else {},
            "uncovered": list(loaded.uncovered) if loaded else [],
            "watched_inodes": len(self._inodes),
            "ring_bytes": self.ring_bytes,
            "max_processes": self.max_processes,
            "counters": {
                **kernel,
                **stats,
                "events_reported": self._reported,
                "partial_events": self._partial,
                "callback_errors": self._cb_errors,
                "decode_errors": self._decode_errors,
            },
        }

    def health(self) -> EbpfHealth:
        kernel = self.kernel_counters()
        running = self._started and not self._stopped and self._fatal is None
        error = self._fatal or ("cannot watch " + "; ".join(self._unwatched) if self._unwatched else None)
        if not self._started:
            error = error or "not started"
        elif self._stopped:
            error = error or "stopped"
        loaded = self._loaded
        return EbpfHealth(
            name=self.name,
            mode=self.mode,
            healthy=running and not self._unwatched,
            error=error,
            lost_events=kernel["lost"] + self._decode_errors + self._cb_errors,
            weaker=self.capabilities.weaker,
            syscall_hook=loaded.syscall_mode if loaded else "",
            events_reported=self._reported,
            partial_events=self._partial,
            unfilled=self._cache.stats.unfilled,
            cache_misses=kernel["ancestor_cache_misses"],
            callback_errors=self._cb_errors,
            own_opens_skipped=kernel["own_opens_skipped"],
            unwatched=self._unwatched,
            uncovered=tuple(loaded.uncovered) if loaded else (),
            detail=None if not loaded else "hooks: " + ", ".join(f"{k} {v}" for k, v in loaded.hooks.items()),
        )
