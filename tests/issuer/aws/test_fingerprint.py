"""Fingerprint resistance (issuer/aws/fingerprint.py, issuer/checks.py, `tripkey-issuer check`): an
account of the pool on a public list of known canary accounts is reported, at start and on demand.

Decoding samples, with their sources: ASIAQNZGKIQY56JQ7WML -> 029608264753 is the example of Tal
Be'ery's "A short note on AWS KEY ID" (the method the scanners cite); AKIAQYLPMN5HHHFPZAM2 ->
052310077262 is the canarytokens.org key in TruffleHog's README output ("Account: 052310077262").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from issuer.aws.fingerprint import CanaryListError, account_from_key_id, check_accounts, load_list
from issuer.checks import CheckContext, check_known_canary_accounts
from issuer.settings import Settings
from tests.support.aws import DEFAULT_ACCOUNT_ID


def test_account_ids_are_decoded_as_the_scanners_decode_them() -> None:
    assert account_from_key_id("ASIAQNZGKIQY56JQ7WML") == "029608264753"
    assert account_from_key_id("AKIAQYLPMN5HHHFPZAM2") == "052310077262"
    assert account_from_key_id("AKIAIOSFODNN7EXAMPLE") is None  # AKIAI...: before the encoding
    for junk in ("", "AKIA", "akiaqylpmn5hhhfpzam2", "AKIAQYLPMN5HHHFPZAM!", "AKIAQYLPMN5HHHFPZAM20"):
        assert account_from_key_id(junk) is None


def test_the_shipped_list_names_its_source_and_date() -> None:
    canaries = load_list()
    assert len(canaries.accounts) == 26 and "052310077262" in canaries.accounts
    assert canaries.source["url"].startswith("https://github.com/trufflesecurity/trufflehog/blob/")
    assert canaries.source["retrieved"] == "2026-11-30"


def test_an_operators_list_replaces_it_and_bad_lists_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "list.toml"
    good.write_text('[source]\nname = "ours"\n[[accounts]]\nid = "123456789012"\nnote = "test"\n')
    assert load_list(good).accounts == {"123456789012": "test"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accounts]]\nid = "1234"\n')
    with pytest.raises(CanaryListError, match="12-digit"):
        load_list(bad)
    with pytest.raises(CanaryListError, match="does-not-exist"):
        load_list(tmp_path / "does-not-exist.toml")


class Gateway:
    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids

    def account_id(self, name: str) -> str:
        if name not in self.ids:
            raise RuntimeError("no route to AWS")
        return self.ids[name]


def test_a_listed_pool_account_is_reported_with_the_source(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, accounts=[{"name": "canary-1"}, {"name": "canary-2"}])
    listed = Gateway({"canary-1": "052310077262"})
    results = list(check_known_canary_accounts(CheckContext(settings, gateway_factory=lambda _s: listed)))
    failures = [r.message for r in results if r.status == "fail"]
    assert any(
        m.startswith("pool account 'canary-1' (052310077262, sts:GetCallerIdentity) is on a public list")
        for m in failures
    )
    assert any("trufflesecurity/trufflehog" in m for m in failures)
    skipped = [r.message for r in results if r.status == "skip"]
    assert any("could not learn the id of pool account canary-2" in m for m in skipped)
    unlisted = Gateway({"canary-1": "111122223333"})
    one_account = settings.model_copy(update={"accounts": settings.accounts[:1]})
    clean = list(check_known_canary_accounts(CheckContext(one_account, gateway_factory=lambda _s: unlisted)))
    assert [r.status for r in clean] == ["ok"]


def test_keys_in_the_registry_are_decoded_too() -> None:
    canaries = load_list()
    findings = check_accounts(
        [("old", "052310077262", "decoded from access key id AKIAQYLPMN5HHHFPZAM2")], canaries
    )
    assert [f.account_id for f in findings] == ["052310077262"]


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
    return subprocess.run(
        [sys.executable, "-m", "issuer", "check", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_check_command_against_the_emulated_account(tmp_path: Path, moto_url: str) -> None:
    db = f"sqlite:///{tmp_path / 'issuer.db'}"
    config = tmp_path / "issuer.toml"
    config.write_text(f'aws_endpoint = "{moto_url}"\n')
    clean = _check("--config", str(config), "--db", db, "--sqs-queue-url", "https://sqs.example/q")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "fingerprint no account of the pool is on the list of 26" in clean.stdout
    # The operator's own list: moto's account (where this pool's keys live) is now a known canary.
    listed = tmp_path / "list.toml"
    listed.write_text(f'[source]\nname = "our red team"\n[[accounts]]\nid = "{DEFAULT_ACCOUNT_ID}"\n')
    config.write_text(f'aws_endpoint = "{moto_url}"\nknown_canary_accounts_file = "{listed}"\n')
    found = _check("--config", str(config), "--db", db, "--json", "--sqs-queue-url", "https://sqs.example/q")
    assert found.returncode == 1, found.stderr  # a failed check
    [result] = [r for r in json.loads(found.stdout)["checks"] if r["check"] == "fingerprint"]
    assert result["status"] == "fail" and f"pool account 'default' ({DEFAULT_ACCOUNT_ID}" in result["message"]
    assert "source: our red team" in result["message"]
    offline = _check(
        "--config", str(config), "--db", db, "--offline", "--sqs-queue-url", "https://sqs.example/q"
    )
    assert offline.returncode == 0, offline.stdout  # no keys registered and AWS not asked: nothing to say


def test_the_issuer_warns_at_start(
    issuer_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    listed = tmp_path / "list.toml"
    listed.write_text(f'[source]\nname = "ours"\n[[accounts]]\nid = "{DEFAULT_ACCOUNT_ID}"\n')
    with caplog.at_level("WARNING", logger="issuer.checks"):
        issuer_factory(known_canary_accounts_file=str(listed))
        deadline = time.monotonic() + 20
        while "public list of known canary accounts" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
    assert f"pool account 'default' ({DEFAULT_ACCOUNT_ID}" in caplog.text
