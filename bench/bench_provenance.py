"""Reader provenance on the agent's consumer thread: what one read costs, cold and hot, side by side
with the alternatives it replaces (`dpkg -S` per lookup, hashing on every read).

Goal: a hot reader (every `aws` run opens the credentials file several times) costs a few stats and
cache hits — far below the consumer's other work per read — and a big executable is hashed once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.events.classify import Classifier
from agent.events.model import ReadEvent
from agent.events.packages import DpkgDb, detect
from agent.events.probe import ProvenanceProbe
from agent.events.trust import judge

TITLE = "reader provenance (consumer side): per read, cold vs hot, and the alternatives"
RUNS = 200


def _event(exe: str, *argv: str) -> ReadEvent:
    return ReadEvent(
        time=dt.datetime.now(dt.UTC), path="/x", pid=os.getpid(), sensor="bench", exe=exe, cmdline=argv
    )


def _times(func: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _row(case: str, samples: list[float], note: str = "") -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "case": case,
        "n": len(samples),
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1 if len(ordered) > 1 else 0], 3),
        "note": note,
    }


def run() -> list[dict[str, Any]]:
    rows = []
    cat = shutil.which("cat") or "/usr/bin/cat"
    cat = os.path.realpath(cat)
    python = os.path.realpath(sys.executable)
    aws = str(Path(sys.executable).parent / "aws")
    classifier = Classifier.default()
    has_dpkg = isinstance(detect(), DpkgDb)

    cold = []
    for _ in range(5):  # a new agent each time: nothing cached (package database scan + hash)
        probe = ProvenanceProbe(packages=detect())
        start = time.perf_counter()
        probe.reader(_event(cat, "cat", "/x"))
        cold.append((time.perf_counter() - start) * 1000)
    rows.append(
        _row("cat, first read (cold: package scan + hash)", cold, "dpkg" if has_dpkg else "no package db")
    )

    probe = ProvenanceProbe(packages=detect())
    event = _event(cat, "cat", "/x")
    probe.reader(event)
    rows.append(
        _row("cat, later reads (hot)", _times(lambda: probe.reader(event), RUNS), f"hashed {probe.hashed}x")
    )
    rows.append(
        _row(
            "cat, later reads + classification (hot)",
            _times(lambda: judge(classifier, event, probe.reader(event), probe.file), RUNS),
        )
    )
    interp = _event(python, sys.executable, aws, "s3", "ls")
    probe.reader(interp)
    rows.append(
        _row(
            "aws CLI (interpreter + script), later reads (hot)",
            _times(lambda: judge(classifier, interp, probe.reader(interp), probe.file), RUNS),
        )
    )

    # The biggest executable around: hashed once, then cached.
    candidates = [p for p in Path("/usr/bin").iterdir() if p.is_file() and not p.is_symlink()]
    biggest = max(candidates, key=lambda p: p.stat().st_size)
    fresh = ProvenanceProbe(packages=None)
    size_mb = biggest.stat().st_size / 1024 / 1024
    first = _times(lambda: fresh.file(str(biggest)), 1)
    rows.append(_row(f"largest /usr/bin file ({biggest.name}, {size_mb:.1f} MiB), first read", first))
    rows.append(
        _row(
            "  ... later reads (hot)", _times(lambda: fresh.file(str(biggest)), 50), f"hashed {fresh.hashed}x"
        )
    )

    # Alternatives, same run.
    rows.append(
        _row(
            "alternative: hash on every read (no cache), largest file",
            _times(lambda: hashlib.sha256(biggest.read_bytes()).hexdigest(), 10),
        )
    )
    if shutil.which("dpkg"):
        rows.append(
            _row(
                "alternative: `dpkg -S` per lookup (misses /usr/bin on merged /usr)",
                _times(
                    lambda: subprocess.run(["dpkg", "-S", "/bin/cat"], capture_output=True, check=False), 20
                ),
            )
        )
    return rows
