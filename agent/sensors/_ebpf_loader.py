"""Load tripkey.bpf.o and attach its hooks, choosing the cheapest ones this kernel allows.

Syscall hooks, in order of preference:
  tracepoint  syscalls:sys_exit_{openat,openat2,open,creat,open_by_handle_at}: each runs only for
              its own syscall. libbpf finds their ids in tracefs; if tracefs is not mounted
              (containers, minimal hosts) we mount it at /sys/kernel/tracing, as systemd does.
  raw         tp_btf sys_exit, which needs no tracefs but runs for every syscall of every task
              and filters on the syscall number: the fallback.
Process cache: tp_btf sched_process_{exec,fork,exit} (mandatory).
Optional: lsm/file_open (sees every open; refused under lockdown) is tried first; without it,
tp_btf io_uring_complete covers io_uring opens that return an fd.

Everything attached is listed in `hooks`, everything refused with the kernel's reason, and what
no attached hook sees is listed in `uncovered`: never a silent gap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path

from agent.sensors import _libbpf as bpf

log = logging.getLogger(__name__)

OBJECT_NAME = "tripkey.bpf.o"
PROCESS_PROGS = ("tk_exec", "tk_fork", "tk_exit")
SYSCALL_TRACEPOINT = "tk_sys_exit_open"  # attached to syscalls:sys_exit_<each of SYSCALLS>
SYSCALLS = ("openat", "openat2", "open", "creat", "open_by_handle_at")
RAW_SYSCALL = "tk_sys_exit"
IOURING = "tk_iouring_complete"
LSM = "tk_lsm_file_open"
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

IA32_UNCOVERED = "32-bit (ia32) processes' open syscalls (the syscall hooks skip compat syscalls)"
ALWAYS_UNCOVERED = (
    "files already open before a target was watched, and descriptors passed between processes "
    "(the opener is reported, not a later user of its descriptor)",
)


def object_path() -> Path:
    """Where the built object is looked for: next to this package, then a PyInstaller bundle."""
    here = Path(__file__).resolve().parent / "bpf" / OBJECT_NAME
    bundle = getattr(sys, "_MEIPASS", None)
    if not here.exists() and bundle:
        bundled = Path(bundle) / "agent" / "sensors" / "bpf" / OBJECT_NAME
        if bundled.exists():
            return bundled
    return here


def tracefs_ready() -> str | None:
    """The mounted tracefs directory libbpf will use, or None."""
    for directory in TRACEFS_DIRS:
        if os.path.exists(os.path.join(directory, "events")):
            return directory
    return None


def mount_tracefs() -> str | None:
    """Mount tracefs at /sys/kernel/tracing if nothing is mounted; the directory, or None if not."""
    ready = tracefs_ready()
    if ready or not os.path.isdir(TRACEFS_DIRS[0]):
        return ready
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"tracefs", TRACEFS_DIRS[0].encode(), b"tracefs", 0, None) != 0:
        log.info("cannot mount tracefs: %s", os.strerror(ctypes.get_errno()))
        return None
    log.info("mounted tracefs at %s (for the syscall tracepoints' ids)", TRACEFS_DIRS[0])
    return tracefs_ready()


@dataclasses.dataclass
class Loaded:
    """A loaded object with its links; close() detaches and unloads everything (idempotent)."""

    obj: bpf.BpfObject
    links: list[bpf.Link]
    hooks: dict[str, str]  # hook -> "attached" or why not
    uncovered: list[str]
    syscall_mode: str  # "tracepoint" | "raw"

    def close(self) -> None:
        for link in self.links:
            link.destroy()
        self.links.clear()
        self.obj.close()


def _open(path: Path, ring_bytes: int, max_processes: int, enable: set[str]) -> bpf.BpfObject:
    obj = bpf.BpfObject(path)
    try:
        for prog in obj.programs():
            prog.set_autoload(prog.name in enable)
        obj.map("events").set_max_entries(ring_bytes)
        obj.map("procs").set_max_entries(max_processes)
    except BaseException:
        obj.close()
        raise
    return obj


def _hook_name(prog: bpf.Program) -> str:
    return prog.section.split("/", 1)[-1] if "/" in prog.section else prog.section


def _lsm_refusal(path: Path) -> str | None:
    """Load the LSM program alone (cheap): None if this kernel takes it, else the kernel's answer."""
    obj = _open(path, 4096, 64, {LSM})
    try:
        with bpf.expected_failure():
            obj.load()
    except bpf.LibbpfError as exc:
        return f"refused by the kernel at load: {exc.reason}"
    finally:
        obj.close()
    return None


