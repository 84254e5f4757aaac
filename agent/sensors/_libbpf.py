"""A small ctypes binding to libbpf's stable C API (libbpf.so.1, libbpf >= 1.0).

Only what the eBPF sensor needs: open/load an object, enable or disable programs, attach them,
touch maps by fd, consume a ring buffer, and route libbpf's own messages to `logging`.

Every libbpf >= 1.0 call reports errors the same way (NULL or a negative errno, with errno set),
so each failure becomes one LibbpfError naming the call, the object and the kernel's errno text.
ctypes releases the GIL around each foreign call, so a thread blocked in ring_buffer__poll does
not stall the rest of the agent; callbacks re-acquire it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SONAME = "libbpf.so.1"
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

_c = ctypes
_PTR = _c.c_void_p
_SAMPLE_FN = _c.CFUNCTYPE(_c.c_int, _c.c_void_p, _c.c_void_p, _c.c_size_t)
# int (*)(enum libbpf_print_level, const char *fmt, va_list): on x86-64 and arm64 a va_list
# argument travels as a pointer (to the array / to a copy of the struct), which vsnprintf takes as is.
_PRINT_FN = _c.CFUNCTYPE(_c.c_int, _c.c_int, _c.c_char_p, _c.c_void_p)
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class LibbpfError(OSError):
    """A libbpf call failed; `errno` is the kernel's (or libbpf's) error number."""

    def __init__(self, call: str, err: int, what: str = "") -> None:
        err = abs(err) or errno.EINVAL
        text = os.strerror(err) if err < 4000 else f"libbpf error {err}"
        self.errno_name = errno.errorcode.get(err, str(err))
        subject = f" {what}" if what else ""
        super().__init__(err, f"{call}{subject}: {text} ({self.errno_name})")
        self.call = call
        self.reason = f"{self.errno_name} ({text})"  # the kernel's answer alone, for status lines


class LibbpfMissing(OSError):
    """No usable libbpf.so.1 was found (or it is older than 1.0)."""


def candidate_paths() -> list[str]:
    """Where libbpf.so.1 is looked for: a copy bundled next to the package first, then the system."""
    here = Path(__file__).resolve().parent / "bpf" / SONAME
    paths = [str(here)]
    bundle = getattr(sys, "_MEIPASS", None)  # PyInstaller's unpack dir
    if bundle:
        paths += [str(Path(bundle) / "agent" / "sensors" / "bpf" / SONAME), str(Path(bundle) / SONAME)]
    return paths


def _load_cdll() -> ctypes.CDLL:
    for path in candidate_paths():
        if os.path.exists(path):
            return ctypes.CDLL(path, use_errno=True)
    found = ctypes.util.find_library("bpf")
    for name in (SONAME, found):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise LibbpfMissing(f"{SONAME} not found (install the Debian package libbpf1, or bundle it)")


def _proto(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


class _Lib:
    """The loaded library with typed prototypes; one per process."""

    _instance: ctypes.CDLL | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> ctypes.CDLL:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls._bind(_load_cdll())
            return cls._instance

    @staticmethod
    def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
        u32, i32, u64, b = _c.c_uint32, _c.c_int, _c.c_uint64, _c.c_bool
        _proto(lib, "libbpf_major_version", u32)
        _proto(lib, "libbpf_minor_version", u32)
        major, minor = lib.libbpf_major_version(), lib.libbpf_minor_version()
        if major < 1:
            raise LibbpfMissing(f"libbpf {major}.{minor} is too old; libbpf >= 1.0 is needed")
        _proto(lib, "libbpf_set_print", _PTR, _PRINT_FN)
        _proto(lib, "bpf_object__open_file", _PTR, _c.c_char_p, _PTR)
        _proto(lib, "bpf_object__load", i32, _PTR)
        _proto(lib, "bpf_object__close", None, _PTR)
        _proto(lib, "bpf_object__next_program", _PTR, _PTR, _PTR)
        _proto(lib, "bpf_object__find_program_by_name", _PTR, _PTR, _c.c_char_p)
        _proto(lib, "bpf_object__find_map_by_name", _PTR, _PTR, _c.c_char_p)
        _proto(lib, "bpf_program__name", _c.c_char_p, _PTR)
        _proto(lib, "bpf_program__section_name", _c.c_char_p, _PTR)
        _proto(lib, "bpf_program__set_autoload", i32, _PTR, b)
        _proto(lib, "bpf_program__autoload", b, _PTR)
        _proto(lib, "bpf_program__attach", _PTR, _PTR)
        _proto(lib, "bpf_program__attach_tracepoint", _PTR, _PTR, _c.c_char_p, _c.c_char_p)
        _proto(lib, "bpf_link__destroy", i32, _PTR)
        _proto(lib, "bpf_map__fd", i32, _PTR)
        _proto(lib, "bpf_map__set_max_entries", i32, _PTR, u32)
        _proto(lib, "bpf_map__max_entries", u32, _PTR)
        _proto(lib, "bpf_map__value_size", u32, _PTR)
        _proto(lib, "bpf_map_update_elem", i32, i32, _PTR, _PTR, u64)
        _proto(lib, "bpf_map_lookup_elem", i32, i32, _PTR, _PTR)
        _proto(lib, "bpf_map_delete_elem", i32, i32, _PTR)
        _proto(lib, "bpf_map_get_next_key", i32, i32, _PTR, _PTR)
        _proto(lib, "ring_buffer__new", _PTR, i32, _SAMPLE_FN, _PTR, _PTR)
        _proto(lib, "ring_buffer__poll", i32, _PTR, i32)
        _proto(lib, "ring_buffer__consume", i32, _PTR)
        _proto(lib, "ring_buffer__free", None, _PTR)
        return lib


def library() -> ctypes.CDLL:
    """The bound libbpf; raises LibbpfMissing when there is none."""
    return _Lib.get()


def version() -> str:
    lib = library()
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


def _errno_of(ret: int | None = None) -> int:
    # libbpf >= 1.0 returns -errno and also sets errno; NULL-returning calls only set errno.
    if ret is not None and ret < 0:
        return -ret
    return ctypes.get_errno() or errno.EINVAL


# ---- libbpf's messages -> logging ---------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.restype = _c.c_int
_libc.vsnprintf.argtypes = [_c.c_char_p, _c.c_size_t, _c.c_char_p, _c.c_void_p]
_print_ref: object = None  # the CFUNCTYPE object must outlive every libbpf call that may print
_print_lock = threading.Lock()
_expected_failures = threading.local()


def _format(fmt: bytes, args: int | None) -> str:
    buf = ctypes.create_string_buffer(1 << 20)  # the verifier log arrives as one message
    _libc.vsnprintf(buf, len(buf), fmt, args)
    return buf.value.decode(errors="replace").rstrip("\n")


def route_messages(logger: logging.Logger = log) -> None:
    """Send libbpf's warnings/info/debug lines to `logger` (the verifier log arrives as WARNING)."""
    global _print_ref

    def printer(level: int, fmt: bytes, args: int | None) -> int:
        try:
            py_level = _LEVELS.get(level, logging.DEBUG)
            if getattr(_expected_failures, "depth", 0):  # a probe that may fail: its noise is debug
                py_level = logging.DEBUG
            if logger.isEnabledFor(py_level):
                logger.log(py_level, "%s", _format(fmt, args))  # libbpf prefixes "libbpf: " itself
        except Exception:  # an exception must never unwind into C
            pass
        return 0

    with _print_lock:
        if _print_ref is not None:
            return
        callback = _PRINT_FN(printer)
        library().libbpf_set_print(callback)
        _print_ref = callback


