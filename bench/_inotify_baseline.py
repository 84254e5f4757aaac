"""The naive alternative the sensors are measured against (bench only, never shipped): inotify tells
that the file was opened (IN_OPEN, no pid), then psutil walks every process looking for one that
has the file open (what `lsof FILE` does). Whoever already closed it is never found.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import os
import select
import struct
import threading
from collections.abc import Iterable

import psutil

from agent.events.model import ProcessInfo, ReadEvent
from agent.sensors.base import AFTER_THE_FACT, ReadCallback, Sensor, SensorHealth

IN_OPEN = 0x0000_0020
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len


class InotifyPsutilBaseline(Sensor):
    name = "inotify"
    mode = "inotify+psutil"
    capabilities = AFTER_THE_FACT

    def __init__(self, paths: Iterable[str], callback: ReadCallback) -> None:
        super().__init__(paths, callback)
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = -1
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.opens = 0  # IN_OPEN events seen
        self.found = 0  # processes found holding the file

    @classmethod
    def check_available(cls) -> str | None:
        return None

    def start(self) -> None:
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for path in self.paths:
            if self._libc.inotify_add_watch(self._fd, os.fsencode(path), IN_OPEN) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self._thread = threading.Thread(target=self._loop, name="tripkey-inotify-baseline", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
                offset += EVENT.size + length
                if mask & IN_OPEN:
                    self.opens += 1
                    self._who_has_it_open()

    def _who_has_it_open(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for proc in psutil.process_iter():
            try:
                holding = [f.path for f in proc.open_files() if f.path in self.paths]
                if not holding:
                    continue
                with proc.oneshot():
                    parents = tuple(ProcessInfo(pid=p.pid) for p in proc.parents())
                    event = ReadEvent(
                        time=now, path=holding[0], pid=proc.pid, sensor=self.name, ppid=proc.ppid(),
                        exe=proc.exe(), cmdline=tuple(proc.cmdline()), uid=proc.uids().real,
                        ancestors=parents,
                    )  # fmt: skip
            except (psutil.Error, OSError):
                continue
            self.found += 1
            self.callback(event)

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def set_paths(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)

    def health(self) -> SensorHealth:
        return SensorHealth(name=self.name, mode=self.mode, healthy=self._fd >= 0, lost_events=0)
