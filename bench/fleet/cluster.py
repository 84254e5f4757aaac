"""The system under test: a real PostgreSQL, a moto server as AWS (with the SQS queue EventBridge
would feed), N `tripkey-issuer serve` processes on that one database, and HAProxy in front of them
health-checking /readyz. Everything on loopback, stopped when the `cluster()` context ends."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from tests.support.detection import WebhookReceiver
from tests.support.moto import run_moto_server
from tests.support.net import free_port
from tests.support.paths import FAKE_AWS_ENV
from tests.support.pg import create_database, postgres_bindir, run_postgres

HOOK_SECRET = "fleet-bench-hook"
BIN = Path(sys.executable).parent


class ClusterError(RuntimeError):
    """A part of the cluster could not start; the message says which and where its log is."""


@dataclasses.dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclasses.dataclass
class Cluster:
    lb_host: str
    lb_port: int
    db_url: str
    moto_url: str
    queue_url: str
    receiver: WebhookReceiver
    replicas: list[Replica]
    workdir: Path

    @property
    def lb_url(self) -> str:
        return f"http://{self.lb_host}:{self.lb_port}"

    def kill(self, index: int) -> Replica:
        """kill -9: no shutdown, no lease released, requests in flight cut off."""
        replica = self.replicas[index]
        os.kill(replica.process.pid, signal.SIGKILL)
        replica.process.wait(timeout=10)
        return replica


def missing_parts() -> list[str]:
    missing = []
    if postgres_bindir() is None:
        missing.append("PostgreSQL server binaries (apt-get install postgresql)")
    if shutil.which("haproxy") is None:
        missing.append("haproxy (apt-get install haproxy; `make system-deps` installs it)")
    return missing


def _issuer_config(path: Path, receiver: WebhookReceiver, minting_backend: str) -> None:
    path.write_text(
        "\n".join(
            [
                'log_level = "warning"',
                "[minting]",
                f'backend = "{minting_backend}"',
                "[[sinks]]",
                'type = "webhook"',
                'name = "soc"',
                f'url = "{receiver.url}"',
                f'secret = "{HOOK_SECRET}"',
                "",
            ]
        )
    )


def _haproxy_config(path: Path, port: int, replicas: list[tuple[str, int]]) -> None:
    servers = "\n".join(f"  server {name} 127.0.0.1:{replica_port} check" for name, replica_port in replicas)
    path.write_text(
        f"""global
  maxconn 4000
  nbthread 1

defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 60s
  timeout queue 30s
  retries 3
  option redispatch 1
  option http-keep-alive
  http-reuse safe

frontend issuers_front
  bind 127.0.0.1:{port}
  default_backend issuers

backend issuers
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 1s fall 2 rise 2 maxconn 48
{servers}
"""
    )


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{url}: process exited with {proc.returncode}; log {log}:\n{_tail(log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise ClusterError(f"{url} not ready within {timeout:.0f} s; log {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def cluster(replicas: int = 2, *, minting_backend: str = "iam-user", keep: bool = False) -> Iterator[Cluster]:
    """Start everything; yield the running cluster; stop everything (also on errors)."""
    missing = missing_parts()
    if missing:
        raise ClusterError("missing: " + "; ".join(missing))
    workdir = Path(tempfile.mkdtemp(prefix="tripkey-fleet-"))
    saved = {key: os.environ.get(key) for key in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)  # the bench's own boto3 (SQS) must never see real credentials
    started: list[subprocess.Popen[bytes]] = []
    receiver = WebhookReceiver(secret=HOOK_SECRET)
    try:
        with run_postgres(max_connections=60 * replicas + 40) as admin_url, run_moto_server() as moto_url:
            import boto3

            db_url = create_database(admin_url, "fleet")
            sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
            queue_url = sqs.create_queue(QueueName="tripkey-canary-use")["QueueUrl"]
            config = workdir / "issuer.toml"
            _issuer_config(config, receiver, minting_backend)
            env = {**os.environ, **FAKE_AWS_ENV, "TRIPKEY_DATA_DIR": str(workdir / "data")}
            members: list[Replica] = []
            for index in range(replicas):
                port = free_port()
                log = workdir / f"replica-{index + 1}.log"
                argv = [
                    str(BIN / "tripkey-issuer"),
                    "serve",
                    "--config",
                    str(config),
                    "--db",
                    db_url,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--aws-endpoint",
                    moto_url,
                    "--sqs-queue-url",
                    queue_url,
                    "--poll-interval",
                    "0",
                ]
                # All replicas start at once on the empty database: they migrate it between them.
                with log.open("wb") as handle:
                    proc = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
                started.append(proc)
                members.append(Replica(f"r{index + 1}", port, proc, log))
            for member in members:
                _wait(f"{member.url}/readyz", member.process, member.log, 120)
            lb_port = free_port()
            haproxy_cfg = workdir / "haproxy.cfg"
            _haproxy_config(haproxy_cfg, lb_port, [(m.name, m.port) for m in members])
            haproxy_log = workdir / "haproxy.log"
            with haproxy_log.open("wb") as handle:
                lb = subprocess.Popen(
                    ["haproxy", "-f", str(haproxy_cfg), "-db"], stdout=handle, stderr=subprocess.STDOUT
                )
            started.append(lb)
            _wait(f"http://127.0.0.1:{lb_port}/readyz", lb, haproxy_log, 30)
            yield Cluster(
                lb_host="127.0.0.1",
                lb_port=lb_port,
                db_url=db_url,
                moto_url=moto_url,
                queue_url=queue_url,
                receiver=receiver,
                replicas=members,
                workdir=workdir,
            )
            for proc in reversed(started):
                _stop(proc)
    finally:
        for proc in reversed(started):
            _stop(proc)
        receiver.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def database_facts(db_url: str, devices: int) -> dict[str, Any]:
    """Sizes and counts straight from PostgreSQL."""
    import psycopg

    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("devices", "agent_events", "credentials", "alerts", "detections", "deliveries")
        }
    return {"db_bytes": size, "db_bytes_per_device": size / max(devices, 1), **counts}
