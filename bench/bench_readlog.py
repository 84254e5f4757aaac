"""Read log throughput: record (one thread, four threads), queries, pruning, bytes per read.

Goal: recording must outpace any realistic read burst (an indexer or `aws` loop) by a wide margin;
a responder's `tripkey-agent reads --since 24h` must answer in well under a second.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.events.classify import Classifier
from agent.events.model import ProcessInfo, ReadEvent
from agent.events.readlog import ReadLog

N = 20_000
BASE = dt.datetime.now(dt.UTC)


def _event(i: int) -> ReadEvent:
    path = f"/home/user{i % 50}/.aws/credentials"
    return ReadEvent(
        time=BASE - dt.timedelta(seconds=N - i),
        path=path,
        pid=10_000 + i,
        sensor="bench",
        ppid=999,
        exe="/usr/bin/python3.11",
        cmdline=("python3", "/usr/local/bin/aws", "s3", "ls", "--profile", f"p{i % 7}"),
        uid=1000 + i % 50,
        user=f"user{i % 50}",
        cwd=f"/home/user{i % 50}",
        ancestors=(
            ProcessInfo(pid=999, exe="/usr/bin/bash", cmdline=("bash",), uid=1000),
            ProcessInfo(pid=1, exe="/sbin/init", cmdline=("/sbin/init",), uid=0),
        ),
    )


def _row(operation: str, count: int, seconds: float, note: str = "") -> dict[str, Any]:
    return {
        "operation": operation,
        "count": count,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds) if seconds > 0 else None,
        "note": note,
    }


def run() -> list[dict[str, Any]]:
    rows = []
    events = [_event(i) for i in range(N)]
    classifier = Classifier.default()
    with tempfile.TemporaryDirectory(prefix="tripkey-bench-") as tmp:
        start = time.perf_counter()
        labels = [classifier.classify(e) for e in events]
        rows.append(_row("classify", N, time.perf_counter() - start, "default rules"))

        path = Path(tmp) / "reads.db"
        with ReadLog(path, prune_every=N * 10) as log:
            start = time.perf_counter()
            for event, label in zip(events, labels, strict=True):
                log.record(event, label)
            rows.append(_row("record, 1 thread", N, time.perf_counter() - start, "WAL, synchronous=NORMAL"))

            size = sum(p.stat().st_size for p in path.parent.glob("reads.db*"))
            rows.append({"operation": "bytes per read", "count": N, "seconds": None,
                         "per_second": None, "note": f"{size / N:.0f} B (db + wal)"})  # fmt: skip

            since = BASE - dt.timedelta(hours=24)
            start = time.perf_counter()
            for _ in range(20):
                result = log.query(since=since, limit=100)
            rows.append(_row("query --since 24h limit 100", 20, time.perf_counter() - start,
                             f"{len(result)} rows each"))  # fmt: skip

            start = time.perf_counter()
            result = log.query(since=since)
            rows.append(_row("query --since 24h, all rows", 1, time.perf_counter() - start,
                             f"{len(result)} rows"))  # fmt: skip

            start = time.perf_counter()
            for i in range(20):
                result = log.query(path=f"/home/user{i}/.aws/credentials")
            rows.append(_row("query by path", 20, time.perf_counter() - start, f"{len(result)} rows each"))

            threads = [
                threading.Thread(
                    target=lambda b=b: [log.record(events[j], "aws_tool") for j in range(b, N, 4)]
                )
                for b in range(4)
            ]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rows.append(_row("record, 4 threads", N, time.perf_counter() - start, "one connection, locked"))

            log.max_bytes = 1024 * 1024
            start = time.perf_counter()
            deleted = log.prune()
            rows.append(
                _row("prune to 1 MiB", deleted, time.perf_counter() - start, f"{log.count()} rows kept")
            )
    return rows
