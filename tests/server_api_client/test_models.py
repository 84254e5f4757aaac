"""Parsing of issuer answers into typed results: lenient on extras, strict on what is required."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from server_api_client import (
    Alert,
    AlertSummary,
    CredentialInfo,
    Enrollment,
    EventBatchResult,
    IssuedCredential,
    ProtocolError,
    ReadRecord,
)
from server_api_client.models import parse_time

ISSUED = {
    "credential_id": "cred_1",
    "access_key_id": "ASIAEXAMPLE",
    "secret_access_key": "SECRET-VALUE-1",
    "session_token": "SESSION-TOKEN-VALUE",
    "expires_at": "2026-11-23T22:00:00Z",
    "backend": "sts-federation",
    "account": "main",
    "principal_name": "svc-backup-x",
    "placement_id": "plc_1",
    "retired": [],
    "future_field": 1,
}


def test_secrets_never_in_repr() -> None:
    cred = IssuedCredential.from_json(ISSUED)
    text = repr(cred) + str(cred)
    assert "SECRET-VALUE-1" not in text and "SESSION-TOKEN-VALUE" not in text
    assert cred.session_token == "SESSION-TOKEN-VALUE"
    assert cred.expires_at == dt.datetime(2026, 11, 23, 22, tzinfo=dt.UTC)
    enrollment = Enrollment.from_json({"device_id": "dev_1", "device_token": "DEVTOKEN", "created": True})
    assert "DEVTOKEN" not in repr(enrollment)


def test_results_are_frozen() -> None:
    cred = IssuedCredential.from_json(ISSUED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cred.access_key_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("missing", ["credential_id", "access_key_id", "secret_access_key", "principal_name"])
def test_missing_required_field_raises(missing: str) -> None:
    with pytest.raises(ProtocolError, match=missing):
        IssuedCredential.from_json({k: v for k, v in ISSUED.items() if k != missing})


def test_wrong_types_raise() -> None:
    with pytest.raises(ProtocolError):
        EventBatchResult.from_json({"accepted": True, "duplicates": 0})  # a bool is not a count
    with pytest.raises(ProtocolError):
        EventBatchResult.from_json({"accepted": "3"})
    with pytest.raises(ProtocolError):
        IssuedCredential.from_json({**ISSUED, "retired": "cred_0"})
    with pytest.raises(ProtocolError):
        ReadRecord.from_json(
            {"event_id": "e", "time": "2026-11-22T10:00:00Z", "path": "/p", "ancestors": [1]}
        )
    with pytest.raises(ProtocolError):
        AlertSummary.from_json({"status": "open"})  # no id


def test_times() -> None:
    assert parse_time("2026-11-22T10:00:00") == dt.datetime(2026, 11, 22, 10, tzinfo=dt.UTC)  # naive = UTC
    assert parse_time("2026-11-22T12:00:00+02:00") == dt.datetime(2026, 11, 22, 10, tzinfo=dt.UTC)
    for bad in ("yesterday", "", "2026-13-01T00:00:00Z"):
        with pytest.raises(ProtocolError):
            parse_time(bad)


def test_credential_info_with_device() -> None:
    info = CredentialInfo.from_json(
        {
            "credential_id": "cred_1",
            "access_key_id": "AKIA1",
            "status": "retired",
            "retired_at": "2026-11-22T10:00:00Z",
            "device": {"device_id": "dev_1", "hostname": "lap-17", "users": ["alice"], "stale": True},
        }
    )
    assert info.device is not None and info.device.hostname == "lap-17" and info.device.stale is True
    assert info.retired_at is not None and info.raw["device"]["users"] == ["alice"]


def test_alert_accepts_alert_id_and_keeps_raw() -> None:
    alert = Alert.from_json(
        {
            "alert_id": "al_9",
            "status": "open",
            "title": "t",
            "verdict": {"hint": "x"},
            "deliveries": [{"sink": "jsonl"}],
            "extra": 1,
        }
    )
    assert (
        alert.alert_id == "al_9"
        and alert.verdict == {"hint": "x"}
        and alert.deliveries == ({"sink": "jsonl"},)
    )
    assert alert.raw["extra"] == 1 and alert.selftest is False and alert.event_count == 0