def _syscall_mode(requested: str) -> str:
    if requested == "raw":
        return "raw"
    if mount_tracefs() is not None:
        return "tracepoint"
    if requested == "tracepoint":
        raise bpf.LibbpfError("mount", errno.ENOENT, "tracefs (needed for syscall_hook='tracepoint')")
    return "raw"


def load(
    path: Path,
    *,
    ring_bytes: int,
    max_processes: int,
    syscall_hook: str = "auto",
    try_lsm: bool = True,
    watched: dict[bytes, int] | None = None,
    agent_tgid: int | None = None,
) -> Loaded:
    """Load and attach. `watched` (key -> value) and `agent_tgid` are written before any hook
    attaches, so the first open after attach is already filtered. Raises LibbpfError.

    Only the programs that will be attached are loaded (each costs ~0.15 s of verification)."""
    if syscall_hook not in ("auto", "tracepoint", "raw"):
        raise ValueError("syscall_hook must be auto, tracepoint or raw")
    hooks: dict[str, str] = {}
    lsm = False
    if try_lsm:
        refused = _lsm_refusal(path)
        lsm = refused is None
        if refused:
            hooks["lsm/file_open"] = refused
    mode = _syscall_mode(syscall_hook)
    enable = {*PROCESS_PROGS, SYSCALL_TRACEPOINT if mode == "tracepoint" else RAW_SYSCALL}
    enable.add(LSM if lsm else IOURING)  # with LSM, io_uring opens are seen at file_open already
    obj = _open(path, ring_bytes, max_processes, enable)
    loaded = Loaded(obj=obj, links=[], hooks=hooks, uncovered=[], syscall_mode=mode)
    try:
        obj.load()
        _fill(obj, watched or {}, agent_tgid)
        _attach_all(loaded, lsm)
    except BaseException:
        loaded.close()
        raise
    return loaded


def _fill(obj: bpf.BpfObject, watched: dict[bytes, int], agent_tgid: int | None) -> None:
    from agent.sensors._ebpf_records import CONFIG

    if agent_tgid is not None:
        obj.map("tk_config").update(b"\0\0\0\0", CONFIG.pack(agent_tgid, 0))
    watch_map = obj.map("watched")
    for key, value in watched.items():
        watch_map.update(key, value.to_bytes(4, "little"))


def _attach(loaded: Loaded, name: str, required: bool) -> bool:
    prog = loaded.obj.program(name)
    try:
        with contextlib.nullcontext() if required else bpf.expected_failure():
            loaded.links.append(prog.attach())
    except bpf.LibbpfError as exc:
        if required:
            raise
        loaded.hooks[_hook_name(prog)] = f"refused by the kernel at attach: {exc.reason}"
        return False
    loaded.hooks[_hook_name(prog)] = "attached"
    return True


def _attach_all(loaded: Loaded, lsm: bool) -> None:
    for name in PROCESS_PROGS:
        _attach(loaded, name, required=True)
    if loaded.syscall_mode == "tracepoint":
        prog = loaded.obj.program(SYSCALL_TRACEPOINT)
        for syscall in SYSCALLS:  # all or nothing: attach raises, and load() closes what was attached
            loaded.links.append(prog.attach_tracepoint("syscalls", f"sys_exit_{syscall}"))
            loaded.hooks[f"syscalls/sys_exit_{syscall}"] = "attached"
    else:
        _attach(loaded, RAW_SYSCALL, required=True)
    if lsm and _attach(loaded, LSM, required=False):
        loaded.hooks["io_uring_complete"] = "not needed: lsm/file_open sees io_uring opens"
    else:
        if lsm:  # loaded but not attached: io_uring's own hook was not loaded, so it is not covered
            loaded.uncovered.append("io_uring opens")
        elif _attach(loaded, IOURING, required=False):
            loaded.uncovered.append("io_uring direct opens into a fixed-file table (counted, not attributed)")
        else:
            loaded.uncovered.append("io_uring opens")
        loaded.uncovered.append(IA32_UNCOVERED)
    loaded.uncovered.extend(ALWAYS_UNCOVERED)
