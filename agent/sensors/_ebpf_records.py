"""The eBPF sensor's kernel records, decoded; and the kernel's name for a watched file.

Mirrors agent/sensors/bpf/tripkey.h (sizes, flags, counter order): change both together.
`check_layout()` compares these constants with the header when the C source is at hand (tests),
and a ring-buffer record of another size than READ_SIZE or REPEAT_SIZE is refused (and counted).

Kernel identity of a file: the BPF program compares `inode->i_sb->s_dev` (kernel encoding
MAJOR << 20 | MINOR) and `inode->i_ino`. Userspace `st_dev` is glibc's encoding of the same
number, and on btrfs or overlayfs stat may even report another device than the superblock's. So
the identity is read the way the kernel states it: the open file's `ino` and `mnt_id` from
/proc/self/fdinfo, and that mount's `major:minor` from /proc/self/mountinfo (printed from
sb->s_dev). Plain stat with the encoding converted is the fallback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import struct
import time
from pathlib import Path

from agent.sensors._procinfo import boot_time

# ---- layout constants (tripkey.h) ----------------------------------------------------------

PATH_LEN = 512
ARGS_LEN = 4096
CACHE_ARGS_LEN = 384
MAX_ANC = 32

F_EXE_CUT = 0x1
F_EXE_DELETED = 0x2
F_ARGS_CUT = 0x4
F_ARGS_FAULT = 0x8
F_CWD_CUT = 0x10
F_ANC_CUT = 0x20
F_EXE_CACHED = 0x40
F_NO_EXE = 0x80
F_FORKED = 0x400
F_NO_CWD = 0x800

SRC_IOURING = 0x10000
SRC_LSM = 0x20000

REC_READ = 1
REC_REPEAT = 2

#: enum tk_counter, in order; the per-CPU array has COUNTER_SLOTS entries.
COUNTERS = (
    "reads",
    "lost",
    "own_opens_skipped",
    "ancestor_cache_misses",
    "reader_cache_misses",
    "cache_full",
    "execs",
    "forks",
    "forks_unknown_parent",
    "exits",
    "exited_kept",
    "args_faults",
    "iouring_opens",
    "iouring_direct_opens",
    "repeats",
)
COUNTER_SLOTS = 16

_HEADER = struct.Struct("<II5Q8I4H")  # kind, flags, time, start, exec, ino, seq | dev..pad | 4 lengths
_ANC = struct.Struct("<IIQQ")  # tgid, uid, start_ns, exec_ns
_ANC_OFF = _HEADER.size
_EXE_OFF = _ANC_OFF + MAX_ANC * _ANC.size
_CWD_OFF = _EXE_OFF + PATH_LEN
_ARGS_OFF = _CWD_OFF + PATH_LEN
READ_SIZE = _ARGS_OFF + ARGS_LEN
_REPEAT = struct.Struct("<IIQQQQIIII")  # kind, source, time, start, ino, seq, dev, tgid, tid, pad
REPEAT_SIZE = _REPEAT.size

PROC_HEADER = struct.Struct("<QQIIIIIHH")  # exec, exit, pinned, ppid, flags, pad, args_total, 2 lens
PROC_SIZE = PROC_HEADER.size + PATH_LEN + CACHE_ARGS_LEN
PROC_KEY = struct.Struct("<IIQ")  # tgid, pad, start_ns
FILE_KEY = struct.Struct("<IIQ")  # dev, pad, ino
CONFIG = struct.Struct("<II")  # agent tgid, pad

_CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // _CLK_TCK


# ---- decoded records --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Ancestor:
    tgid: int
    uid: int
    start_ns: int
    exec_ns: int  # 0: no cache entry when the read happened


@dataclasses.dataclass(frozen=True, slots=True)
class RawRead:
    time_ns: int  # CLOCK_BOOTTIME
    start_ns: int
    exec_ns: int
    dev: int
    ino: int
    tgid: int
    tid: int
    ppid: int
    uid: int
    flags: int
    source: int
    args_total: int
    exe: bytes
    cwd: bytes
    args: bytes
    ancestors: tuple[Ancestor, ...]
    seq: int = 0  # names this record for the repeats that refer to it


@dataclasses.dataclass(frozen=True, slots=True)
class RawRepeat:
    """Another open by the process whose read record `seq` still describes it."""

    time_ns: int
    start_ns: int
    dev: int
    ino: int
    tgid: int
    tid: int
    source: int
    seq: int


def record_kind(data: bytes) -> int:
    return int.from_bytes(data[:4], "little")


def parse_read(data: bytes) -> RawRead:
    if len(data) != READ_SIZE or record_kind(data) != REC_READ:
        raise ValueError(f"read record of {len(data)} bytes, expected {READ_SIZE} (object/agent differ)")
    (_kind, flags, t, start, exec_ns, ino, seq, dev, tgid, tid, ppid, uid, source, args_total, _pad,
     exe_len, cwd_len, args_len, n_anc) = _HEADER.unpack_from(data)  # fmt: skip
    n_anc = min(n_anc, MAX_ANC)
    ancestors = tuple(Ancestor(*_ANC.unpack_from(data, _ANC_OFF + i * _ANC.size)) for i in range(n_anc))
    return RawRead(
        time_ns=t,
        start_ns=start,
        exec_ns=exec_ns,
        dev=dev,
        ino=ino,
        tgid=tgid,
        tid=tid,
        ppid=ppid,
        uid=uid,
        flags=flags,
        source=source,
        args_total=args_total,
        exe=data[_EXE_OFF : _EXE_OFF + min(exe_len, PATH_LEN)],
        cwd=data[_CWD_OFF : _CWD_OFF + min(cwd_len, PATH_LEN)],
        args=data[_ARGS_OFF : _ARGS_OFF + min(args_len, ARGS_LEN)],
        ancestors=ancestors,
        seq=seq,
    )


def parse_repeat(data: bytes) -> RawRepeat:
    if len(data) != REPEAT_SIZE or record_kind(data) != REC_REPEAT:
        raise ValueError(f"repeat record of {len(data)} bytes, expected {REPEAT_SIZE} (object/agent differ)")
    _kind, source, t, start, ino, seq, dev, tgid, tid, _pad = _REPEAT.unpack_from(data)
    return RawRepeat(time_ns=t, start_ns=start, dev=dev, ino=ino, tgid=tgid, tid=tid, source=source, seq=seq)


@dataclasses.dataclass(frozen=True, slots=True)
class RawProc:
    """One process-cache entry (what exec stored, or fork copied)."""

    exec_ns: int
    exit_ns: int  # 0 while alive
    pinned: bool
    ppid: int
    flags: int
    args_total: int
    exe: bytes
    args: bytes


def parse_proc(data: bytes) -> RawProc:
    (exec_ns, exit_ns, pinned, ppid, flags, _pad, args_total,
     exe_len, args_len) = PROC_HEADER.unpack_from(data)  # fmt: skip
    base = PROC_HEADER.size
    return RawProc(
        exec_ns=exec_ns,
        exit_ns=exit_ns,
        pinned=bool(pinned),
        ppid=ppid,
        flags=flags,
        args_total=args_total,
        exe=data[base : base + min(exe_len, PATH_LEN)],
        args=data[base + PATH_LEN : base + PATH_LEN + min(args_len, CACHE_ARGS_LEN)],
    )


def decode_path(raw: bytes, cut: bool = False, deleted: bool = False, empty: str | None = None) -> str | None:
    """Leaf-first NUL-terminated components -> "/usr/bin/cat"; a cut path starts with ".../".
    No components at all is `empty` (None: unknown; "/" for a walk that reached the root at once)."""
    parts = [p for p in raw.split(b"\0") if p]
    if not parts:
        return None if cut else empty
    parts.reverse()
    text = ("..." if cut else "") + "/" + "/".join(os.fsdecode(p) for p in parts)
    return text + " (deleted)" if deleted else text


def parse_cmdline(raw: bytes) -> tuple[str, ...]:
    """argv from the NUL-separated argument area (as /proc/<pid>/cmdline; one terminator dropped)."""
    if not raw:
        return ()
    if raw.endswith(b"\0"):  # a trailing empty argument is an argument: drop exactly one NUL
        raw = raw[:-1]
    return tuple(os.fsdecode(part) for part in raw.split(b"\0"))


# ---- times ----------------------------------------------------------------------------------------


def start_time_utc(start_ns: int) -> dt.datetime:
    """A process's start as procinfo computes it from /proc/<pid>/stat: whole clock ticks after
    boot (the kernel's nsec_to_clock_t truncates), so both sensors name a process identically."""
    return dt.datetime.fromtimestamp(boot_time() + (start_ns // NS_PER_TICK) / _CLK_TCK, tz=dt.UTC)


def start_ticks(start_ns: int) -> int:
    return start_ns // NS_PER_TICK


class _WallClock:
    """The offset from CLOCK_BOOTTIME to wall-clock time, re-read once a second (NTP slews it).

    Two clocks cannot be read at once: a thread preempted between the reads (a busy host) would
    shift every time it converts by the length of the preemption. So the wall clock is read
    between two boot-clock reads, and only a pair taken within 50 us is trusted."""

    refresh_ns = 1_000_000_000
    max_gap_ns = 50_000

    def __init__(self) -> None:
        self._offset = 0
        self._read_at = -self.refresh_ns

    def offset_ns(self) -> int:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if now - self._read_at >= self.refresh_ns:
            best = None
            for _ in range(20):
                before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                wall = time.time_ns()
                after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                if best is None or after - before < best[0]:
                    best = (after - before, wall - (before + after) // 2)
                if after - before <= self.max_gap_ns:
                    break
            assert best is not None
            self._offset, self._read_at = best[1], now
        return self._offset


_wall_clock = _WallClock()


def boot_ns_to_utc(boot_ns: int) -> dt.datetime:
    """A CLOCK_BOOTTIME stamp (what bpf_ktime_get_boot_ns gives) as UTC."""
    return dt.datetime.fromtimestamp((boot_ns + _wall_clock.offset_ns()) / 1e9, tz=dt.UTC)


def now_boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


# ---- the kernel's identity of a file ----------------------------------------------------------


def kernel_dev(st_dev: int) -> int:
    """Userspace st_dev (glibc encoding) -> the kernel's s_dev (MAJOR << 20 | MINOR)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


_MOUNT_DEV = re.compile(rb"^(\d+) \d+ (\d+):(\d+) ", re.MULTILINE)


def _mount_devs() -> dict[int, int]:
    raw = Path("/proc/self/mountinfo").read_bytes()
    return {int(m[1]): (int(m[2]) << 20) | int(m[3]) for m in _MOUNT_DEV.finditer(raw)}


def identity_of_fd(fd: int) -> tuple[int, int]:
    """(s_dev, i_ino) of an open file, as the BPF program will see it."""
    try:
        info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        mnt_id, ino = int(fields["mnt_id"]), int(fields["ino"])
        dev = _mount_devs().get(mnt_id)
        if dev is not None:
            return dev, ino
    except (OSError, KeyError, ValueError):
        pass
    st = os.fstat(fd)  # kernels before 5.14 print no ino in fdinfo
    return kernel_dev(st.st_dev), st.st_ino


def identity_of_path(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(s_dev, i_ino) of the file at path (symlinks followed). O_PATH: no read, no open of content,
    so watching a file neither needs read permission nor reports an open of it."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return identity_of_fd(fd)
    finally:
        os.close(fd)


def file_key(dev: int, ino: int) -> bytes:
    return FILE_KEY.pack(dev, 0, ino)


def proc_key(tgid: int, start_ns: int) -> bytes:
    return PROC_KEY.pack(tgid, 0, start_ns)


# ---- the event -----------------------------------------------------------------------------------


_HEADER_DEFINES = {
    "TK_PATH_LEN": PATH_LEN,
    "TK_ARGS_LEN": ARGS_LEN,
    "TK_CACHE_ARGS_LEN": CACHE_ARGS_LEN,
    "TK_MAX_ANC": MAX_ANC,
    "TK_F_EXE_CUT": F_EXE_CUT,
    "TK_F_EXE_DELETED": F_EXE_DELETED,
    "TK_F_ARGS_CUT": F_ARGS_CUT,
    "TK_F_ARGS_FAULT": F_ARGS_FAULT,
    "TK_F_CWD_CUT": F_CWD_CUT,
    "TK_F_ANC_CUT": F_ANC_CUT,
    "TK_F_EXE_CACHED": F_EXE_CACHED,
    "TK_F_NO_EXE": F_NO_EXE,
    "TK_F_FORKED": F_FORKED,
    "TK_F_NO_CWD": F_NO_CWD,
    "TK_SRC_IOURING": SRC_IOURING,
    "TK_SRC_LSM": SRC_LSM,
    "TK_REC_READ": REC_READ,
    "TK_REC_REPEAT": REC_REPEAT,
    "TK_C_MAX": COUNTER_SLOTS,
}


def check_layout(header: str) -> list[str]:
    """Differences between tripkey.h's text and the constants here (empty when they agree)."""
    found = {m[1]: int(m[2], 0) for m in re.finditer(r"#define\s+(TK_\w+)\s+(0x[0-9a-fA-F]+|\d+)", header)}
    found.update({m[1]: int(m[2]) for m in re.finditer(r"\b(TK_C_MAX)\s*=\s*(\d+)", header)})
    enum = re.search(r"enum tk_counter \{(.*?)\};", header, re.S)
    names = re.findall(r"^\s*(TK_C_\w+)", enum[1], re.M) if enum else []
    problems = [
        f"{k}: header {found.get(k)}, python {v}" for k, v in _HEADER_DEFINES.items() if found.get(k) != v
    ]
    if len([n for n in names if n != "TK_C_MAX"]) != len(COUNTERS):
        problems.append(f"enum tk_counter has {len(names) - 1} counters, python names {len(COUNTERS)}")
    return problems
