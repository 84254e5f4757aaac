"""The `tripkey` responder CLI against a live issuer: every command, table and --json, exit codes."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server_api_client.cli import main
from tests.support.client import Scripted, ScriptedServer, World


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def tripkey(world_or_url: World | str | None, *argv: str, token: str | None = None) -> Run:
    """Run `tripkey --issuer URL --token T ARGV...` in-process."""
    prefix: list[str] = []
    if isinstance(world_or_url, World):
        prefix = ["--issuer", world_or_url.url, "--token", token or world_or_url.responder_token]
    elif isinstance(world_or_url, str):
        prefix = ["--issuer", world_or_url, "--token", token or "tok"]
    out, err = io.StringIO(), io.StringIO()
    code = main([*prefix, *argv], stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _no_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRIPKEY_ISSUER_URL", "TRIPKEY_TOKEN", "TRIPKEY_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------------ reads


def test_reads_table(cl_world: World) -> None:
    run = tripkey(cl_world, "reads", "--device", cl_world.device_id)
    assert run.code == 0, run.err
    header = run.out.splitlines()[0]
    assert header.split() == ["TIME", "PID", "USER", "CLASSIFICATION", "EXE", "CMDLINE", "PATH"]
    assert "/usr/bin/cat" in run.out and "shell_utility" in run.out and "4242" in run.out
    assert "python3 /tmp/.x/steal.py" in run.out and "unknown" in run.out


def test_reads_json_and_filters(cl_world: World) -> None:
    run = tripkey(
        cl_world, "reads", "--device", cl_world.device_id, "--since", "1h", "--path", cl_world.path, "--json"
    )
    assert run.code == 0, run.err
    reads = run.json()["reads"]
    assert set(cl_world.read_event_ids) <= {r["event_id"] for r in reads}
    assert all(r["path"] == cl_world.path and r["device_id"] == cl_world.device_id for r in reads)
    limited = tripkey(cl_world, "reads", "--device", cl_world.device_id, "--limit", "1", "--json")
    assert len(limited.json()["reads"]) == 1


def test_reads_nothing_is_exit_0(cl_world: World) -> None:
    run = tripkey(cl_world, "reads", "--device", cl_world.device_id, "--path", "/nope")
    assert run.code == 0 and "no reads" in run.out
    as_json = tripkey(cl_world, "reads", "--device", cl_world.device_id, "--path", "/nope", "--json")
    assert as_json.code == 0 and as_json.json() == {"reads": []}


def test_reads_bad_arguments_are_exit_2(cl_world: World) -> None:
    assert tripkey(cl_world, "reads", "--device", cl_world.device_id, "--since", "last tuesday").code == 2
    assert tripkey(cl_world, "reads", "--device", cl_world.device_id, "--limit", "0").code == 2
    assert tripkey(cl_world, "reads").code == 2  # --device is required


def test_reads_unknown_device_is_exit_1(cl_world: World) -> None:
    run = tripkey(cl_world, "reads", "--device", "dev_nope")
    assert run.code == 1 and "not found" in run.err and run.out == ""


# ------------------------------------------------------------------------------------------ credentials


def test_credentials_lookup_table(cl_world: World) -> None:
    run = tripkey(cl_world, "credentials", "lookup", cl_world.access_key_id)
    assert run.code == 0, run.err
    assert f"ACCESS KEY {cl_world.access_key_id}: active" in run.out
    for expected in (cl_world.hostname, cl_world.device_id, "alice", cl_world.path, cl_world.profile):
        assert expected in run.out


def test_credentials_lookup_json(cl_world: World) -> None:
    run = tripkey(cl_world, "credentials", "lookup", cl_world.access_key_id, "--json")
    assert run.code == 0, run.err
    data = run.json()
    assert data["access_key_id"] == cl_world.access_key_id
    assert data["device"]["hostname"] == cl_world.hostname
    assert (data["local_user"], data["path"], data["profile"]) == ("alice", cl_world.path, cl_world.profile)
    assert "secret_access_key" not in data


def test_credentials_lookup_retired_and_revoked(cl_world: World) -> None:
    from server_api_client import IssuerClient

    device = IssuerClient(cl_world.url, cl_world.device_token)
    old = device.mint_credential(cl_world.device_id, "alice", "/home/alice/other/credentials", "p2")
    new = device.mint_credential(cl_world.device_id, "alice", "/home/alice/other/credentials", "p2")
    retired = tripkey(cl_world, "credentials", "lookup", old.access_key_id)
    assert retired.code == 0 and "retired" in retired.out and "RETIRED" in retired.out
    IssuerClient(cl_world.url, cl_world.responder_token).revoke_credential(
        cl_world.device_id, new.credential_id
    )
    revoked = tripkey(cl_world, "credentials", "lookup", new.access_key_id, "--json")
    assert revoked.code == 0 and revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"]


def test_credentials_lookup_unknown_is_exit_1(cl_world: World) -> None:
    run = tripkey(cl_world, "credentials", "lookup", "AKIANOTACANARY000000")
    assert run.code == 1 and "not found" in run.err
    assert tripkey(cl_world, "credentials", "lookup", "AKIANOTACANARY000000", "--json").code == 1


# ------------------------------------------------------------------------------------------ devices


def test_devices_list_table_and_stale(cl_world: World) -> None:
    run = tripkey(cl_world, "devices", "list")
    assert run.code == 0, run.err
    lines = {line.split()[0]: line for line in run.out.splitlines()[1:]}
    assert "fanotify ok" in lines[cl_world.device_id] and "1/1" in lines[cl_world.device_id]
    assert lines[cl_world.device_id].rstrip().endswith("ok")
    assert lines[cl_world.idle_device_id].rstrip().endswith("STALE")
    stale = tripkey(cl_world, "devices", "list", "--stale")
    assert stale.code == 0
    assert cl_world.idle_device_id in stale.out and cl_world.device_id not in stale.out


def test_devices_list_json(cl_world: World) -> None:
    run = tripkey(cl_world, "devices", "list", "--json")
    assert run.code == 0
    devices = {d["device_id"]: d for d in run.json()["devices"]}
    assert devices[cl_world.device_id]["hostname"] == cl_world.hostname
    assert devices[cl_world.idle_device_id]["stale"] is True
    stale = tripkey(cl_world, "devices", "list", "--stale", "--json").json()["devices"]
    assert [d["device_id"] for d in stale if d["device_id"] == cl_world.device_id] == []


def test_devices_show_table(cl_world: World) -> None:
    run = tripkey(cl_world, "devices", "show", cl_world.device_id)
    assert run.code == 0, run.err
    assert run.out.startswith(f"DEVICE {cl_world.device_id}: {cl_world.hostname}")
    for expected in (
        "last heartbeat:",
        "fanotify",
        "permission",
        "PLANTED TARGETS (1/1 planted)",
        cl_world.access_key_id,
        "CREDENTIALS",
        "Debian 12",
    ):
        assert expected in run.out
    idle = tripkey(cl_world, "devices", "show", cl_world.idle_device_id)
    assert "STALE" in idle.out and "(none)" in idle.out


def test_devices_show_json(cl_world: World) -> None:
    run = tripkey(cl_world, "devices", "show", cl_world.device_id, "--json")
    data = run.json()
    assert data["device_id"] == cl_world.device_id and data["stale"] is False
    assert data["health"]["targets"][0]["access_key_id"] == cl_world.access_key_id
    assert cl_world.credential_id in {c["credential_id"] for c in data["credentials"]}


def test_devices_show_unknown_is_exit_1(cl_world: World) -> None:
    assert tripkey(cl_world, "devices", "show", "dev_nope").code == 1


# ------------------------------------------------------------------------------------------ alerts


def test_alerts_list_show_ack_resolve(cl_world: World) -> None:
    alert_id = cl_world.alert(source_ip="198.51.100.77")

    listed = tripkey(cl_world, "alerts", "list")
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split()[:3] == ["ID", "STATUS", "SEVERITY"]
    assert alert_id in listed.out
    as_json = tripkey(cl_world, "alerts", "list", "--status", "open", "--json").json()
    assert alert_id in {a["alert_id"] for a in as_json["alerts"]}

    show = tripkey(cl_world, "alerts", "show", alert_id)
    assert show.code == 0, show.err
    for expected in (
        f"ALERT {alert_id}",
        "VERDICT HINT:",
        "CREDENTIAL AND PLACEMENT",
        cl_world.hostname,
        cl_world.path,
        cl_world.profile,
        cl_world.access_key_id,
        "AWS ACTIVITY",
        "198.51.100.77",
        "ListBuckets",
        "AccessDenied",
        "READS OF THE FILE",
        "/usr/bin/cat",
        "steal.py",
        "SELF-REPORTS",
        "AGENT HEALTH",
        "DELIVERIES",
    ):
        assert expected in show.out, expected
    shown_json = tripkey(cl_world, "alerts", "show", alert_id, "--json").json()
    assert shown_json["alert_id"] == alert_id
    assert shown_json["enrichment"]["placement"]["path"] == cl_world.path

    acked = tripkey(cl_world, "alerts", "ack", alert_id, "--note", "on it")
    assert acked.code == 0 and "acknowledged" in acked.out
    resolved = tripkey(cl_world, "alerts", "resolve", alert_id, "--note", "test key use", "--json")
    assert resolved.code == 0 and resolved.json()["status"] == "resolved"
    assert alert_id in {
        a["alert_id"]
        for a in tripkey(cl_world, "alerts", "list", "--status", "resolved", "--json").json()["alerts"]
    }


def test_alerts_unknown_is_exit_1(cl_world: World) -> None:
    assert tripkey(cl_world, "alerts", "show", "al_nope").code == 1
    assert tripkey(cl_world, "alerts", "ack", "al_nope").code == 1


def test_alerts_list_empty_is_exit_0(cl_world: World) -> None:
    # no alert is ever acknowledged-and-left in this module except by the lifecycle test, which resolves it
    run = tripkey(cl_world, "alerts", "list", "--status", "acknowledged", "--json")
    assert run.code == 0 and run.json() == {"alerts": []}


@pytest.mark.parametrize(
    "argv",
    [
        ["alerts", "show", ""],
        ["alerts", "ack", " "],
        ["alerts", "resolve", ""],
        ["devices", "show", ""],
        ["credentials", "lookup", ""],
        ["reads", "--device", ""],
    ],
)
def test_an_empty_id_is_a_usage_error_not_a_traceback(cl_world: World, argv: list[str]) -> None:
    # e.g. `tripkey alerts show "$ID"` with ID unset: the client library refuses it with ValueError
    run = tripkey(cl_world, *argv)
    assert run.code == 2 and "must not be empty" in run.err and run.out == ""


def test_alerts_bad_status_is_usage_error(cl_world: World) -> None:
    run = tripkey(cl_world, "alerts", "list", "--status", "closed")
    assert run.code == 2 and "invalid choice" in run.err


# ------------------------------------------------------------------------------------------ exit codes


def test_missing_issuer_or_token_is_exit_2(cl_world: World) -> None:
    no_issuer = tripkey(None, "--token", "x", "devices", "list")
    assert no_issuer.code == 2 and "TRIPKEY_ISSUER_URL" in no_issuer.err
    no_token = tripkey(None, "--issuer", cl_world.url, "devices", "list")
    assert no_token.code == 2 and "TRIPKEY_TOKEN" in no_token.err
    assert tripkey(None, "--issuer", "ftp://x", "--token", "t", "devices", "list").code == 2
    assert (
        tripkey(
            None, "--issuer", cl_world.url, "--token", "t", "--ca-bundle", "/nope.pem", "devices", "list"
        ).code
        == 2
    )
    assert tripkey(None, "devices").code == 2  # missing action


def test_environment_supplies_issuer_and_token(cl_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIPKEY_ISSUER_URL", cl_world.url)
    monkeypatch.setenv("TRIPKEY_TOKEN", cl_world.responder_token)
    run = tripkey(None, "credentials", "lookup", cl_world.access_key_id, "--json")
    assert run.code == 0 and run.json()["access_key_id"] == cl_world.access_key_id


def test_connection_options_after_the_subcommand(cl_world: World) -> None:
    run = tripkey(
        None,
        "devices",
        "show",
        cl_world.device_id,
        "--issuer",
        cl_world.url,
        "--token",
        cl_world.responder_token,
        "--json",
    )
    assert run.code == 0, run.err
    assert run.json()["device_id"] == cl_world.device_id


def test_bad_token_is_exit_3(cl_world: World) -> None:
    run = tripkey(cl_world, "devices", "list", token="definitely-not-a-token")
    assert run.code == 3 and "401" in run.err
    assert "definitely-not-a-token" not in run.err
    wrong_role = tripkey(cl_world, "devices", "list", token=cl_world.device_token)
    assert wrong_role.code == 3 and "responder token" in wrong_role.err
    revoked = cl_world.issuer.create_token("responder")
    cl_world.issuer.revoke_token(revoked)
    assert tripkey(cl_world, "devices", "list", token=revoked).code == 3


def test_unreachable_issuer_is_exit_4() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    run = tripkey(url, "--timeout", "2", "alerts", "list")
    assert run.code == 4 and url in run.err and "unreachable" in run.err


def test_server_error_is_exit_5(cl_server: ScriptedServer) -> None:
    cl_server.rule = lambda req: Scripted(500, {"error": {"code": "internal", "message": "boom"}})
    run = tripkey(cl_server.url, "devices", "list")
    assert run.code == 5 and "boom" in run.err


def test_non_json_answer_is_exit_5(cl_server: ScriptedServer) -> None:
    cl_server.rule = lambda req: Scripted(200, "<html>captive portal</html>")
    run = tripkey(cl_server.url, "alerts", "list")
    assert run.code == 5 and "not JSON" in run.err


def test_help_documents_exit_codes() -> None:
    run = tripkey(None, "--help")
    assert run.code == 0
    for code in (
        "0    success",
        "1    not found",
        "2    usage",
        "3    auth",
        "4    issuer unreachable",
        "5    issuer error",
        "141  the output's reader went away",
    ):
        assert code in run.out
    sub = tripkey(None, "reads", "--help")
    assert sub.code == 0 and "--since" in sub.out and "--json" in sub.out


# ------------------------------------------------------------------------------------------ demo


def test_demo_without_issuer_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)  # what a missing extra looks like to find_spec
    run = tripkey(None, "demo")
    assert run.code == 2
    assert "tripkey demo needs the issuer extra: pip install 'tripkey[issuer,dev]'" in run.err


def test_demo_passes_its_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("demo.run")
    fake.main = lambda argv: seen.append(list(argv)) or 0  # type: ignore[attr-defined]
    fake.require_modules = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "demo.run", fake)
    assert tripkey(None, "demo", "--keep", "--json").code == 0
    assert seen == [["--keep", "--json"]]


# ------------------------------------------------------------------------------------------ console script


def test_console_script_runs(cl_world: World) -> None:
    exe = Path(sys.executable).parent / "tripkey"
    if not exe.exists():
        pytest.skip("the tripkey console script is not installed in this environment")
    env = {**os.environ, "TRIPKEY_ISSUER_URL": cl_world.url, "TRIPKEY_TOKEN": cl_world.responder_token}
    done = subprocess.run(
        [str(exe), "credentials", "lookup", cl_world.access_key_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["device"]["hostname"] == cl_world.hostname
    missing = subprocess.run(
        [str(exe), "devices", "list"],
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "TRIPKEY_ISSUER_URL" in missing.stderr


def test_ca_bundle_option(cl_tls_server: tuple[ScriptedServer, Path]) -> None:
    server, ca_bundle = cl_tls_server
    server.rule = lambda req: Scripted(200, {"devices": []})
    untrusted = tripkey(server.url, "devices", "list")
    assert untrusted.code == 4 and "--ca-bundle" in untrusted.err
    assert server.received == []
    trusted = tripkey(server.url, "--ca-bundle", str(ca_bundle), "devices", "list", "--json")
    assert trusted.code == 0 and trusted.json() == {"devices": []}  # reachable, and nothing enrolled
