"""`ingest-secret create`: the printed secret passes the ingest check; only its hash is in the config."""

from __future__ import annotations

import argparse
import json
import tomllib

import pytest

from issuer.api.routers.ingest import check_ingest_key
from issuer.detection import ingest_secret
from issuer.errors import Unauthenticated
from issuer.settings import Settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tripkey-issuer")
    ingest_secret.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_create_json_and_config_round_trip(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ingest_secret.run(parse(["ingest-secret", "create", "--name", "eb-prod", "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    config = tomllib.loads(data["config"])
    assert data["secret"] not in data["config"]
    settings = Settings(data_dir=tmp_path, **config)
    check_ingest_key(settings, "eb-prod", data["secret"])  # accepted
    with pytest.raises(Unauthenticated):
        check_ingest_key(settings, "eb-prod", data["secret"] + "x")
    with pytest.raises(Unauthenticated):
        check_ingest_key(settings, "eb-other", data["secret"])


def test_bad_name_and_help(capsys) -> None:  # type: ignore[no-untyped-def]
    assert ingest_secret.run(parse(["ingest-secret", "create", "--name", "no/slash"])) == 2
    captured = capsys.readouterr()
    assert "--name must be" in captured.err and captured.out == ""
    with pytest.raises(SystemExit):
        parse(["ingest-secret", "create", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "The secret is printed once" in help_text and "stores only the hash" in help_text


def test_module_entry_point() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "issuer.detection.ingest_secret", "create", "--name", "eb", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == "/v1/ingest/eventbridge/eb"
    done = subprocess.run(
        [sys.executable, "-m", "issuer.detection.ingest_secret", "create"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--name" in done.stderr
