"""Planting orchestration against a LIVE issuer (moto as AWS): distinct keys, conflicts, tampering,
refresh/rotation with an injected clock, per-target errors, byte-exact unplant with revocation."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.clock import to_iso
from agent.planting.planter import Planter, refresh_due, tamper_delay
from agent.planting.targets import resolve_targets
from agent.reporting.enroll import ensure_enrolled
from agent.service import make_client
from agent.state import StateStore, TargetState
from tests.support.agent import SEED, Rig, agent_config, make_users, parse_credentials, seed


@pytest.fixture
def rig(tmp_path: Path, live_issuer: Any) -> Rig:
    return Rig(tmp_path, live_issuer)


def test_plants_distinct_credentials_owned_0600_and_parseable(rig: Rig) -> None:
    alice, bob = rig.users
    seed(alice)
    states = rig.sync()
    assert [s.status for s in states] == ["planted", "planted"]
    keys = {rig.ts(u).access_key_id for u in rig.users}
    assert len(keys) == 2 and keys <= rig.store.state.owned_key_ids
    for user in rig.users:
        st = user.credentials.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o600)
        parsed = parse_credentials(user.credentials)
        assert parsed["prod-backup"]["aws_access_key_id"] == rig.ts(user).access_key_id
    assert parse_credentials(alice.credentials)["work"]["aws_access_key_id"] == "AKIAUSERSOWNKEY00001"
    # The secret is in the file only, never in the state file.
    secret = parse_credentials(bob.credentials)["prod-backup"]["aws_secret_access_key"]
    assert secret not in Path(rig.config.state_dir, "state.json").read_text()
    assert rig.events == []


def test_second_pass_changes_nothing(rig: Rig) -> None:
    rig.sync()
    before = {u.name: u.credentials.read_bytes() for u in rig.users}
    creds_before = len(rig.issuer_credentials())
    rig.sync()
    assert {u.name: u.credentials.read_bytes() for u in rig.users} == before
    assert len(rig.issuer_credentials()) == creds_before  # nothing new minted


def test_conflict_reported_once_left_untouched_not_retried(rig: Rig) -> None:
    alice, bob = rig.users
    foreign = b"[prod-backup]\naws_access_key_id = AKIANOTOURS000000000\naws_secret_access_key = x\n"
    seed(alice, foreign)
    rig.sync()
    assert alice.credentials.read_bytes() == foreign
    assert rig.ts(alice).status == "conflict" and "not Tripkey's" in rig.ts(alice).last_error
    assert rig.ts(bob).status == "planted"  # other targets go on
    conflicts = [e for e in rig.events if e["tamper"]["action"] == "conflict"]
    assert len(conflicts) == 1 and conflicts[0]["path"] == str(alice.credentials)
    minted = len(rig.issuer_credentials())
    rig.sync()
    rig.planter.ensure(rig.target(alice))  # a watcher event: still backed off
    assert len([e for e in rig.events if e["tamper"]["action"] == "conflict"]) == 1
    assert len(rig.issuer_credentials()) == minted  # no credential minted for a conflicted file
    rig.clock.advance(hours=2)
    rig.planter.run_due()  # retried after the backoff, still a conflict, not reported again
    assert rig.ts(alice).status == "conflict" and len(rig.events) == 1


def test_duplicate_sections_are_a_conflict(rig: Rig) -> None:
    alice, _ = rig.users
    dup = b"[prod-backup]\na = 1\n[prod-backup]\nb = 2\n"
    seed(alice, dup)
    rig.sync()
    assert rig.ts(alice).status == "conflict" and alice.credentials.read_bytes() == dup


def test_removed_section_is_replanted_then_backed_off(rig: Rig) -> None:
    alice, _ = rig.users
    seed(alice)
    rig.sync()
    first_key = rig.ts(alice).access_key_id
    alice.credentials.write_bytes(SEED)  # the user removes our section
    rig.planter.ensure(rig.target(alice), hint="modified")
    assert rig.ts(alice).status == "planted" and rig.ts(alice).access_key_id != first_key
    assert rig.events[-1]["tamper"] == {
        "action": "section_removed",
        "replanted": True,
        "detail": "our profile 'prod-backup' was section removed",
    }
    # Second removal: reported, but re-planted only after 1 minute.
    alice.credentials.write_bytes(SEED)
    rig.clock.advance(seconds=5)
    rig.planter.ensure(rig.target(alice), hint="modified")
    assert rig.ts(alice).status == "pending" and alice.credentials.read_bytes() == SEED
    assert rig.events[-1]["tamper"]["replanted"] is False
    rig.clock.advance(seconds=30)
    rig.planter.run_due()
    assert alice.credentials.read_bytes() == SEED  # still waiting
    rig.clock.advance(seconds=31)
    rig.planter.run_due()
    assert rig.ts(alice).status == "planted" and b"[prod-backup]" in alice.credentials.read_bytes()
    # Third removal: two minutes.
    alice.credentials.write_bytes(SEED)
    rig.planter.ensure(rig.target(alice))
    assert rig.ts(alice).next_attempt_at == to_iso(rig.clock.now + dt.timedelta(seconds=120))


def test_deleted_file_is_recreated(rig: Rig) -> None:
    alice, _ = rig.users
    rig.sync()
    alice.credentials.unlink()
    rig.planter.ensure(rig.target(alice), hint="deleted")
    assert rig.events[-1]["tamper"]["action"] == "file_deleted"
    assert rig.ts(alice).status == "planted" and alice.credentials.exists()


def test_altered_secret_is_replanted(rig: Rig) -> None:
    alice, _ = rig.users
    rig.sync()
    text = alice.credentials.read_text()
    key = rig.ts(alice).access_key_id
    alice.credentials.write_text(text.split("aws_secret_access_key")[0] + "aws_secret_access_key =\n")
    rig.planter.ensure(rig.target(alice))
    assert rig.events[-1]["tamper"]["action"] == "section_altered"
    assert rig.ts(alice).status == "planted" and rig.ts(alice).access_key_id != key


def test_long_term_key_rotated_on_schedule(rig: Rig) -> None:
    alice, _ = rig.users
    rig.sync()
    old = rig.ts(alice)
    old_key, old_cred = old.access_key_id, old.credential_id
    rig.clock.advance(days=89)
    rig.sync()
    assert rig.ts(alice).access_key_id == old_key  # not yet
    rig.clock.advance(days=2)
    rig.sync()
    new_key = rig.ts(alice).access_key_id
    assert new_key != old_key and old_key in rig.store.state.owned_key_ids
    assert parse_credentials(alice.credentials)["prod-backup"]["aws_access_key_id"] == new_key
    info = {c.credential_id: c for c in rig.client.list_credentials(rig.store.state.device_id)}
    assert info[old_cred].status == "retired"  # the issuer retired the old one
    assert not rig.events  # a rotation is not a tamper


def test_refresh_due_rules() -> None:
    from agent.config import AgentConfig

    config = AgentConfig(refresh_before_seconds=6 * 3600, rotate_days=90)
    now = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    short = TargetState(path="/p", owner="o", profile="p", expires_at=to_iso(now + dt.timedelta(hours=7)))
    assert refresh_due(short, config, now) is None
    assert refresh_due(short, config, now + dt.timedelta(hours=1, seconds=1)) == "expiring"
    long = TargetState(path="/p", owner="o", profile="p", created_at=to_iso(now - dt.timedelta(days=90)))
    assert refresh_due(long, config, now) == "rotation"
    assert refresh_due(long, config, now - dt.timedelta(days=1)) is None


def test_tamper_delay_schedule() -> None:
    assert [tamper_delay(n) for n in (1, 2, 3, 4)] == [0, 60, 120, 240]
    assert tamper_delay(40) == 24 * 3600


def test_unknown_owner_recorded_others_planted(tmp_path: Path, live_issuer: Any) -> None:
    passwd, users = make_users(tmp_path)
    targets = [{"path": str(u.credentials), "owner": u.name} for u in users]
    targets.append({"path": str(tmp_path / "ghost" / ".aws" / "credentials"), "owner": "ghost"})
    config = agent_config(tmp_path, live_issuer, passwd, users, target=targets)
    resolved, errors = resolve_targets(config)
    assert list(errors) == [targets[2]["path"]] and "ghost" in errors[targets[2]["path"]]
    store = StateStore(config.state_dir)
    client = make_client(config)
    ensure_enrolled(store, client, config, [])
    states = Planter(config, store, client).sync(resolved, errors)
    assert [s.status for s in states] == ["planted", "planted"]


def test_unsafe_path_is_an_error_for_that_target_only(rig: Rig, tmp_path: Path) -> None:
    alice = rig.users[0]
    alice.credentials.parent.mkdir()
    os.chown(alice.credentials.parent, alice.uid, alice.gid)
    os.symlink("/etc/passwd", alice.credentials)  # a user-made symlink must never be followed
    states = rig.sync()
    # the canary cannot be planted there: reported as tampering (what stands there, who owns it)
    assert states[0].status == "tampered" and "symbolic link to /etc/passwd" in (states[0].last_error or "")
    assert states[1].status == "planted"
    assert os.path.islink(alice.credentials)
    assert len(rig.issuer_credentials()) == 1  # nothing minted for the unsafe path


def test_unplant_restores_bytes_and_revokes(rig: Rig) -> None:
    alice, bob = rig.users
    seed(alice)
    rig.sync()
    creds = [rig.ts(u).credential_id for u in rig.users]
    results = rig.planter.unplant_all()
    assert [r["removed"] for r in results] == [True, True]
    assert [r["revoked"] for r in results] == [True, True]
    assert alice.credentials.read_bytes() == SEED
    assert bob.credentials.read_bytes() == b""  # the file we created is emptied, never deleted
    info = {c.credential_id: c for c in rig.client.list_credentials(rig.store.state.device_id)}
    assert {info[c].status for c in creds} == {"revoked"}
    assert rig.store.state.targets == {} and rig.store.state.owned_key_ids  # owned ids are kept


def test_retired_target_is_removed_and_revoked(rig: Rig) -> None:
    bob = rig.users[1]
    rig.sync()
    bob_cred = rig.ts(bob).credential_id
    rig.targets = [t for t in rig.targets if t.owner.name == "alice"]
    rig.sync()
    assert str(bob.credentials) not in rig.store.state.targets
    assert b"prod-backup" not in bob.credentials.read_bytes()
    info = {c.credential_id: c for c in rig.client.list_credentials(rig.store.state.device_id)}
    assert info[bob_cred].status == "revoked"


def test_issuer_down_is_recorded_and_backed_off(tmp_path: Path, live_issuer: Any) -> None:
    rig = Rig(tmp_path, live_issuer)
    live_issuer.stop()
    rig.client.retries = 0
    states = rig.sync()
    assert {s.status for s in states} == {"error"}
    assert all("issuer unreachable" in (s.last_error or "") and s.next_attempt_at for s in states)


def test_region_goes_into_the_config_file_and_comes_out(tmp_path: Path, live_issuer: Any) -> None:
    rig = Rig(tmp_path, live_issuer, region="eu-west-1")
    alice, bob = rig.users
    seed(alice)
    own_config = b"[default]\nregion = us-west-2\n\n[profile work]\noutput = json\n"
    config_path = alice.credentials.parent / "config"
    config_path.write_bytes(own_config)
    os.chown(config_path, alice.uid, alice.gid)
    bob.credentials.parent.mkdir()
    os.chown(bob.credentials.parent, bob.uid, bob.gid)
    # Bob's own harmless section for the name (a role_arn there: see test_profile_shadowed_...).
    (bob.credentials.parent / "config").write_bytes(b"[profile prod-backup]\noutput = text\n")
    os.chown(bob.credentials.parent / "config", bob.uid, bob.gid)
    rig.sync()
    from botocore.configloader import raw_config_parse

    assert raw_config_parse(str(config_path))["profile prod-backup"] == {"region": "eu-west-1"}
    assert rig.ts(alice).last_error is None
    # Bob's own [profile prod-backup] is left alone and the problem is reported.
    assert rig.ts(bob).status == "planted" and "region not set" in (rig.ts(bob).last_error or "")
    rig.planter.unplant_all()
    assert config_path.read_bytes() == own_config
    assert (bob.credentials.parent / "config").read_bytes() == b"[profile prod-backup]\noutput = text\n"


def test_failed_rotation_keeps_the_planted_canary(tmp_path: Path, live_issuer: Any) -> None:
    rig = Rig(tmp_path, live_issuer)
    alice = rig.users[0]
    rig.sync()
    key = rig.ts(alice).access_key_id
    before = alice.credentials.read_bytes()
    live_issuer.stop()
    rig.client.retries = 0
    rig.clock.advance(days=91)
    rig.sync()
    ts = rig.ts(alice)
    assert ts.status == "planted" and ts.access_key_id == key  # still there, still ours
    assert "issuer unreachable" in (ts.last_error or "") and ts.next_attempt_at
    assert alice.credentials.read_bytes() == before


def test_refusal_messages_never_quote_the_users_file(rig: Rig) -> None:
    """A file refused as unparseable is reported (state, heartbeat, tamper event to the issuer) by
    line number only: the offending line may be the user's own secret."""
    alice = rig.users[0]
    user_secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYUSERSECRET1"
    seed(
        alice,
        b"[work]\naws_access_key_id = AKIAUSERSOWNKEY00001\naws_secret_access_key =\n  "
        + user_secret.encode()
        + b"\n",
    )
    before = alice.credentials.read_bytes()
    states = rig.sync()
    assert states[0].status == "conflict" and "line" in (states[0].last_error or "")
    assert alice.credentials.read_bytes() == before
    assert user_secret not in Path(rig.config.state_dir, "state.json").read_text()
    assert user_secret not in repr(rig.events) and rig.events  # the conflict event was emitted


