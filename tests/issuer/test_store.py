"""Migrations and the registry on SQLite AND a real PostgreSQL server (`db_url` is parametrised)."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from issuer import agent_events, registry
from issuer import tokens as auth
from issuer.aws.gateway import AwsGateway, MintingConfig
from issuer.db import Database, current_revision, downgrade, head_revision, upgrade
from issuer.errors import NotFound, Unauthenticated
from issuer.models import Base, Device


@pytest.fixture
def database(db_url: str) -> Any:
    db = Database(db_url)
    db.migrate()
    yield db
    db.dispose()


def test_migrations_create_exactly_the_models(database: Database) -> None:
    assert current_revision(database.engine) == head_revision()
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], f"issuer/models.py and the migrations differ: {diff}"
    assert set(inspect(database.engine).get_table_names()) >= set(Base.metadata.tables)


def test_migrations_are_idempotent_and_reversible(database: Database) -> None:
    upgrade(database.engine)  # again: nothing to do
    downgrade(database.engine, "base")
    assert set(inspect(database.engine).get_table_names()) <= {"alembic_version"}
    upgrade(database.engine)
    assert current_revision(database.engine) == head_revision()


def test_concurrent_migrations_do_not_conflict(db_url: str) -> None:
    """Several replicas starting at once all end at head (advisory lock on PostgreSQL)."""
    databases = [Database(db_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(db: Database) -> None:
        try:
            db.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert current_revision(databases[0].engine) == head_revision()
    for db in databases:
        db.dispose()


def test_tokens_hashed_and_revocable(database: Database) -> None:
    with database.session() as session:
        row, raw = auth.create_token(session, "responder", label="ops")
        assert (
            raw.startswith("tkr_") and row.token_hash == auth.hash_secret(raw) and raw not in row.token_hash
        )
        assert auth.authenticate(session, raw).role == "responder"
        auth.revoke_token(session, row.id)
        with pytest.raises(Unauthenticated, match="revoked"):
            auth.authenticate(session, raw)
        with pytest.raises(Unauthenticated):
            auth.authenticate(session, raw + "x")
        with pytest.raises(auth.UnknownRole, match="admin"):
            auth.create_token(session, "admin")


def test_enroll_is_idempotent_by_device_key(database: Database) -> None:
    with database.session() as session:
        first, token1, created1 = registry.enroll_device(
            session, device_key="k" * 40, hostname="lap", os="linux"
        )
        again, token2, created2 = registry.enroll_device(
            session, device_key="k" * 40, hostname="lap-renamed", os="linux", users=["bob"]
        )
        other, _, created3 = registry.enroll_device(session, device_key="j" * 40, hostname="lap", os="linux")
        assert (created1, created2, created3) == (True, False, True)
        assert first.id == again.id != other.id
        assert again.hostname == "lap-renamed" and again.users == ["bob"]
        with pytest.raises(Unauthenticated):
            auth.authenticate(session, token1)
        assert auth.authenticate(session, token2).device_id == first.id
        # Datetimes come back timezone-aware on every backend.
        device = session.get(Device, first.id)
        assert device is not None and device.enrolled_at.tzinfo is not None
        with pytest.raises(NotFound):
            registry.get_device(session, "dev_\x00")


def test_credentials_events_and_selftests(database: Database, moto_url: str) -> None:
    gateway = AwsGateway(MintingConfig(endpoint_url=moto_url))
    with database.session() as session:
        device, _, _ = registry.enroll_device(session, device_key="d" * 40, hostname="lap", os="linux")
        placement = {"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "p"}
        first = registry.issue_credential(session, gateway, device.id, **placement)
        second = registry.issue_credential(session, gateway, device.id, **placement)
        assert second.retired == (first.credential.id,)
        assert registry.active_counts(session) == {"default": 2}  # the retired IAM user still exists
        found = registry.find_credential(session, principal_name=first.minted.principal_name)
        assert found is not None and registry.credential_status(found) == "retired"
        assert registry.find_credential(session, access_key_id="\x00") is None

        revoked = registry.revoke_credential(session, gateway, device.id, second.credential.id)
        assert registry.credential_info(revoked)["status"] == "revoked"
        assert [c.id for c in registry.list_credentials(session, device.id)] == [
            first.credential.id,
            second.credential.id,
        ]

        now = dt.datetime.now(dt.UTC)
        events = [
            {
                "event_id": str(uuid.uuid4()),
                "kind": "read",
                "time": now - dt.timedelta(hours=h),
                "path": placement["path"],
                "detail": {"pid": 10 + h, "exe": "/usr/bin/aws", "user": "alice"},
            }
            for h in (1, 2, 50)
        ]
        assert agent_events.store_events(session, device.id, events) == (3, 0, ())
        assert agent_events.store_events(session, device.id, [*events, events[0]]) == (0, 4, ())
        reads = agent_events.query_reads(session, device.id, since=agent_events.parse_since("24h"))
        assert [r.pid for r in reads] == [11, 12]  # newest first, the 50 h old one excluded
        assert reads[0].time.tzinfo is not None
        record = agent_events.read_record(reads[0])
        assert record["exe"] == "/usr/bin/aws" and record["device_id"] == device.id

        test = agent_events.create_selftest(session, device.id, first.credential.id, 900)
        assert 899 <= (test.expires_at - test.created_at).total_seconds() <= 900
        with pytest.raises(NotFound):
            agent_events.create_selftest(session, device.id, "cred_nope", 900)


def test_parse_since() -> None:
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    assert agent_events.parse_since("24h", now) == now - dt.timedelta(hours=24)
    assert agent_events.parse_since("30m", now) == now - dt.timedelta(minutes=30)
    assert agent_events.parse_since("2026-11-22T10:00:00Z", now) == dt.datetime(
        2026, 11, 22, 10, tzinfo=dt.UTC
    )
    assert agent_events.parse_since("2026-11-22T10:00:00", now).tzinfo is not None
    for bad in ("yesterday", "24x", "", "-1h"):
        with pytest.raises(ValueError, match="since"):
            agent_events.parse_since(bad, now)


def test_pool_counts_retired_iam_users_they_still_exist_in_aws(database: Database, moto_url: str) -> None:
    """Rotation keeps the old IAM user (still matched if used): it still counts toward the account's
    5,000-user quota, so the pool must count it, or CreateUser fails at the quota instead of the pool
    moving on to the next account."""
    gateway = AwsGateway(MintingConfig(endpoint_url=moto_url))
    with database.session() as session:
        device, _, _ = registry.enroll_device(session, device_key="q" * 40, hostname="lap", os="linux")
        placement = {"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "p"}
        first = registry.issue_credential(session, gateway, device.id, **placement)
        second = registry.issue_credential(session, gateway, device.id, **placement)
        iam = gateway.client("iam")
        users = {u["UserName"] for u in iam.list_users()["Users"]}
        assert {first.minted.principal_name, second.minted.principal_name} <= users
        assert registry.active_counts(session) == {"default": 2}
        registry.revoke_credential(session, gateway, device.id, first.credential.id)
        assert registry.active_counts(session) == {"default": 1}


def test_event_ids_are_per_device(database: Database) -> None:
    """An event id is the agent's own idempotency key: another device using the same id must neither
    lose its event as a "duplicate" nor learn that the id exists elsewhere."""
    with database.session() as session:
        a, _, _ = registry.enroll_device(session, device_key="a" * 40, hostname="a", os="linux")
        b, _, _ = registry.enroll_device(session, device_key="b" * 40, hostname="b", os="linux")
        when = dt.datetime.now(dt.UTC)

        def event(path: str) -> dict[str, Any]:
            return {"event_id": "same-id", "kind": "read", "time": when, "path": path, "detail": {"pid": 1}}

        assert agent_events.store_events(session, a.id, [event("/a/credentials")]) == (1, 0, ())
        assert agent_events.store_events(session, b.id, [event("/b/credentials")]) == (1, 0, ())
        assert agent_events.store_events(session, b.id, [event("/b/credentials")]) == (0, 1, ())
        assert [r.path for r in agent_events.query_reads(session, a.id)] == ["/a/credentials"]
        assert [r.path for r in agent_events.query_reads(session, b.id)] == ["/b/credentials"]


def test_migration_0002_keeps_agent_events(db_url: str) -> None:
    """Rebuilding agent_events for its new key copies every row, both ways."""
    from sqlalchemy import text

    db = Database(db_url)
    try:
        upgrade(db.engine, "0001")
        with db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO devices (id, device_key_hash, hostname, os, users, enrolled_at, health) "
                    "VALUES ('dev_1', :h, 'h', 'linux', '[]', :t, '{}')"
                ),
                {"h": "0" * 64, "t": dt.datetime(2026, 11, 1, tzinfo=dt.UTC)},
            )
            connection.execute(
                text(
                    "INSERT INTO agent_events (event_id, device_id, kind, time, path, detail, received_at)"
                    " VALUES ('e1', 'dev_1', 'read', :t, '/p', '{\"pid\": 7}', :t)"
                ),
                {"t": dt.datetime(2026, 11, 1, tzinfo=dt.UTC)},
            )
        upgrade(db.engine)
        with db.session() as session:
            [read] = agent_events.query_reads(session, "dev_1", since=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            assert (read.event_id, read.path, read.detail) == ("e1", "/p", {"pid": 7})
        downgrade(db.engine, "0001")
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT event_id FROM agent_events")).scalars().all() == ["e1"]
    finally:
        db.dispose()
