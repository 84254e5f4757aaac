"""What `run` and `plant-once` need, checked before they enroll or mint anything.

Without these checks a non-root `plant-once` enrolled the device and minted keys, then failed on
each file it could not write: keys minted for nothing, and a message about one file at a time. The
problems found here are said together, with "run as root" when that is what would fix them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from agent import osflags
from agent.config import AgentConfig
from agent.planting.targets import Target


class PreflightError(Exception):
    """The agent cannot do its job as it runs now; the message lists every reason and the fix."""


def is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is None or geteuid() == 0  # Windows: the service runs as SYSTEM


def _nearest_existing(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def state_dir_problem(state_dir: str) -> str | None:
    """Why the state directory cannot be created or written, or None."""
    if os.path.isdir(state_dir):
        if os.access(state_dir, os.W_OK | os.X_OK):
            return None
        return f"the state directory {state_dir} is not writable"
    if os.path.exists(state_dir):
        return f"the state directory {state_dir} exists and is not a directory"
    parent = _nearest_existing(state_dir)
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return None
    return f"the state directory {state_dir} cannot be created ({parent} is not writable)"


def others_targets(targets: Sequence[Target]) -> list[Target]:
    """Targets owned by another account than ours: writing them as their owner needs root."""
    if is_root() or not osflags.POSIX:  # Windows: the service is LocalSystem, owners are SIDs
        return []
    uid = os.geteuid()
    return [t for t in targets if t.owner.uid != uid]


def check_can_plant(config: AgentConfig, targets: Sequence[Target], command: str) -> None:
    """Raise PreflightError naming every problem; says "run as root" when root would solve them."""
    problems = []
    state = state_dir_problem(config.state_dir)
    if state:
        problems.append(state)
    others = others_targets(targets)
    if others:
        names = ", ".join(sorted({t.owner.name for t in others}))
        problems.append(f"planting into files of other users ({names}) needs root")
    if not problems:
        return
    advice = ""
    if not is_root():
        advice = f"; run as root (sudo tripkey-agent {command} ...)"
    raise PreflightError("; ".join(problems) + advice + " — nothing was enrolled or planted")


__all__ = ["PreflightError", "check_can_plant", "is_root", "others_targets", "state_dir_problem"]
