"""The detection runner shuts down within its timeout even when AWS hangs.

AWS here is a real black hole on loopback: a socket that accepts connections and never answers, so
every poller thread sits in a boto3 read (30 s read timeout, retried). stop() must not wait for each
thread in turn: systemd kills a service that takes too long to stop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from issuer.aws.gateway import AwsGateway, MintingConfig
from issuer.detection.runner import DetectionRunner


@pytest.fixture
def black_hole() -> Iterator[str]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # never read, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_stop_waits_once_for_all_threads_not_once_each(det_settings, det_sessionmaker, black_hole) -> None:  # type: ignore[no-untyped-def]
    regions = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1"]
    settings = det_settings(lookup_events_regions=regions, lookup_interval=3600)
    runner = DetectionRunner(settings, det_sessionmaker, AwsGateway(MintingConfig(endpoint_url=black_hole)))
    runner.start()
    time.sleep(1.0)  # every poller is now inside a LookupEvents call that will not come back
    started = time.monotonic()
    runner.stop(timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"stop() took {elapsed:.1f}s for a 1 s timeout ({len(regions)} hung threads)"
