"""Every way the canary can disappear is an event, and the device's coverage says "not planted".

Hostile replacements of a planted credentials file, each made by the file's owner (the local user
the canary belongs to): a FIFO (opening it would block), a symlink to a root-only file (following it
as root would read it), a directory, a file too large to inspect, a symlinked ~/.aws, and a second
name for the file (a hard link). Live issuer with moto; the real watcher for the FIFO.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.credfile.safefs import MAX_FILE_BYTES
from agent.planting.repair import RepairWatcher
from agent.reporting.payloads import heartbeat_payload, target_reports
from server_api_client.cli import main as tripkey
from tests.support.agent import FakeUser, Rig, seed


@pytest.fixture
def rig(tmp_path: Path, live_issuer: Any) -> Rig:
    rig = Rig(tmp_path, live_issuer)
    seed(rig.users[0])
    states = rig.sync()
    assert [s.status for s in states] == ["planted", "planted"]
    return rig


def _as_user(path: Path, user: FakeUser) -> None:
    os.chown(path, user.uid, user.gid, follow_symlinks=False)


def fifo(user: FakeUser, tmp: Path) -> str:
    user.credentials.unlink()
    os.mkfifo(user.credentials)
    _as_user(user.credentials, user)
    return "fifo"


def symlink(user: FakeUser, tmp: Path) -> str:
    secret = tmp / "root-only"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    user.credentials.unlink()
    user.credentials.symlink_to(secret)
    _as_user(user.credentials, user)
    return "symlink"


def directory(user: FakeUser, tmp: Path) -> str:
    user.credentials.unlink()
    user.credentials.mkdir()
    _as_user(user.credentials, user)
    return "directory"


def huge(user: FakeUser, tmp: Path) -> str:
    with user.credentials.open("ab") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    return "file"


def aws_dir_symlink(user: FakeUser, tmp: Path) -> str:
    aws = user.credentials.parent
    aws.rename(user.home / "aws-moved")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    aws.symlink_to(elsewhere)
    _as_user(aws, user)
    return "symlink"


def hard_link(user: FakeUser, tmp: Path) -> str:
    os.link(user.credentials, user.home / "second-name")
    return "file"


REPLACEMENTS = {
    "fifo": (fifo, "file_replaced", "FIFO"),
    "symlink": (symlink, "file_replaced", "symbolic link"),
    "directory": (directory, "file_replaced", "a directory"),
    "huge-file": (huge, "file_too_large", "bytes, more than"),
    "aws-dir-symlink": (aws_dir_symlink, "directory_replaced", ".aws is a symbolic link"),
    "hard-link": (hard_link, "hard_link", "2 names"),
}


@pytest.mark.parametrize("how", list(REPLACEMENTS))
def test_a_replaced_canary_is_a_tamper_event_and_not_planted(rig: Rig, tmp_path: Path, how: str) -> None:
    make, action, words = REPLACEMENTS[how]
    alice, bob = rig.users
    found_type = make(alice, tmp_path)
    rig.planter.ensure(rig.target(alice), hint="modified")

    [event] = [e for e in rig.events if e["kind"] == "tamper"]
    assert event["path"] == str(alice.credentials)
    assert event["tamper"]["action"] == action and words in event["tamper"]["detail"]
    found = event["tamper"]["found"]
    assert found["type"] == found_type and found["uid"] == alice.uid  # who put it there
    ts = rig.ts(alice)
    assert ts.status == "tampered" and not ts.planted and ts.last_error.startswith("not planted:")
    report = {t["path"]: t for t in target_reports(rig.store)}[str(alice.credentials)]
    assert report["planted"] is False and words in report["error"]
    assert rig.ts(bob).planted, "the other user's canary is untouched"
    if how == "symlink":
        assert (tmp_path / "root-only").read_text() == "root's secret\n"  # never followed or written

    # Seen again (periodic pass, after the backoff): the same finding is not a second event.
    rig.clock.advance(hours=1)
    rig.planter.run_due()
    assert len([e for e in rig.events if e["kind"] == "tamper"]) == 1
    assert rig.ts(alice).status == "tampered"


def test_when_the_replacement_goes_the_canary_is_planted_again(rig: Rig, tmp_path: Path) -> None:
    alice = rig.users[0]
    fifo(alice, tmp_path)
    rig.planter.ensure(rig.target(alice), hint="modified")
    alice.credentials.unlink()
    rig.clock.advance(hours=1)
    rig.planter.run_due()
    ts = rig.ts(alice)
    assert ts.status == "planted" and ts.finding is None
    assert b"[prod-backup]" in alice.credentials.read_bytes()


def test_the_watcher_sees_a_fifo_swapped_in_within_seconds(rig: Rig, tmp_path: Path) -> None:
    alice = rig.users[0]
    watcher = RepairWatcher(rig.planter, debounce=0.1)
    watcher.start(rig.planter.paths)
    try:
        staged = alice.credentials.parent / "staged"
        os.mkfifo(staged)
        _as_user(staged, alice)
        os.rename(staged, alice.credentials)  # atomically, as an attacker would
        deadline = time.monotonic() + 10
        while not [e for e in rig.events if e["kind"] == "tamper"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    [event] = [e for e in rig.events if e["kind"] == "tamper"]
    assert event["tamper"]["action"] == "file_replaced" and event["tamper"]["found"]["type"] == "fifo"


def test_the_issuer_shows_the_device_not_planted_and_devices_list_finds_it(
    rig: Rig, tmp_path: Path, live_issuer: Any
) -> None:
    alice = rig.users[0]
    fifo(alice, tmp_path)
    rig.planter.ensure(rig.target(alice), hint="modified")
    device_id = rig.store.state.device_id
    assert device_id is not None
    result = rig.client.upload_events(device_id, rig.events)
    assert (result.accepted, result.rejected) == (1, 0)  # the issuer takes the new tamper shape
    sensor = {"name": "fanotify", "mode": "permission", "healthy": True}
    targets = target_reports(rig.store)
    beat = heartbeat_payload(sensor_health=sensor, targets=targets, last_event_at=None, spool=None)
    rig.client.heartbeat(device_id, beat)

    responder = live_issuer.create_token()
    device = live_issuer.request("GET", f"/v1/devices/{device_id}", responder).json()
    coverage = device["coverage"]
    assert (coverage["state"], coverage["planted"], coverage["targets"]) == ("not_planted", 1, 2)
    assert any(str(alice.credentials) in r and "FIFO" in r for r in coverage["reasons"])

    out, err = io.StringIO(), io.StringIO()
    argv = ["--issuer", live_issuer.url, "--token", responder, "devices", "list", "--not-planted"]
    assert tripkey(argv, stdout=out, stderr=err) == 0, err.getvalue()
    [line] = [line for line in out.getvalue().splitlines() if line.startswith(device_id)]
    assert line.rstrip().endswith("NOT PLANTED") and "1/2" in line
    out = io.StringIO()
    tripkey(["--issuer", live_issuer.url, "--token", responder, "devices", "show", device_id], stdout=out)
    assert "COVERAGE: NOT PLANTED" in out.getvalue() and "FIFO" in out.getvalue()


def test_the_watcher_sees_aws_directory_swapped_for_a_symlink(rig: Rig, tmp_path: Path) -> None:
    alice = rig.users[0]
    watcher = RepairWatcher(rig.planter, debounce=0.1)
    watcher.start(rig.planter.paths)
    try:
        aws_dir_symlink(alice, tmp_path)
        deadline = time.monotonic() + 10
        while not [e for e in rig.events if e["kind"] == "tamper"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    [event] = [e for e in rig.events if e["kind"] == "tamper"]
    assert event["tamper"]["action"] == "directory_replaced"
