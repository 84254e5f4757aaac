"""The agent state file: permissions, atomic writes, round trip, never a secret, the dir lock."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.state import AgentBusy, DirLock, StateError, StateStore, TargetState


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dir_and_file_permissions(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    store = StateStore(state_dir)
    with store.mutate() as st:
        st.ensure_device_key()
        st.device_id, st.device_token = "dev_1", "tok_1"
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "state.json") == 0o600
    assert not [p for p in state_dir.iterdir() if p.name.endswith(".tmp")]  # temp file renamed away


def test_loose_existing_dir_is_tightened(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    StateStore(state_dir)
    assert mode(state_dir) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the directory to another user")
def test_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Whoever owns the directory can chmod it back and read the device token: refuse, touch nothing."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    os.chown(state_dir, 23999, 23999)
    with pytest.raises(StateError, match="owned by uid 23999"):
        StateStore(state_dir)
    with pytest.raises(StateError, match="owned by uid 23999"):
        DirLock(state_dir).acquire()
    assert mode(state_dir) == 0o755 and list(state_dir.iterdir()) == []


def test_state_dir_that_is_not_a_directory_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("x")
    with pytest.raises(StateError, match="not a directory"):
        StateStore(tmp_path / "state")


def test_round_trip_and_owned_ids(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.mutate() as st:
        key = st.ensure_device_key()
        st.targets["/h/a/.aws/credentials"] = TargetState(
            path="/h/a/.aws/credentials",
            owner="a",
            profile="prod-backup",
            status="planted",
            credential_id="cred_1",
            access_key_id="AKIAOLD",
            expires_at="2026-11-23T10:00:00Z",
        )
        st.owned_key_ids.update({"AKIAOLD", "AKIANEW"})
    again = StateStore(tmp_path).state
    assert again.device_key == key and len(key) >= 32
    assert again.owned_key_ids == {"AKIAOLD", "AKIANEW"}
    ts = again.targets["/h/a/.aws/credentials"]
    assert ts.planted and ts.access_key_id == "AKIAOLD" and ts.expires_at == "2026-11-23T10:00:00Z"


def test_device_key_is_stable(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.mutate() as st:
        first = st.ensure_device_key()
        assert st.ensure_device_key() == first


def test_state_never_has_a_secret_field() -> None:
    fields = set(TargetState.__dataclass_fields__)
    assert not {f for f in fields if "secret" in f or "session" in f}


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="corrupt"):
        StateStore(tmp_path)


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(
        json.dumps(
            {
                "device_id": "dev_9",
                "future_field": 1,
                "targets": {"/p": {"path": "/p", "owner": "o", "profile": "x", "new": 2}},
            }
        )
    )
    st = StateStore(tmp_path).state
    assert st.device_id == "dev_9" and st.targets["/p"].owner == "o"


def test_dir_lock_is_exclusive(tmp_path: Path) -> None:
    with DirLock(tmp_path), pytest.raises(AgentBusy, match=f"pid {os.getpid()}"):
        DirLock(tmp_path).acquire()
    with DirLock(tmp_path):  # released: can be taken again
        pass
