"""Running many replicas on one database: migrations started at once, readiness for a load
balancer, Prometheus metrics, idempotent batched ingest under concurrent uploads, cheap heartbeats.
On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, inspect, text

from issuer import registry
from issuer.db import create_db_engine, downgrade, head_revision, upgrade
from tests.support.fleet import health_document

REPO = Path(__file__).resolve().parents[2]


def test_replicas_starting_at_once_migrate_the_database_once(db_url: str) -> None:
    """Six `tripkey-issuer migrate` processes on one fresh database at the same moment: PostgreSQL
    takes an advisory lock and SQLite a file lock, so one migrates and the others find it done.
    Without the lock they would race on CREATE TABLE / the alembic_version row."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "issuer", "migrate", "--db", db_url, "--json"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [(proc.wait(timeout=120), proc.stderr.read() if proc.stderr else "") for proc in procs]
    for proc in procs:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert [code for code, _ in results] == [0] * 6, [err[-2000:] for _, err in results]
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [head_revision()]
        columns = {c["name"] for c in inspect(engine).get_columns("devices")}
        assert {"sensor_healthy", "targets_planted", "health_hash"} <= columns
    finally:
        engine.dispose()


def test_readiness_follows_the_schema_and_liveness_does_not(issuer_factory: Any, db_url: str) -> None:
    issuer = issuer_factory(db_url=db_url)
    ready = issuer.request("GET", "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["schema_revision"] == ready.json()["schema_head"] == head_revision()
    engine = issuer.app.state.database.engine
    downgrade(engine, "0002")  # an older schema: this replica must not take traffic
    try:
        behind = issuer.request("GET", "/readyz")
        assert behind.status_code == 503
        assert behind.json() | {"version": None} == {
            "ready": False,
            "version": None,
            "database": "ok",
            "schema_revision": "0002",
            "schema_head": head_revision(),
        }
        assert issuer.request("GET", "/livez").status_code == 200, "liveness never depends on the database"
    finally:
        upgrade(engine)
    assert issuer.request("GET", "/readyz").status_code == 200


def _read(i: int) -> dict[str, Any]:
    return {
        "event_id": f"ev-{i:05d}",
        "kind": "read",
        "time": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=i)).isoformat(),
        "path": "/home/a/.aws/credentials",
        "read": {"pid": 100 + i, "exe": "/usr/bin/cat", "cmdline": ["cat"], "sensor": "fanotify"},
    }


def test_concurrent_uploads_of_one_batch_store_each_event_once(issuer_factory: Any, db_url: str) -> None:
    """An agent retrying a batch whose answer it lost races its own first attempt (and, behind a
    load balancer, lands on another replica): every event is stored once and counted once."""
    issuer = issuer_factory(db_url=db_url)
    device_id, token = issuer.enroll("uploader")
    batch = [_read(i) for i in range(900)] + [_read(5)]  # a duplicate inside the batch, too
    results: list[dict[str, int]] = []
    barrier = threading.Barrier(4)

    def upload() -> None:
        barrier.wait()
        response = issuer.request("POST", f"/v1/devices/{device_id}/events", token, json={"events": batch})
        assert response.status_code == 200, response.text
        results.append(response.json())

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(r["accepted"] for r in results) == 900
    assert all(r["accepted"] + r["duplicates"] == 901 for r in results)
    with issuer.session() as session:
        stored = session.execute(
            text("SELECT count(*) FROM agent_events WHERE device_id = :d"), {"d": device_id}
        ).scalar()
    assert stored == 900
    metrics = _metrics(issuer)
    assert metrics[("tripkey_agent_events_total", (("result", "accepted"),))] == 900
    assert metrics[("tripkey_agent_events_total", (("result", "duplicate"),))] == 4 * 901 - 900


def _metrics(issuer: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = issuer.request("GET", "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_name_routes_by_template_and_report_the_fleet(issuer_factory: Any) -> None:
    issuer = issuer_factory()
    device_id, token = issuer.enroll("metered")
    beat = health_document("linux", healthy=True, expected=1, planted=1, lost=3, version="0.1.0")
    beat["spool_dropped"] = 2
    for _ in range(3):
        issuer.request("POST", f"/v1/devices/{device_id}/heartbeat", token, json=beat)
    issuer.request("GET", "/v1/devices/dev_nosuchdevice", token)  # 403: another device's route
    issuer.request("GET", "/no/such/route")
    metrics = _metrics(issuer)
    heartbeat = (("method", "POST"), ("route", "/v1/devices/{device_id}/heartbeat"), ("status", "200"))
    assert metrics[("tripkey_http_requests_total", heartbeat)] == 3
    assert metrics[
        ("tripkey_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))
    ]
    latency = (("method", "POST"), ("route", "/v1/devices/{device_id}/heartbeat"))
    assert metrics[("tripkey_http_request_duration_seconds_count", latency)] == 3
    assert not any(device_id in str(labels) for _, labels in metrics), "no per-device series"
    assert metrics[("tripkey_agent_events_lost", (("reason", "sensor_lost"),))] == 3
    assert metrics[("tripkey_agent_events_lost", (("reason", "spool_dropped"),))] == 2
    assert metrics[("tripkey_devices", ())] == 1
    assert metrics[("tripkey_database_up", ())] == 1


def test_an_unchanged_heartbeat_writes_nothing(
    issuer_factory: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = issuer_factory(db_url=db_url)
    device_id, token = issuer.enroll("quiet")
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE")):
            statements.append(" ".join(statement.split()))

    engine = issuer.app.state.database.engine
    event.listen(engine, "before_cursor_execute", record)
    beat = health_document("linux", healthy=True, expected=2, planted=2, lost=0, version="0.1.0")

    def send(body: dict[str, Any]) -> list[str]:
        statements.clear()
        response = issuer.request("POST", f"/v1/devices/{device_id}/heartbeat", token, json=body)
        assert response.status_code == 200, response.text
        return list(statements)

    try:
        first = send(beat)  # the health, and the device's first address (issuer/egress.py)
        assert len(first) == 2 and "health=" in first[0].replace(" ", "") and "device_addresses" in first[1]
        assert send(beat) == [], "same health within the write granularity: no write at all"
        monkeypatch.setattr(registry, "HEARTBEAT_WRITE_GRANULARITY", dt.timedelta(0))
        [time_only] = send(beat)
        assert "last_heartbeat_at" in time_only and "health=" not in time_only.replace(" ", "")
        changed = {**beat, "sensor": {**beat["sensor"], "healthy": False, "error": "stopped"}}
        [rewrite] = send(changed)
        assert "sensor_healthy" in rewrite
    finally:
        event.remove(engine, "before_cursor_execute", record)
    shown = issuer.request("GET", f"/v1/devices/{device_id}", token).json()
    assert shown["health"]["sensor"]["healthy"] is False