def test_default_section_that_would_redirect_the_profile_is_a_conflict(rig: Rig) -> None:
    """A [DEFAULT] role_arn is inherited by every profile: botocore would assume that role instead
    of using the canary's keys, so the canary would be dead. Refused, explained, key revoked."""
    alice = rig.users[0]
    data = b"[DEFAULT]\nrole_arn = arn:aws:iam::123456789012:role/admin\nsource_profile = work\n" + SEED
    seed(alice, data)
    states = rig.sync()
    assert states[0].status == "conflict" and "role_arn" in (states[0].last_error or "")
    assert alice.credentials.read_bytes() == data
    assert all(c.status != "active" for c in rig.issuer_credentials().values() if c.local_user == "alice")


def test_profile_shadowed_by_the_config_file_is_a_conflict(rig: Rig) -> None:
    """botocore merges ~/.aws/config's [profile NAME] into the profile and a role_arn there wins
    over the credentials file's keys: nothing is minted for such a target, and a user who adds one
    later (the canary silenced) is reported."""
    alice, bob = rig.users
    seed(alice)
    config = alice.credentials.parent / "config"
    config.write_bytes(b"[profile prod-backup]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = work\n")
    os.chown(config, alice.uid, alice.gid)
    states = rig.sync()
    assert states[0].status == "conflict" and "role_arn" in (states[0].last_error or "")
    assert alice.credentials.read_bytes() == SEED and states[0].access_key_id is None
    assert states[1].status == "planted"
    assert [c.local_user for c in rig.issuer_credentials().values()] == ["bob"]
    # bob plants fine, then adds an sso_ setting in a [DEFAULT] of his config: reported.
    bob_config = bob.credentials.parent / "config"
    bob_config.write_bytes(b"[DEFAULT]\nsso_session = corp\n")
    os.chown(bob_config, bob.uid, bob.gid)
    state = rig.planter.ensure(rig.target(bob), force=True)
    assert state.status == "conflict" and "sso_session" in (state.last_error or "")
    assert [e["tamper"]["action"] for e in rig.events] == ["conflict", "conflict"]


