"""The fanotify kernel ABI: constants, struct layouts and the two syscalls, defined once.

Values are from <linux/fanotify.h> (stable kernel ABI). Structs are parsed with `struct` in native
byte order; the layouts below are asserted against their C sizes. `parse_events` is pure (bytes in,
records out) so the tricky parts (several events per read, overflow, merged masks, missing pidfd)
are unit-tested on crafted buffers without a kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import logging
import os
import resource
import struct

log = logging.getLogger(__name__)

# fanotify_init flags
FAN_CLOEXEC = 0x0000_0001
FAN_NONBLOCK = 0x0000_0002
FAN_CLASS_NOTIF = 0x0000_0000
FAN_CLASS_CONTENT = 0x0000_0004
FAN_CLASS_PRE_CONTENT = 0x0000_0008
FAN_UNLIMITED_QUEUE = 0x0000_0010
FAN_UNLIMITED_MARKS = 0x0000_0020
FAN_REPORT_TID = 0x0000_0100
FAN_REPORT_PIDFD = 0x0000_0080  # Linux 5.15+

# event mask bits
FAN_ACCESS = 0x0000_0001
FAN_MODIFY = 0x0000_0002
FAN_CLOSE_WRITE = 0x0000_0008
FAN_CLOSE_NOWRITE = 0x0000_0010
FAN_OPEN = 0x0000_0020
FAN_Q_OVERFLOW = 0x0000_4000
FAN_OPEN_PERM = 0x0001_0000
FAN_ACCESS_PERM = 0x0002_0000
FAN_OPEN_EXEC_PERM = 0x0004_0000
FAN_EVENT_ON_CHILD = 0x0800_0000
FAN_ONDIR = 0x4000_0000
FAN_PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

# fanotify_mark flags
FAN_MARK_ADD = 0x0000_0001
FAN_MARK_REMOVE = 0x0000_0002
FAN_MARK_DONT_FOLLOW = 0x0000_0004
FAN_MARK_ONLYDIR = 0x0000_0008
FAN_MARK_FLUSH = 0x0000_0080

# responses
FAN_ALLOW = 0x01
FAN_DENY = 0x02

# special fd values in event metadata / pidfd info records
FAN_NOFD = -1
FAN_NOPIDFD = FAN_NOFD  # the reader had already exited when the pidfd was to be made
FAN_EPIDFD = -2  # any other error creating the pidfd

FANOTIFY_METADATA_VERSION = 3
FAN_EVENT_INFO_TYPE_PIDFD = 4

AT_FDCWD = -100

# struct fanotify_event_metadata { u32 event_len; u8 vers; u8 reserved; u16 metadata_len;
#                                  aligned_u64 mask; s32 fd; s32 pid; }
METADATA = struct.Struct("=IBBHQii")
# struct fanotify_event_info_header { u8 info_type; u8 pad; u16 len; }
INFO_HEADER = struct.Struct("=BBH")
# struct fanotify_event_info_pidfd { header; s32 pidfd; }
INFO_PIDFD = struct.Struct("=BBHi")
# struct fanotify_response { s32 fd; u32 response; }
RESPONSE = struct.Struct("=iI")

assert METADATA.size == 24 and INFO_PIDFD.size == 8 and RESPONSE.size == 8

#: Returned as pidfd when the kernel was not asked to report pidfds (no FAN_REPORT_PIDFD).
PIDFD_NOT_REPORTED: int | None = None


class FanotifyAbiError(Exception):
    """The kernel handed us a buffer we do not understand (version mismatch, truncated record)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RawEvent:
    """One fanotify record as the kernel reported it. `fd`/`pidfd` are open fds the caller owns."""

    mask: int
    fd: int  # FAN_NOFD for overflow records
    pid: int
    pidfd: int | None = PIDFD_NOT_REPORTED  # None, a real fd, FAN_NOPIDFD or FAN_EPIDFD

    @property
    def overflow(self) -> bool:
        return bool(self.mask & FAN_Q_OVERFLOW)

    @property
    def permission(self) -> bool:
        return bool(self.mask & FAN_PERM_EVENTS)

    def owned_fds(self) -> list[int]:
        """Every fd the kernel installed in our table for this record (all must be closed)."""
        fds = [self.fd] if self.fd >= 0 else []
        if self.pidfd is not None and self.pidfd >= 0:
            fds.append(self.pidfd)
        return fds


