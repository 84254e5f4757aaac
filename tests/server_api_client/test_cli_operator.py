"""`tripkey` for the operator: offboarding (revoke keys, retire devices), errors that name the real
problem with the documented exit code, --json errors, a closed pipe, examples in every help."""

from __future__ import annotations

import io
import json
import secrets
from typing import Any

import pytest

from server_api_client import AuthError, IssuerClient
from server_api_client.cli import build_parser, main
from tests.support.aws import inspector
from tests.support.cli import every_leaf_command, help_text, run_into_closed_pipe, run_tool
from tests.support.client import Scripted, ScriptedServer, World


def tripkey(*argv: str, world: World | None = None, url: str | None = None) -> tuple[int, str, str]:
    prefix = []
    if world is not None:
        prefix = ["--issuer", world.url, "--token", world.responder_token]
    elif url is not None:
        prefix = ["--issuer", url, "--token", "tok"]
    out, err = io.StringIO(), io.StringIO()
    code = main([*prefix, *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _no_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRIPKEY_ISSUER_URL", "TRIPKEY_TOKEN", "TRIPKEY_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def _fresh_device(world: World, hostname: str) -> tuple[str, IssuerClient, list[str]]:
    """A new enrolled device holding two canaries (so the module's world stays as it is)."""
    enrolled = IssuerClient(world.url, world.issuer.create_token("enroll")).enroll(
        secrets.token_urlsafe(32), hostname, "linux"
    )
    device = IssuerClient(world.url, enrolled.device_token)
    keys = [
        device.mint_credential(enrolled.device_id, user, f"/home/{user}/.aws/credentials", "prod-backup")
        for user in ("carol", "dave")
    ]
    return enrolled.device_id, device, [k.access_key_id for k in keys]


def _iam_users(moto_url: str) -> set[str]:
    return {u["UserName"] for u in inspector(moto_url, "iam").list_users()["Users"]}


# ------------------------------------------------------------------------------------------ offboarding


def test_credentials_revoke_deletes_the_keys_and_is_idempotent(cl_world: World, moto_server: str) -> None:
    device_id, _device, keys = _fresh_device(cl_world, "laptop-offboard-1")
    code, out, err = tripkey("credentials", "revoke", *keys, world=cl_world)
    assert code == 0, err
    assert out.count("revoked AKIA") == 2 and device_id in out and "carol" in out
    for key in keys:
        lookup = tripkey("credentials", "lookup", key, "--json", world=cl_world)
        assert json.loads(lookup[1])["status"] == "revoked"
    # Again: already revoked is a success (running the same command twice finishes a job).
    code, out, _ = tripkey("credentials", "revoke", keys[0], "--json", world=cl_world)
    assert code == 0 and json.loads(out)["credentials"][0]["status"] == "revoked"
    code, _, err = tripkey("credentials", "revoke", "AKIANOSUCHKEY0000000", world=cl_world)
    assert code == 1 and "not found" in err


def test_devices_retire_revokes_every_key_and_the_device_token(cl_world: World, moto_server: str) -> None:
    device_id, device, keys = _fresh_device(cl_world, "laptop-offboard-2")
    principals = {
        IssuerClient(cl_world.url, cl_world.responder_token).lookup_credential(k).principal_name for k in keys
    }
    assert principals <= _iam_users(moto_server)

    code, out, err = tripkey("devices", "retire", device_id, world=cl_world)
    assert code == 0, err
    assert f"device {device_id} (laptop-offboard-2) retired at" in out
    assert all(key in out for key in keys)
    assert not principals & _iam_users(moto_server)  # the IAM users are gone from AWS
    with pytest.raises(AuthError) as refused:
        device.heartbeat(device_id, {"agent_version": "0.1.0"})
    assert refused.value.status_code == 401  # its device token is revoked

    shown = json.loads(tripkey("devices", "show", device_id, "--json", world=cl_world)[1])
    assert shown["retired_at"] and shown["stale"] is False
    assert {c["status"] for c in shown["credentials"]} == {"revoked"}
    listed = tripkey("devices", "list", world=cl_world)[1]
    assert any(device_id in line and "RETIRED" in line for line in listed.splitlines())

    again = tripkey("devices", "retire", device_id, "--json", world=cl_world)
    assert again[0] == 0 and json.loads(again[1])["revoked"] == []
    assert tripkey("devices", "retire", "dev_nope", world=cl_world)[0] == 1


# ------------------------------------------------------------------------------------------ errors


def test_an_answer_that_is_not_the_issuers_api_is_exit_5_not_not_found(cl_server: ScriptedServer) -> None:
    """--issuer pointed at another web server: its HTML 404 is "not the documented JSON" (5), not
    "not found" (1), which would send the responder looking for a missing alert."""
    cl_server.rule = lambda req: Scripted(404, "<html><h1>Not Found</h1>nginx</html>")
    code, out, err = tripkey("alerts", "show", "alr_1", url=cl_server.url)
    assert code == 5 and out == ""
    assert "not the issuer's API" in err and "is the issuer URL right?" in err and "not found:" not in err
    cl_server.rule = lambda req: Scripted(401, "<html>Sign in to the corporate proxy</html>")
    code, _, err = tripkey("devices", "list", url=cl_server.url)
    assert code == 5 and "not the issuer's API" in err and "token" not in err
    # The issuer's own 404 keeps its meaning.
    cl_server.rule = lambda req: Scripted(
        404, {"error": {"code": "not_found", "message": "no alert 'alr_1'"}}
    )
    assert tripkey("alerts", "show", "alr_1", url=cl_server.url)[0] == 1


def test_tls_hints_only_when_tls_is_the_problem(
    cl_tls_server: tuple[ScriptedServer, Any], cl_server: ScriptedServer
) -> None:
    tls_server, _ca = cl_tls_server
    code, _, err = tripkey("devices", "list", url=tls_server.url)
    assert code == 4 and "--ca-bundle" in err  # untrusted certificate: the CA hint fits
    plain_as_https = cl_server.url.replace("http://", "https://")
    code, _, err = tripkey("devices", "list", url=plain_as_https)
    assert code == 4 and "--ca-bundle" not in err and "use http://" in err
    refused = cl_server.url.rsplit(":", 1)[0] + ":9"
    code, _, err = tripkey("--timeout", "2", "devices", "list", url=refused)
    assert code == 4 and "--ca-bundle" not in err and "https" not in err


def test_errors_with_json_are_a_json_object_on_stderr(cl_world: World, cl_server: ScriptedServer) -> None:
    code, out, err = tripkey("alerts", "show", "alr_nope", "--json", world=cl_world)
    assert code == 1
    error = json.loads(err)
    assert error["exit_code"] == 1 and "alr_nope" in error["error"]["message"]
    assert error["error"]["code"] == "not_found"  # the issuer's own code, passed through
    assert json.loads(out) == error
    cl_server.rule = lambda req: Scripted(500, {"error": {"code": "internal_error", "message": "boom"}})
    code, _, err = tripkey("devices", "list", "--json", url=cl_server.url)
    assert code == 5 and json.loads(err)["exit_code"] == 5 and "boom" in json.loads(err)["error"]["message"]
    assert json.loads(err)["error"]["code"] == "internal_error"
    code, _, err = tripkey("devices", "list", "--json")  # no --issuer: a usage error, still JSON
    assert code == 2 and "TRIPKEY_ISSUER_URL" in json.loads(err)["error"]["message"]
    assert json.loads(err)["error"]["code"] == "usage_error"
    code, out, err = tripkey("alerts", "list", "--status", "bogus", "--json", world=cl_world)
    assert (
        code == 2
        and "invalid choice: 'bogus'" in json.loads(err)["error"]["message"]
        and json.loads(out)["exit_code"] == 2
    )


def test_a_closed_pipe_is_quiet(cl_world: World) -> None:
    """`tripkey alerts show ID --json | head`: no BrokenPipeError traceback, exit 141."""
    alert_id = cl_world.alert()
    env = {"TRIPKEY_ISSUER_URL": cl_world.url, "TRIPKEY_TOKEN": cl_world.responder_token}
    code, err = run_into_closed_pipe("tripkey", "alerts", "show", alert_id, "--json", env=env)
    assert (code, err) == (141, "")
    code, err = run_into_closed_pipe("tripkey", "devices", "list", env=env)
    assert (code, err) == (141, "")
    fine = run_tool("tripkey", "alerts", "show", alert_id, "--json", env=env)
    assert fine.returncode == 0 and json.loads(fine.stdout)["alert_id"] == alert_id


def test_every_command_has_help_with_examples() -> None:
    commands = [c for c in every_leaf_command(build_parser()) if c != ("demo",)]
    assert ("credentials", "revoke") in commands and ("devices", "retire") in commands
    assert "examples:" in help_text("tripkey")  # the console script once; each command through main()
    for command in commands:
        code, text, _ = tripkey(*command, "--help")
        assert code == 0 and "examples:" in text, command
        assert f"tripkey {' '.join(command)}" in text.split("examples:")[1], command
