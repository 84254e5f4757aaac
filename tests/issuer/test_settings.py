"""Settings layers: defaults < TOML file < TRIPKEY_* environment < flags; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from issuer.settings import SettingsError, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "issuer.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"data_dir": str(tmp_path)})
    assert settings.db_url == f"sqlite:///{tmp_path / 'issuer.db'}"
    assert settings.listen == "127.0.0.1:8700" and settings.listen_port == 8700
    assert settings.minting.backend == "iam-user" and settings.minting.name_prefix == "svc-backup-"
    assert [a.name for a in settings.accounts] == ["default"]
    assert settings.max_body_bytes == 1024 * 1024 and settings.selftest_window_seconds == 900
    assert settings.poll_interval == 300 and settings.detection_enabled()


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        'listen = "127.0.0.1:1111"\npoll_interval = 10\naws_region = "eu-west-1"\n'
        '[minting]\nbackend = "sts-federation"\nfederation_duration_seconds = 3600\n'
        '[[accounts]]\nname = "main"\n[[accounts]]\nname = "spare"\nregion = "eu-west-1"\n',
    )
    # TRIPKEY_SENSOR is the agent's: shared environments must not break the issuer.
    env = {"TRIPKEY_LISTEN": "127.0.0.1:2222", "TRIPKEY_POLL_INTERVAL": "20", "TRIPKEY_SENSOR": "fanotify"}
    settings = load_settings(config, env=env, overrides={"listen": "127.0.0.1:3333", "poll_interval": None})
    assert settings.listen == "127.0.0.1:3333"  # flag
    assert settings.poll_interval == 20  # env (flag not given)
    assert settings.aws_region == "eu-west-1"  # file
    assert (
        settings.minting.backend == "sts-federation" and settings.minting.federation_duration_seconds == 3600
    )
    assert [a.name for a in settings.accounts] == ["main", "spare"]
    minting = settings.minting_config()
    assert minting.backend == "sts-federation" and [a.name for a in minting.accounts] == ["main", "spare"]


def test_env_nested_and_json_values(tmp_path: Path) -> None:
    env = {
        "TRIPKEY_DATA_DIR": str(tmp_path),
        "TRIPKEY_MINTING__NAME_PREFIX": "svc-sync-",
        "TRIPKEY_LOOKUP_EVENTS_REGIONS": '["us-east-1", "eu-west-1"]',
        "TRIPKEY_SINKS": '[{"type": "jsonl", "name": "file", "path": "/tmp/alerts.jsonl"}]',
    }
    settings = load_settings(env=env)
    assert settings.minting.name_prefix == "svc-sync-"
    assert settings.lookup_events_regions == ["us-east-1", "eu-west-1"]
    assert settings.sinks[0]["type"] == "jsonl"


def test_postgres_url_uses_psycopg3(tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"db_url": "postgresql://u:pw@db/tripkey"})
    assert settings.db_url == "postgresql+psycopg://u:pw@db/tripkey"
    assert "pw" not in settings.redacted()["db_url"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("colour = 'blue'\n", ["unknown key", "colour"]),
        ("[minting]\nbakend = 'iam-user'\n", ["unknown key", "minting.bakend"]),
        ("[minting]\nbackend = 'magic'\n", ["minting.backend"]),
        ("[minting]\nfederation_duration_seconds = 200000\n", ["federation_duration_seconds"]),
        ("[minting]\nname_prefix = 'canary-'\n", ["canary"]),
        ("listen = 'nowhere'\n", ["HOST:PORT"]),
        ("max_body_bytes = 'big'\n", ["max_body_bytes"]),
        ("[[sinks]]\ntype = 'carrier-pigeon'\n", ["sinks"]),
        ("[[accounts]]\nname = 'a'\n[[accounts]]\nname = 'a'\n", ["duplicate"]),
        ("[[ingest_destinations]]\nname = 'eb'\nsecret_sha256 = 'plaintext'\n", ["secret_sha256"]),
        ("this is = not toml [", ["not valid TOML"]),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_write(tmp_path, text), env={})
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_missing_file_and_bad_env(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(SettingsError, match="TRIPKEY_SINKS"):
        load_settings(env={"TRIPKEY_SINKS": "[not json"})
    with pytest.raises(SettingsError, match=r"unknown key 'minting\.issuer'"):
        load_settings(env={"TRIPKEY_MINTING__ISSUER": "x"})
    with pytest.raises(SettingsError, match="poll_interval"):
        load_settings(env={"TRIPKEY_POLL_INTERVAL": "often"})
