"""A deadline for the provenance probe: nothing the probe touches can stall the agent's consumer.

The probe (agent.events.probe) opens and reads files named by readers, so a file system that never
answers (a FUSE mount whose daemon stopped, a hung network share) could otherwise hold the thread
that records every read. Here the probe runs on a worker thread; a call that overstays its deadline
is abandoned (the worker is a daemon thread and exits if it ever returns) and the read is recorded
with "provenance not established within N s".
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from agent.events.bounds import PATH_BUDGET, bound_text
from agent.events.model import ReadEvent
from agent.events.probe import ProvenanceProbe
from agent.events.provenance import FileProvenance, ReaderProvenance


class BoundedProbe:
    """Runs a probe on a worker thread with a deadline, so nothing the probe touches can stall the
    caller. A worker that overstays is abandoned (it is a daemon thread, and exits if it ever
    returns) and replaced; while `max_stuck` workers are abandoned the probe is skipped and every
    read says so."""

    def __init__(self, probe: ProvenanceProbe, *, timeout: float = 5.0, max_stuck: int = 4) -> None:
        self.probe = probe
        self.timeout = timeout
        self.max_stuck = max_stuck
        self.stuck = 0  # workers abandoned and not back (reported in the agent's health)
        self.timeouts = 0
        self._jobs: queue.SimpleQueue[Any] | None = None
        self._lock = threading.Lock()

    def _worker(self, jobs: queue.SimpleQueue[Any]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                break
            func, args, box, done = job
            try:
                box.append(func(*args))
            except Exception as exc:  # a probe bug must not lose the read
                box.append(exc)
            done.set()
        with self._lock:
            if jobs is not self._jobs and self.stuck > 0:
                self.stuck -= 1  # an abandoned worker came back after all

    def _queue(self) -> queue.SimpleQueue[Any]:
        with self._lock:
            if self._jobs is None:
                self._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=self._worker, args=(self._jobs,), name="tripkey-provenance", daemon=True
                ).start()
            return self._jobs

    def _call(self, func: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
        """(result, None) or (None, why there is none)."""
        if self.stuck >= self.max_stuck:
            return None, f"provenance disabled: {self.stuck} probes never returned (a hung file system?)"
        box: list[Any] = []
        done = threading.Event()
        self._queue().put((func, args, box, done))
        if done.wait(self.timeout) and box:
            if isinstance(box[0], Exception):
                return None, f"probe failed: {type(box[0]).__name__}"
            return box[0], None
        with self._lock:  # abandon the worker; the next call starts a fresh one
            self.timeouts += 1
            self.stuck += 1
            if self._jobs is not None:
                self._jobs.put(None)
            self._jobs = None
        return None, f"provenance not established within {self.timeout:g} s"

    def reader(self, event: ReadEvent) -> ReaderProvenance:
        result, error = self._call(self.probe.reader, event)
        return result if result is not None else ReaderProvenance(signing=event.signing, error=error)

    def file(self, path: str) -> FileProvenance:
        result, error = self._call(self.probe.file, path)
        return (
            result if result is not None else FileProvenance(path=bound_text(path, PATH_BUDGET), error=error)
        )

    def close(self) -> None:
        with self._lock:
            if self._jobs is not None:
                self._jobs.put(None)
                self._jobs = None


__all__ = ["BoundedProbe"]
