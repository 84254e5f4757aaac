"""The tamper watcher with a real watchdog observer and a LIVE issuer: removal → re-plant + tamper event,
own writes ignored, repeated removal backed off, deleted/moved files, a removed ~/.aws directory."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.planting.repair import RepairWatcher
from tests.support.agent import SEED, Rig, seed


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def watched(tmp_path: Path, live_issuer: Any) -> Iterator[tuple[Rig, RepairWatcher]]:
    rig = Rig(tmp_path, live_issuer)
    seed(rig.users[0])
    rig.sync()
    watcher = RepairWatcher(rig.planter, debounce=0.1)
    watcher.start(rig.planter.paths)
    yield rig, watcher
    watcher.stop()


def actions(rig: Rig) -> list[str]:
    return [e["tamper"]["action"] for e in rig.events if e["kind"] == "tamper"]


def test_removed_section_replanted_within_seconds(watched: tuple[Rig, RepairWatcher]) -> None:
    rig, _ = watched
    alice = rig.users[0]
    old_key = rig.ts(alice).access_key_id
    alice.credentials.write_bytes(SEED)  # remove our section, keep the user's
    assert wait_for(lambda: b"[prod-backup]" in alice.credentials.read_bytes())
    assert wait_for(lambda: actions(rig) == ["section_removed"])
    event = rig.events[0]
    assert event["path"] == str(alice.credentials) and event["tamper"]["replanted"] is True
    assert rig.ts(alice).access_key_id != old_key
    assert alice.credentials.read_bytes().startswith(SEED)  # the user's bytes are untouched


def test_own_writes_and_reads_are_not_tamper(watched: tuple[Rig, RepairWatcher]) -> None:
    rig, watcher = watched
    alice = rig.users[0]
    # The agent's own re-plant (e.g. a rotation) must not look like tampering.
    rig.planter.ensure(rig.target(alice), force=True)
    rig.clock.advance(days=91)
    rig.planter.ensure(rig.target(alice))
    alice.credentials.read_bytes()  # a read never wakes the watcher
    time.sleep(1.0)
    assert actions(rig) == [] and watcher.handled == 0


def test_user_editing_own_profile_is_not_tamper(watched: tuple[Rig, RepairWatcher]) -> None:
    rig, watcher = watched
    alice = rig.users[0]
    with alice.credentials.open("ab") as fh:
        fh.write(b"\n[another]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = y\n")
    assert wait_for(lambda: watcher.handled >= 1)
    time.sleep(0.3)
    assert actions(rig) == []
    assert b"[another]" in alice.credentials.read_bytes()


def test_repeated_removal_is_backed_off(watched: tuple[Rig, RepairWatcher]) -> None:
    rig, _ = watched
    alice = rig.users[0]
    alice.credentials.write_bytes(SEED)
    assert wait_for(lambda: actions(rig) == ["section_removed"])
    assert wait_for(lambda: b"[prod-backup]" in alice.credentials.read_bytes())
    alice.credentials.write_bytes(SEED)  # again, right away
    assert wait_for(lambda: actions(rig) == ["section_removed", "section_removed"])
    time.sleep(0.5)
    assert alice.credentials.read_bytes() == SEED  # not re-planted yet: one minute of backoff
    assert rig.ts(alice).status == "pending" and rig.events[-1]["tamper"]["replanted"] is False


def test_deleted_and_moved_files(watched: tuple[Rig, RepairWatcher]) -> None:
    rig, _ = watched
    alice, bob = rig.users
    bob.credentials.unlink()
    assert wait_for(lambda: "file_deleted" in actions(rig))
    assert wait_for(lambda: bob.credentials.exists())
    os.rename(alice.credentials, alice.credentials.with_name("stolen"))
    assert wait_for(lambda: "file_moved" in actions(rig))
    assert wait_for(lambda: alice.credentials.exists())


def test_removed_aws_directory_is_recreated_and_rewatched(watched: tuple[Rig, RepairWatcher]) -> None:
    rig, watcher = watched
    bob = rig.users[1]
    bob.credentials.unlink()
    assert wait_for(lambda: bob.credentials.exists())
    bob.credentials.unlink()
    bob.credentials.parent.rmdir()
    # Second tamper within the window: reported, re-plant deferred; force it to check re-watching.
    assert wait_for(lambda: actions(rig).count("file_deleted") == 2)
    rig.planter.ensure(rig.target(bob), force=True)
    watcher.set_paths(rig.planter.paths)
    assert str(bob.credentials.parent) in watcher.watched_dirs


def test_deleted_directory_is_watched_again_after_replant(watched: tuple[Rig, RepairWatcher]) -> None:
    import shutil

    rig, watcher = watched
    alice = rig.users[0]
    shutil.rmtree(alice.credentials.parent)  # rm -rf ~/.aws
    assert wait_for(lambda: alice.credentials.exists())  # first tamper: re-planted at once
    assert wait_for(lambda: str(alice.credentials.parent) in watcher.watched_dirs)
    time.sleep(0.5)
    # The new directory is a new inode: a later removal must still be seen.
    handled = watcher.handled
    alice.credentials.write_bytes(SEED)
    assert wait_for(lambda: watcher.handled > handled)
    assert wait_for(lambda: actions(rig)[-1:] == ["section_removed"])


def _returns_within(fn: Callable[[], Any], timeout: float = 5.0) -> tuple[bool, Any]:
    """Run fn on a daemon thread; (finished, result). A hang (e.g. a FIFO opened) is False."""
    import threading

    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    return (not thread.is_alive(), box[0] if box else None)


def test_symlink_to_a_copy_of_our_bytes_is_not_taken_for_our_own_write(
    watched: tuple[Rig, RepairWatcher],
) -> None:
    """The "is this our own write?" digest must not follow a user's symlink: a symlink to a copy of
    the planted bytes is a changed file (tamper/error), not the agent's own content."""
    rig, _ = watched
    alice = rig.users[0]
    path = alice.credentials
    copy = alice.home / "copy"
    copy.write_bytes(path.read_bytes())
    os.chown(copy, 0, 0)  # even a root-owned file with the right bytes: never read through a link
    path.unlink()
    os.symlink(copy, path)
    assert rig.planter.is_own_content(str(path)) is False
    assert wait_for(lambda: rig.ts(alice).status == "tampered")  # a replaced file: a tamper event
    assert os.path.islink(path) and copy.read_bytes().startswith(SEED)  # nothing written through


