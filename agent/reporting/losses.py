"""Counters of reads the agent saw but could not keep, readable by `status` even on a full disk.

* ``readlog_failed``: reads that could not be written to the local read log (disk full, database
  error). Each is still spooled for the issuer if the spool can take it.
* ``spool_failed``: events (reads, tamper reports, self-reports) that could not be queued for upload;
  the issuer never gets them.

Both are cumulative (they survive restarts), go out in every heartbeat, and an alert counts them
as context that may be incomplete. They are the very numbers a full disk would otherwise hide, so
they are not kept in state.json (a full disk cannot take its atomic rewrite): they live in a small
file allocated when the agent starts (``losses`` in the state directory) and are overwritten in
place, which needs no new block — on a full disk too. A torn record (a crash mid-write) reads as
zeros plus an error in the log; the counts in memory stay right and are written again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from agent import osflags

log = logging.getLogger(__name__)

LOSSES_FILE = "losses"
RECORD_BYTES = 512  # one fixed-size record at offset 0, padded with spaces and a newline
ALLOCATED_BYTES = 4096
WRITE_EVERY = 1.0  # seconds: a storm of failures costs at most one pwrite per second
LOG_EVERY = 60.0  # a full disk fails every write: one error line a minute, the count says the rest
WHAT = {"readlog_failed": "the read log", "spool_failed": "the upload spool"}
NAMES = ("readlog_failed", "spool_failed")


def _encode(counts: dict[str, int]) -> bytes:
    body = json.dumps(counts, sort_keys=True, separators=(",", ":")).encode()
    return body.ljust(RECORD_BYTES - 1) + b"\n"


def read_losses(state_dir: str | os.PathLike[str]) -> dict[str, int]:
    """The counts as last written (zeros when there is no file yet); never raises."""
    counts = dict.fromkeys(NAMES, 0)
    try:
        data = (Path(state_dir) / LOSSES_FILE).read_bytes()[:RECORD_BYTES]
        stored = json.loads(data.decode().strip() or "{}")
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.error("cannot read the loss counters: %s", exc)
        return counts
    for name in NAMES:
        value = stored.get(name) if isinstance(stored, dict) else None
        if isinstance(value, int) and value > 0:
            counts[name] = value
    return counts


def _write_at_start(fd: int, data: bytes) -> None:
    """Overwrite the start of the file: pwrite where it exists (POSIX), seek + write on Windows."""
    if osflags.POSIX:
        os.pwrite(fd, data, 0)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)


class LossCounters:
    """Thread-safe; `bump` never raises (it is called exactly when writing just failed)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOSSES_FILE
        self._lock = threading.Lock()
        self._counts = read_losses(state_dir)
        self._dirty = False
        self._written_at = 0.0
        self._fd = -1
        self._logged_at: dict[str, float] = {}
        try:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
            self._fd = os.open(self.path, flags, 0o600)
            # Written out in full now, so the blocks are ours: later writes only overwrite them.
            _write_at_start(self._fd, _encode(self._counts).ljust(ALLOCATED_BYTES, b" "))
            os.fsync(self._fd)
        except OSError as exc:  # already full at start: counted in memory, sent in heartbeats
            log.error("cannot set up %s (%s): loss counts reach the issuer but not `status`", self.path, exc)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + by
            self._dirty = True
            due = time.monotonic() - self._written_at >= WRITE_EVERY
        if due:
            self.flush()

    def lose(self, name: str, exc: BaseException | None) -> None:
        """Count one event that could not be written; log the first and then once a minute."""
        self.bump(name)
        now = time.monotonic()
        with self._lock:
            due = now - self._logged_at.get(name, -LOG_EVERY) >= LOG_EVERY
            if due:
                self._logged_at[name] = now
            total = self._counts.get(name, 0)
        if due:
            log.error(
                "could not write to %s (%s): counted in %s (%d so far); it is reported in status, "
                "the heartbeat and any alert of this device",
                WHAT.get(name, name), exc if exc is not None else "see the error above", name, total,
            )  # fmt: skip

    def flush(self) -> None:
        with self._lock:
            if not self._dirty or self._fd < 0:
                return
            record = _encode(self._counts)
            try:
                _write_at_start(self._fd, record)  # in place, into blocks allocated at start
            except OSError as exc:
                log.error("cannot write the loss counters: %s", exc)
                return
            self._dirty = False
            self._written_at = time.monotonic()

    def close(self) -> None:
        self.flush()
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


__all__ = ["LOSSES_FILE", "NAMES", "LossCounters", "read_losses"]