def test_secrets_already_planted_are_learned_after_a_restart(rig: Rig) -> None:
    """The read log and spool scrub the planted secrets; a restarted agent (a new Planter on the
    same state) learns them from the files (in memory only), not just the ones it plants itself."""
    told: list[str] = []
    rig.planter.on_secret = told.append
    rig.sync()
    secrets = {parse_credentials(u.credentials)["prod-backup"]["aws_secret_access_key"] for u in rig.users}
    assert set(told) == secrets
    restarted: list[str] = []
    again = Planter(rig.config, rig.store, rig.client, clock=rig.clock, on_secret=restarted.append)
    again.sync(rig.targets, rig.errors)
    assert set(restarted) == secrets
    again.sync(rig.targets, rig.errors)
    assert len(restarted) == len(secrets)  # learned once per file, not on every pass
    assert not any(s in Path(rig.config.state_dir, "state.json").read_text() for s in secrets)


def test_every_new_version_is_handed_to_on_new_file_before_the_rename(rig: Rig) -> None:
    """Plant, repair and rotation each write a new inode: the hook sees it while it is not yet visible."""
    alice, bob = rig.users
    seed(alice)
    seen: list[tuple[str, int, bool]] = []

    def on_new_file(path: str, fd: int) -> None:
        new = os.fstat(fd).st_ino
        visible = os.path.exists(path) and os.stat(path).st_ino == new
        seen.append((path, new, visible))

    rig.planter.on_new_file = on_new_file
    rig.sync()
    assert sorted(p for p, _, _ in seen) == sorted(str(u.credentials) for u in rig.users)
    assert all(not visible for _, _, visible in seen)
    assert {p: ino for p, ino, _ in seen} == {
        str(u.credentials): u.credentials.stat().st_ino for u in rig.users
    }
    # A repair (our section removed by the user) writes a new version: handed over too.
    alice.credentials.write_bytes(SEED)
    seen.clear()
    rig.planter.ensure(rig.target(alice), hint="modified")
    assert [(p, ino) for p, ino, _ in seen] == [(str(alice.credentials), alice.credentials.stat().st_ino)]
    # A rotation too.
    seen.clear()
    rig.clock.advance(days=400)
    rig.planter.ensure(rig.target(bob))
    assert [(p, ino) for p, ino, _ in seen] == [(str(bob.credentials), bob.credentials.stat().st_ino)]


def test_a_failing_on_new_file_hook_does_not_stop_the_plant(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: str, fd: int) -> None:
        raise OSError(28, "fanotify: no space for another mark")

    rig.planter.on_new_file = broken
    assert [s.status for s in rig.sync()] == ["planted", "planted"]
    assert "could not watch the new version" in caplog.text