@contextlib.contextmanager
def expected_failure() -> Iterator[None]:
    """libbpf messages inside this block are logged at DEBUG (e.g. trying a hook the kernel may refuse)."""
    _expected_failures.depth = getattr(_expected_failures, "depth", 0) + 1
    try:
        yield
    finally:
        _expected_failures.depth -= 1


# ---- objects, programs, links, maps -----------------------------------------------------------


class Link:
    """An attached program; destroy() detaches it (idempotent)."""

    def __init__(self, ptr: int, program: str) -> None:
        self._ptr: int | None = ptr
        self.program = program

    def destroy(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr:
            library().bpf_link__destroy(ptr)


class Program:
    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name = library().bpf_program__name(ptr).decode()
        self.section = library().bpf_program__section_name(ptr).decode()

    @property
    def autoload(self) -> bool:
        return bool(library().bpf_program__autoload(self._ptr))

    def set_autoload(self, on: bool) -> None:
        """Before load(): False keeps the program out of the kernel (an optional hook)."""
        ret = library().bpf_program__set_autoload(self._ptr, on)
        if ret < 0:
            raise LibbpfError("bpf_program__set_autoload", _errno_of(ret), self.name)

    def attach(self) -> Link:
        """Attach where the section name says (SEC("tp_btf/sched_process_exec"), ...)."""
        ctypes.set_errno(0)
        ptr = library().bpf_program__attach(self._ptr)
        if not ptr:
            raise LibbpfError("bpf_program__attach", _errno_of(), f"{self.name} ({self.section})")
        return Link(ptr, self.name)

    def attach_tracepoint(self, category: str, name: str) -> Link:
        """Attach to one classic tracepoint (a program may be attached to several)."""
        ctypes.set_errno(0)
        ptr = library().bpf_program__attach_tracepoint(self._ptr, category.encode(), name.encode())
        if not ptr:
            raise LibbpfError(
                "bpf_program__attach_tracepoint", _errno_of(), f"{self.name} -> {category}/{name}"
            )
        return Link(ptr, f"{self.name}@{category}/{name}")


class Map:
    """A map of a loaded object, addressed through its fd with raw byte keys and values."""

    def __init__(self, obj: BpfObject, ptr: int, name: str) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name = name

    @property
    def fd(self) -> int:
        fd = library().bpf_map__fd(self._ptr)
        if fd < 0:
            raise LibbpfError("bpf_map__fd", _errno_of(fd), self.name)
        return fd

    @property
    def max_entries(self) -> int:
        return int(library().bpf_map__max_entries(self._ptr))

    @property
    def value_size(self) -> int:
        return int(library().bpf_map__value_size(self._ptr))

    def set_max_entries(self, entries: int) -> None:
        """Before load(): resize (a ring buffer's size in bytes: a power of 2, a multiple of pages)."""
        ret = library().bpf_map__set_max_entries(self._ptr, entries)
        if ret < 0:
            raise LibbpfError("bpf_map__set_max_entries", _errno_of(ret), self.name)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        ctypes.set_errno(0)
        ret = library().bpf_map_update_elem(self.fd, key, value, flags)
        if ret < 0:
            raise LibbpfError("bpf_map_update_elem", _errno_of(ret), self.name)

    def delete(self, key: bytes) -> bool:
        """True if the key was there; False if it was not (ENOENT)."""
        ctypes.set_errno(0)
        ret = library().bpf_map_delete_elem(self.fd, key)
        if ret < 0:
            err = _errno_of(ret)
            if err == errno.ENOENT:
                return False
            raise LibbpfError("bpf_map_delete_elem", err, self.name)
        return True

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        """The value (per-CPU maps: value_size must cover every possible CPU), None if absent."""
        out = ctypes.create_string_buffer(value_size)
        ctypes.set_errno(0)
        ret = library().bpf_map_lookup_elem(self.fd, key, out)
        if ret < 0:
            err = _errno_of(ret)
            if err == errno.ENOENT:
                return None
            raise LibbpfError("bpf_map_lookup_elem", err, self.name)
        return out.raw

    def keys(self, key_size: int) -> Iterator[bytes]:
        """Every key, by bpf_map_get_next_key (a deleted key restarts the walk at the start)."""
        prev: bytes | None = None
        nxt = ctypes.create_string_buffer(key_size)
        while True:
            ctypes.set_errno(0)
            ret = library().bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                err = _errno_of(ret)
                if err == errno.ENOENT:
                    return
                raise LibbpfError("bpf_map_get_next_key", err, self.name)
            prev = nxt.raw
            yield prev


class BpfObject:
    """One opened .bpf.o; load() puts every program with autoload on into the kernel."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        lib = library()
        ctypes.set_errno(0)
        ptr = lib.bpf_object__open_file(os.fsencode(self.path), None)
        if not ptr:
            raise LibbpfError("bpf_object__open_file", _errno_of(), self.path)
        self._ptr: int | None = ptr
        self.loaded = False

    def _live(self) -> int:
        if not self._ptr:
            raise ValueError("BPF object is closed")
        return self._ptr

    def programs(self) -> list[Program]:
        out: list[Program] = []
        prog = library().bpf_object__next_program(self._live(), None)
        while prog:
            out.append(Program(self, prog))
            prog = library().bpf_object__next_program(self._live(), prog)
        return out

    def program(self, name: str) -> Program:
        ptr = library().bpf_object__find_program_by_name(self._live(), name.encode())
        if not ptr:
            raise LibbpfError("bpf_object__find_program_by_name", errno.ENOENT, name)
        return Program(self, ptr)

    def map(self, name: str) -> Map:
        ptr = library().bpf_object__find_map_by_name(self._live(), name.encode())
        if not ptr:
            raise LibbpfError("bpf_object__find_map_by_name", errno.ENOENT, name)
        return Map(self, ptr, name)

    def load(self) -> None:
        ctypes.set_errno(0)
        ret = library().bpf_object__load(self._live())
        if ret < 0:
            raise LibbpfError("bpf_object__load", _errno_of(ret), self.path)
        self.loaded = True

    def close(self) -> None:
        """Unload every program and map of the object (links must be destroyed first). Idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr:
            library().bpf_object__close(ptr)


SampleHandler = Callable[[bytes], None]


class RingBuffer:
    """Consumer of one BPF ring buffer map; `handler` gets each record's bytes (a copy)."""

    def __init__(self, ring: Map, handler: SampleHandler, on_error: Callable[[BaseException], None]) -> None:
        def sample(_ctx: int | None, data: int, size: int) -> int:
            try:
                handler(ctypes.string_at(data, size))
            except BaseException as exc:  # never unwind into libbpf; the sensor counts it
                on_error(exc)
            return 0

        self._callback = _SAMPLE_FN(sample)  # kept alive as long as the ring buffer
        ctypes.set_errno(0)
        ptr = library().ring_buffer__new(ring.fd, self._callback, None, None)
        if not ptr:
            raise LibbpfError("ring_buffer__new", _errno_of(), ring.name)
        self._ptr: int | None = ptr

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records and consume them; the number consumed (EINTR -> 0)."""
        if not self._ptr:
            raise ValueError("ring buffer is freed")
        ret = library().ring_buffer__poll(self._ptr, timeout_ms)
        if ret < 0:
            err = _errno_of(ret)
            if err == errno.EINTR:
                return 0
            raise LibbpfError("ring_buffer__poll", err)
        return ret

    def consume(self) -> int:
        """Consume whatever is there without waiting."""
        if not self._ptr:
            raise ValueError("ring buffer is freed")
        ret = library().ring_buffer__consume(self._ptr)
        if ret < 0:
            raise LibbpfError("ring_buffer__consume", _errno_of(ret))
        return ret

    def free(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr:
            library().ring_buffer__free(ptr)
