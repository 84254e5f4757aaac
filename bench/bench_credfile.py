"""Credentials-file editor: plant / inspect / unplant latency on files of 1, 20 and 200 profiles.

Each operation is the agent's real file path (agent.credfile over agent.credfile.safefs): walk from `/` with
directory fds, read, edit, re-parse with botocore's parser, write a temp file, fsync, rename, fsync
the directory. The pure edit (plant_bytes, no I/O) is timed alongside so the fsync share is visible.
The file lives in a root-owned temp dir and is owned by uid 0 (we are root; any owner works the same).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.credfile.edit import (
    CanaryCredential,
    SectionStatus,
    inspect_file,
    plant_bytes,
    plant_file,
    unplant_file,
)

TITLE = "credentials file editor: ms per operation (median / p95)"
PROFILE_COUNTS = (1, 20, 200)
ROUNDS = 60
CANARY_PROFILE = "prod-backup"


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _existing_file(profiles: int) -> bytes:
    """A user's file: `profiles` sections of their own keys, with comments like a real one."""
    parts = ["# managed by hand\n"]
    for i in range(profiles):
        parts.append(
            f"[team-{i:03d}]\n"
            f"aws_access_key_id = AKIAUSERKEY{i:09d}\n"
            f"aws_secret_access_key = {'s' * 30}{i:010d}\n"
            f"region = eu-west-{1 + i % 3}\n\n"
        )
    return "".join(parts).encode()


def _credential(round_: int) -> CanaryCredential:
    return CanaryCredential(access_key_id=f"AKIACANARY{round_:010d}", secret_access_key="c" * 40)


def _timed(samples: list[float], func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    result = func(*args, **kwargs)
    samples.append((time.perf_counter() - started) * 1000)
    return result


def _measure(home: Path, profiles: int, rounds: int) -> dict[str, list[float]]:
    path = home / f"p{profiles}" / ".aws" / "credentials"
    path.parent.parent.mkdir(mode=0o700)
    original = _existing_file(profiles)
    path.parent.mkdir(mode=0o700)
    path.write_bytes(original)
    path.chmod(0o600)
    uid = os.geteuid()
    owner = {"owner_uid": uid, "owner_gid": os.getegid()}
    times: dict[str, list[float]] = {
        "plant (add)": [],
        "plant (replace)": [],
        "inspect": [],
        "unplant": [],
        "plant_bytes (pure)": [],
    }
    owned: set[str] = set()
    for round_ in range(rounds):
        first, second = _credential(2 * round_), _credential(2 * round_ + 1)
        owned.update({first.access_key_id, second.access_key_id})
        _timed(times["plant_bytes (pure)"], plant_bytes, original, CANARY_PROFILE, first, owned)
        added = _timed(times["plant (add)"], plant_file, path, CANARY_PROFILE, first, owned, **owner)
        replaced = _timed(times["plant (replace)"], plant_file, path, CANARY_PROFILE, second, owned, **owner)
        state = _timed(times["inspect"], inspect_file, path, CANARY_PROFILE, owned, owner_uid=uid)
        removed = _timed(times["unplant"], unplant_file, path, CANARY_PROFILE, owned, **owner)
        # A bench that times broken edits would be worse than none: check every round did its job.
        outcome = (added.action, replaced.action, state.status, removed)
        if outcome != ("added", "replaced", SectionStatus.OURS, True):
            raise RuntimeError(f"round {round_}: unexpected {added}, {replaced}, {state}, {removed}")
    if path.read_bytes() != original:
        raise RuntimeError("plant + unplant did not restore the file byte for byte")
    return times


def run(rounds: int = ROUNDS) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="tripkey-bench-credfile-"))
    rows = []
    try:
        for profiles in PROFILE_COUNTS:
            size = len(_existing_file(profiles))
            for operation, samples in _measure(home, profiles, rounds).items():
                rows.append({
                    "profiles": profiles,
                    "file_bytes": size,
                    "operation": operation,
                    "runs": len(samples),
                    "median_ms": statistics.median(samples),
                    "p95_ms": _percentile(samples, 95),
                    "max_ms": max(samples),
                })  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return rows