def parse_events(buf: bytes | bytearray | memoryview) -> list[RawEvent]:
    """Split one read() buffer into records, walking event_len (there are usually several).

    Raises FanotifyAbiError on a version mismatch or a truncated/looping record; the events
    already parsed are attached as `.events` so the caller can still close their fds.
    """
    view = memoryview(buf)
    events: list[RawEvent] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < METADATA.size:
            raise _abi_error(f"truncated metadata at offset {offset}", events)
        event_len, vers, _reserved, metadata_len, mask, fd, pid = METADATA.unpack_from(view, offset)
        if vers != FANOTIFY_METADATA_VERSION:
            raise _abi_error(
                f"fanotify metadata version {vers}, this agent understands {FANOTIFY_METADATA_VERSION}",
                events,
            )
        if metadata_len < METADATA.size or event_len < metadata_len or offset + event_len > len(view):
            raise _abi_error(
                f"bad record at offset {offset}: event_len={event_len} metadata_len={metadata_len}",
                events,
            )
        pidfd = _parse_info_records(view[offset + metadata_len : offset + event_len])
        events.append(RawEvent(mask=mask, fd=fd, pid=pid, pidfd=pidfd))
        offset += event_len
    return events


def _parse_info_records(info: memoryview) -> int | None:
    pidfd: int | None = PIDFD_NOT_REPORTED
    offset = 0
    while len(info) - offset >= INFO_HEADER.size:
        info_type, _pad, length = INFO_HEADER.unpack_from(info, offset)
        if length < INFO_HEADER.size or offset + length > len(info):
            break  # malformed info record: ignore the rest rather than loop
        if info_type == FAN_EVENT_INFO_TYPE_PIDFD and length >= INFO_PIDFD.size:
            pidfd = INFO_PIDFD.unpack_from(info, offset)[3]
        offset += length
    return pidfd


def _abi_error(message: str, events: list[RawEvent]) -> FanotifyAbiError:
    error = FanotifyAbiError(message)
    error.events = events  # type: ignore[attr-defined]
    return error


def pack_event(mask: int, fd: int, pid: int, pidfd: int | None = None, vers: int = 3) -> bytes:
    """Build one record as the kernel would (used by tests and documentation of the layout)."""
    info = b"" if pidfd is None else INFO_PIDFD.pack(FAN_EVENT_INFO_TYPE_PIDFD, 0, INFO_PIDFD.size, pidfd)
    event_len = METADATA.size + len(info)
    return METADATA.pack(event_len, vers, 0, METADATA.size, mask, fd, pid) + info


def allow_response(fd: int) -> bytes:
    return RESPONSE.pack(fd, FAN_ALLOW)


class _Libc:
    """Lazy ctypes bindings: importing this module never touches libc (tests parse without it)."""

    _lib: ctypes.CDLL | None = None

    @classmethod
    def get(cls) -> ctypes.CDLL:
        if cls._lib is None:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
            lib.fanotify_init.restype = ctypes.c_int
            lib.fanotify_mark.argtypes = [
                ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p
            ]  # fmt: skip
            lib.fanotify_mark.restype = ctypes.c_int
            cls._lib = lib
        return cls._lib


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """Return the fanotify group fd; raise OSError(errno) like os functions do."""
    try:
        lib = _Libc.get()
        func = lib.fanotify_init
    except (OSError, AttributeError) as exc:
        raise OSError(errno.ENOSYS, f"libc has no fanotify_init: {exc}") from exc
    fd = func(flags, event_f_flags)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def fanotify_mark(fan_fd: int, flags: int, mask: int, path: str, dirfd: int = AT_FDCWD) -> None:
    ret = _Libc.get().fanotify_mark(fan_fd, flags, mask, dirfd, os.fsencode(path))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_mark({path!r}): {os.strerror(err)}", path)


# event_f_flags for the fds the kernel opens for us: read-only, never inherited by children.
EVENT_F_FLAGS = os.O_RDONLY | getattr(os, "O_LARGEFILE", 0) | os.O_CLOEXEC


def event_inode(fd: int) -> tuple[int, int]:
    """(st_dev, st_ino) of an event fd: which file the reader opened, whatever name it used."""
    try:
        st = os.fstat(fd)
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)


def event_fd_path(fd: int) -> str | None:
    """The path of an event fd as the kernel names it; never opens anything (a mark would hold us)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target.removesuffix(" (deleted)")  # the reader opened a since-replaced version


def raise_nofile_limit() -> None:
    # Each held event costs up to two fds; if the kernel cannot install them it DENIES the reader.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise RLIMIT_NOFILE from %d: %s", soft, exc)
