"""The one Sensor interface every OS mechanism implements, and the frozen events it produces.

Producer/consumer split (as in watchdog): a sensor only captures and hands each ReadEvent to a
callback that must return quickly (the agent's consumer puts it on a queue); storage, classification
and upload happen on the consumer side.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

from agent.events.model import ReadEvent


class SensorError(Exception):
    """Base of sensor errors."""


class SensorUnavailable(SensorError):
    """The configured sensor cannot start here (missing privilege, kernel feature, tool).

    The message says exactly what is missing; callers must surface it, never fall back silently.
    """


@dataclasses.dataclass(frozen=True, slots=True)
class Capabilities:
    has_pid: bool
    has_cmdline: bool
    has_ancestors: bool
    blocks_reader: bool  # permission events: context captured while the reader is held
    weaker: bool = False  # shown as weaker in status (e.g. notification-only fanotify)


#: Sensors that learn of a read after the fact (the reader is never held), with full context.
AFTER_THE_FACT = Capabilities(has_pid=True, has_cmdline=True, has_ancestors=True, blocks_reader=False)


@dataclasses.dataclass(frozen=True, slots=True)
class SensorHealth:
    name: str
    mode: str
    healthy: bool
    error: str | None = None
    lost_events: int = 0
    weaker: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ReadCallback = Callable[[ReadEvent], None]


class DeadmanPetter(Protocol):
    """The agent's external deadman (agent.runtime.deadman): a process that stops petting it is killed."""

    interval: float  # pet at least this often (seconds)

    def pet(self) -> None:
        """Quick, never blocks, never raises."""

    def release(self) -> None:
        """This sensor stopped answering permission events for good (stopped, or failed open with
        nothing held): the agent pets on its behalf from now on."""


class Sensor(abc.ABC):
    """Start watching a set of planted files; report every open/read through the callback."""

    name: ClassVar[str]
    mode: ClassVar[str] = "default"
    capabilities: ClassVar[Capabilities]

    def __init__(self, paths: Iterable[str], callback: ReadCallback) -> None:
        self.paths = frozenset(paths)
        self.callback = callback

    @classmethod
    @abc.abstractmethod
    def check_available(cls) -> str | None:
        """None when this sensor can start here, else a sentence saying what is missing."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start watching; raise SensorUnavailable with a clear message if it cannot."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop watching and release every kernel resource. Safe to call twice."""

    @abc.abstractmethod
    def set_paths(self, paths: Iterable[str]) -> None:
        """Replace the set of watched files (targets added or removed while running)."""

    @abc.abstractmethod
    def health(self) -> SensorHealth:
        """Current health, including how many events were lost (never silently dropped)."""

    def attach_deadman(self, petter: DeadmanPetter) -> bool:
        """Pet the deadman from the code path that answers held readers; True if this sensor will.

        A sensor that holds readers (fanotify permission events) must pet only while that path
        works, so a wedged capture stops the petting and the deadman kills the process (which
        releases every held reader). The default — a sensor that never holds a reader — returns
        False and the agent pets from a thread of its own.
        """
        return False

    # -- identity of the watched files (sensors keyed by inode override these) ---------------------

    def watch_new_file(self, path: str, fd: int) -> None:
        """`fd` is the new version of planted file `path`, written and fsync'd but not yet renamed
        over it: watch it now, so it is watched from the moment it becomes visible.

        Called by the agent for every plant, replace, rotation and repair, just before the rename.
        Sensors that watch paths (audit rules, eslogger, SACLs) need nothing: the default does
        nothing. Must be quick and must not open the file by its path.
        """
        return None

    def refresh(self, paths: Iterable[str] | None = None) -> None:
        """Someone else may have replaced the files at these paths (None: every watched path).

        The agent calls this when its repair watcher sees a target change, so a sensor that
        watches inodes can watch the new one. The default (path-based sensors) does nothing.
        """
        return None