def test_symlink_to_a_fifo_does_not_hang_the_watcher(watched: tuple[Rig, RepairWatcher]) -> None:
    """Opening a FIFO as root blocks until a writer appears: the agent must never open one."""
    rig, _watcher = watched
    alice, bob = rig.users
    fifo = alice.home / "fifo"
    os.mkfifo(fifo)
    alice.credentials.unlink()
    os.symlink(fifo, alice.credentials)
    finished, own = _returns_within(lambda: rig.planter.is_own_content(str(alice.credentials)))
    assert finished and own is False
    os.unlink(alice.credentials)
    os.mkfifo(alice.credentials)  # a FIFO in place of the file itself
    os.chown(alice.credentials, alice.uid, alice.gid)
    finished, own = _returns_within(lambda: rig.planter.is_own_content(str(alice.credentials)))
    assert finished and own is False
    # The watcher is still alive: bob's removed section is repaired.
    rig.planter.ensure(rig.target(bob))
    bob_bytes = bob.credentials.read_bytes()
    bob.credentials.write_bytes(b"")
    assert wait_for(
        lambda: (
            bob.credentials.read_bytes() not in (b"", bob_bytes)
            and b"[prod-backup]" in bob.credentials.read_bytes()
        )
    )


def test_symlinked_aws_directory_is_not_watched(tmp_path: Path, live_issuer: Any) -> None:
    """A user who points ~/.aws at another directory (root's) gets an error, not a watch there."""
    rig = Rig(tmp_path, live_issuer)
    alice = rig.users[0]
    elsewhere = tmp_path / "root-aws"
    elsewhere.mkdir()
    os.symlink(elsewhere, alice.credentials.parent)
    states = rig.sync()
    assert states[0].status == "tampered" and "symbolic link" in (states[0].last_error or "")
    watcher = RepairWatcher(rig.planter, debounce=0.1)
    watcher.start(rig.planter.paths)
    try:
        assert str(rig.users[1].credentials.parent) in watcher.watched_dirs
        assert str(alice.credentials.parent) not in watcher.watched_dirs
    finally:
        watcher.stop()
    assert list(elsewhere.iterdir()) == []


def _big_file(profiles: int) -> bytes:
    return b"".join(
        b"[user%d]\naws_access_key_id = AKIAUSER%012d\naws_secret_access_key = s%038d\n" % (i, i, i)
        for i in range(profiles)
    )


def test_a_huge_file_that_keeps_changing_is_inspected_sparingly(tmp_path: Path, live_issuer: Any) -> None:
    """Issue #10: a user appending to a many-profile file 3x a second made the agent parse it
    non-stop. Each inspection now waits at least 10x the CPU the last one took; the last change
    is still judged."""
    rig = Rig(tmp_path, live_issuer)
    alice = rig.users[0]
    seed(alice, _big_file(2000))
    rig.sync()
    judged: list[float] = []
    real_ensure = rig.planter.ensure

    def counting_ensure(*args: Any, **kwargs: Any) -> Any:
        judged.append(time.monotonic())
        return real_ensure(*args, **kwargs)

    rig.planter.ensure = counting_ensure  # type: ignore[method-assign]
    watcher = RepairWatcher(rig.planter, debounce=0.1)
    watcher.start(rig.planter.paths)
    try:
        started = time.monotonic()
        for i in range(9):  # 3 appends a second for 3 s
            with alice.credentials.open("ab") as fh:
                fh.write(b"# note %d\n" % i)
            time.sleep(1 / 3)
        during = len(judged)
        assert 1 <= during <= 2, f"inspected {during} times while it kept changing"
        assert wait_for(lambda: len(judged) == during + 1, 30), "the last change was never judged"
        gap = judged[-1] - judged[-2] if len(judged) >= 2 else judged[-1] - started
        assert gap >= 0.5
    finally:
        watcher.stop()
    assert actions(rig) == []  # the user's appends are theirs: no tamper
    assert alice.credentials.read_bytes().endswith(b"# note 8\n")
    assert rig.ts(alice).status == "planted"
