"""Client transport behaviour against a real scripted HTTP(S) server: retries, timeouts, errors, TLS."""

from __future__ import annotations

import logging
import socket

import pytest

from server_api_client import (
    AuthError,
    IssuerClient,
    IssuerResponseError,
    IssuerUnreachable,
    NotFound,
    ProtocolError,
    RejectedError,
    ServerError,
    TripkeyError,
)
from tests.support.client import Scripted, ScriptedServer

TOKEN = "tk_responder_SUPERSECRET_token_value"
CRED_BODY = {
    "credential_id": "cred_1",
    "access_key_id": "AKIAEXAMPLE000000001",
    "secret_access_key": "wJalrSECRETSECRETSECRET",
    "session_token": None,
    "expires_at": None,
    "backend": "iam-user",
    "account": "main",
    "principal_name": "svc-backup-8f3k2q",
    "placement_id": "plc_1",
    "retired": ["cred_0"],
}
HEALTH = {"ok": True, "version": "0.1.0"}


def error(status: int, code: str, message: str = "nope") -> Scripted:
    return Scripted(status, {"error": {"code": code, "message": message}})


class SleepLog:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_client(server: ScriptedServer, **kwargs: object) -> tuple[IssuerClient, SleepLog]:
    kwargs.setdefault("backoff", 0.5)
    client = IssuerClient(server.url, TOKEN, **kwargs)  # type: ignore[arg-type]
    sleeps = SleepLog()
    client.sleep = sleeps
    return client, sleeps


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket closes


# ------------------------------------------------------------------------------------------ retries


def test_idempotent_get_retries_503_with_growing_backoff(cl_server: ScriptedServer) -> None:
    cl_server.script(error(503, "unavailable"), error(503, "unavailable"), Scripted(200, {"devices": []}))
    client, sleeps = make_client(cl_server)
    assert client.list_devices() == []
    assert len(cl_server.received) == 3
    assert len(sleeps.delays) == 2
    # exponential with ±50 % jitter: attempt 0 in [0.25, 0.75], attempt 1 in [0.5, 1.5]
    assert 0.25 <= sleeps.delays[0] <= 0.75
    assert 0.5 <= sleeps.delays[1] <= 1.5


def test_retry_after_header_is_honoured(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(503, {"error": {"code": "busy", "message": "x"}}, {"Retry-After": "7"}))
    cl_server.script(Scripted(200, {"devices": []}))
    client, sleeps = make_client(cl_server, backoff=0.01)
    client.list_devices()
    assert sleeps.delays == [7.0]


def test_gives_up_after_retries_and_raises_server_error(cl_server: ScriptedServer) -> None:
    cl_server.script(*[error(503, "unavailable", "try later")] * 5)
    client, sleeps = make_client(cl_server, retries=3)
    with pytest.raises(ServerError) as info:
        client.list_alerts()
    assert len(cl_server.received) == 4  # 1 try + 3 retries
    assert len(sleeps.delays) == 3
    assert info.value.status_code == 503 and info.value.code == "unavailable"
    assert info.value.message == "try later"


@pytest.mark.parametrize("status", [502, 503, 504])
def test_event_upload_and_heartbeat_are_retried(cl_server: ScriptedServer, status: int) -> None:
    cl_server.script(error(status, "x"), Scripted(200, {"accepted": 1, "duplicates": 0}))
    cl_server.script(error(status, "x"), Scripted(200, {"ok": True, "server_time": "2026-11-22T10:00:00Z"}))
    client, _ = make_client(cl_server)
    assert client.upload_events("dev_1", [{"event_id": "e1"}]).accepted == 1
    assert client.heartbeat("dev_1", {"agent_version": "0.1.0"}).ok is True
    assert len(cl_server.received) == 4
    # the retried upload carried the same events (same event_id → idempotent on the issuer)
    assert cl_server.received[0].body == cl_server.received[1].body


def test_enroll_is_retried(cl_server: ScriptedServer) -> None:
    cl_server.script(error(502, "bad_gateway"))
    cl_server.script(Scripted(200, {"device_id": "dev_1", "device_token": "devtok", "created": True}))
    client, _ = make_client(cl_server)
    enrollment = client.enroll("k" * 40, "lap-17", "linux", users=["alice"])
    assert enrollment.device_id == "dev_1" and enrollment.created
    assert cl_server.received[1].json() == {
        "device_key": "k" * 40,
        "hostname": "lap-17",
        "os": "linux",
        "users": ["alice"],
    }


@pytest.mark.parametrize("status", [502, 503, 504])
def test_mint_and_rotate_are_never_retried_on_error_status(cl_server: ScriptedServer, status: int) -> None:
    cl_server.script(error(status, "aws_error"), error(status, "aws_error"), Scripted(201, CRED_BODY))
    client, sleeps = make_client(cl_server)
    with pytest.raises(ServerError):
        client.mint_credential("dev_1", "alice", "/home/alice/.aws/credentials", "prod-backup")
    with pytest.raises(ServerError):
        client.rotate_credential("dev_1", "cred_1")
    assert len(cl_server.received) == 2 and sleeps.delays == []


def test_mint_read_timeout_is_surfaced_not_retried(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(201, CRED_BODY, delay=1.5), Scripted(201, CRED_BODY))
    client, sleeps = make_client(cl_server, timeout=0.3)
    with pytest.raises(IssuerUnreachable) as info:
        client.mint_credential("dev_1", "alice", "/home/alice/.aws/credentials", "prod-backup")
    assert "read timed out" in str(info.value)
    assert cl_server.url in str(info.value)
    assert len(cl_server.received) == 1 and sleeps.delays == []


def test_get_read_timeout_is_retried(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(200, {"devices": []}, delay=1.5), Scripted(200, {"devices": []}))
    client, sleeps = make_client(cl_server, timeout=0.3)
    assert client.list_devices() == []
    assert len(cl_server.received) == 2 and len(sleeps.delays) == 1


def test_read_timeout_without_retries_raises_unreachable(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(200, HEALTH, delay=1.5))
    client, _ = make_client(cl_server, timeout=0.3, retries=0)
    with pytest.raises(IssuerUnreachable, match="timed out"):
        client.health()


def test_connection_refused_is_unreachable_and_names_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    client = IssuerClient(url, TOKEN, retries=2)
    sleeps = SleepLog()
    client.sleep = sleeps
    with pytest.raises(IssuerUnreachable) as info:
        client.list_devices()
    assert f"{url}/v1/devices" in str(info.value)
    assert info.value.url == f"{url}/v1/devices"
    assert len(sleeps.delays) == 2
    assert isinstance(info.value, TripkeyError)


def test_mint_is_retried_when_the_request_never_left(cl_server: ScriptedServer) -> None:
    # connection refused: the issuer cannot have minted anything, so a retry is safe
    client = IssuerClient(f"http://127.0.0.1:{closed_port()}", TOKEN, retries=2)
    sleeps = SleepLog()
    client.sleep = sleeps
    with pytest.raises(IssuerUnreachable):
        client.mint_credential("dev_1", "alice", "/p", "prof")
    assert len(sleeps.delays) == 2


def test_dns_failure_is_unreachable() -> None:
    client = IssuerClient("http://tripkey-issuer.invalid", TOKEN, retries=0, timeout=3)
    with pytest.raises(IssuerUnreachable, match=r"tripkey-issuer\.invalid"):
        client.health()


# ------------------------------------------------------------------------------------------ error mapping


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "unauthenticated", AuthError),
        (403, "forbidden", AuthError),
        (404, "not_found", NotFound),
        (409, "conflict", RejectedError),
        (413, "body_too_large", RejectedError),
        (422, "invalid_request", RejectedError),
        (400, "bad_request", RejectedError),
        (500, "internal", ServerError),
    ],
)
def test_error_status_maps_to_exception(cl_server: ScriptedServer, status: int, code: str, cls: type) -> None:
    cl_server.script(error(status, code, "the human sentence"))
    client, sleeps = make_client(cl_server)
    with pytest.raises(cls) as info:
        client.get_alert("al_1")
    exc = info.value
    assert isinstance(exc, IssuerResponseError)
    assert (exc.status_code, exc.code, exc.message) == (status, code, "the human sentence")
    assert "GET" in str(exc) and "/v1/alerts/al_1" in str(exc)
    assert sleeps.delays == []  # 4xx and 500 are never retried
    if status != 404:
        assert not isinstance(exc, NotFound)


def test_html_error_page_keeps_status(cl_server: ScriptedServer) -> None:
    cl_server.script(*[Scripted(502, "<html><body>Bad Gateway</body></html>")] * 4)
    client, _ = make_client(cl_server)
    with pytest.raises(ServerError) as info:
        client.health()
    assert info.value.code == "http_502"
    assert "Bad Gateway" in info.value.message


def test_non_json_success_is_protocol_error(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(200, "<html>hello</html>"))
    client, _ = make_client(cl_server)
    with pytest.raises(ProtocolError, match="not JSON"):
        client.list_devices()


@pytest.mark.parametrize(
    "body",
    [
        {"device": []},  # wrong envelope key
        {"devices": {"device_id": "x"}},  # not a list
        {"devices": [{"hostname": "lap-17"}]},  # device_id missing
        {"devices": [{"device_id": "d", "hostname": "h", "last_heartbeat_at": "yesterday"}]},
        {"devices": [{"device_id": 7, "hostname": "h"}]},
        ["not", "an", "object"],
    ],
)
def test_wrong_shape_is_protocol_error(cl_server: ScriptedServer, body: object) -> None:
    cl_server.script(Scripted(200, body))
    client, _ = make_client(cl_server)
    with pytest.raises(ProtocolError):
        client.list_devices()


def test_unknown_extra_keys_are_ignored(cl_server: ScriptedServer) -> None:
    device = {"device_id": "dev_1", "hostname": "lap-17", "os": "linux", "shiny_new_field": {"a": 1}}
    cl_server.script(Scripted(200, device))
    client, _ = make_client(cl_server)
    parsed = client.get_device("dev_1")
    assert parsed.hostname == "lap-17" and parsed.stale is False and parsed.raw["shiny_new_field"] == {"a": 1}


def test_redirect_is_not_followed(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(302, {}, {"Location": "http://example.invalid/steal"}))
    client, _ = make_client(cl_server)
    with pytest.raises(ProtocolError, match="redirect"):
        client.list_devices()
    assert len(cl_server.received) == 1


# ------------------------------------------------------------------------------------------ secrets


def test_token_sent_as_bearer_but_never_in_repr_errors_or_logs(
    cl_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    cl_server.script(error(503, "x"), error(401, "unauthenticated", "bad token"), Scripted(201, CRED_BODY))
    client, _ = make_client(cl_server)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthError) as info:
        client.list_devices()
    cred = client.mint_credential("dev_1", "alice", "/p", "prof")
    assert cl_server.received[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in repr(client)
    assert TOKEN not in str(info.value)
    assert caplog.records, "debug logging produced nothing to check"
    assert TOKEN not in caplog.text
    assert CRED_BODY["secret_access_key"] not in repr(cred)
    assert cred.secret_access_key == CRED_BODY["secret_access_key"]
    assert cred.retired == ("cred_0",)


def test_health_and_ingest_send_no_bearer_token(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(200, HEALTH), Scripted(202, {"accepted": 1, "skipped": 0}))
    client, _ = make_client(cl_server)
    assert client.health().version == "0.1.0"
    assert client.ingest_eventbridge("main", "ingest-secret", {"detail": {}}).accepted == 1
    assert "Authorization" not in cl_server.received[0].headers
    assert "Authorization" not in cl_server.received[1].headers
    assert cl_server.received[1].headers["X-Tripkey-Ingest-Key"] == "ingest-secret"


# ------------------------------------------------------------------------------------------ request shape


def test_ids_are_quoted_and_query_params_omit_none(cl_server: ScriptedServer) -> None:
    cl_server.script(Scripted(200, {"reads": []}), Scripted(200, {"reads": []}))
    client, _ = make_client(cl_server)
    client.device_reads("dev/../x", since="24h", limit=5)
    client.device_reads("dev_1")
    assert cl_server.received[0].path == "/v1/devices/dev%2F..%2Fx/reads?since=24h&limit=5"
    assert cl_server.received[1].path == "/v1/devices/dev_1/reads"
    with pytest.raises(ValueError):
        client.get_device("")


def test_upload_events_batches_by_1000(cl_server: ScriptedServer) -> None:
    cl_server.rule = lambda req: Scripted(200, {"accepted": len(req.json()["events"]), "duplicates": 0})
    client, _ = make_client(cl_server)
    events = [{"event_id": f"e{i}", "kind": "read"} for i in range(2500)]
    result = client.upload_events("dev_1", events)
    assert result.accepted == 2500
    assert [len(r.json()["events"]) for r in cl_server.received] == [1000, 1000, 500]
    assert client.upload_events("dev_1", []).accepted == 0
    assert len(cl_server.received) == 3  # an empty upload sends nothing


def test_upload_events_splits_on_413(cl_server: ScriptedServer) -> None:
    def rule(req):  # type: ignore[no-untyped-def]
        events = req.json()["events"]
        if len(events) > 2:
            return error(413, "body_too_large")
        return Scripted(200, {"accepted": len(events) - 1, "duplicates": 1})

    cl_server.rule = rule
    client, _ = make_client(cl_server)
    result = client.upload_events("dev_1", [{"event_id": f"e{i}"} for i in range(7)])
    sent = [
        e["event_id"] for r in cl_server.received if len(r.json()["events"]) <= 2 for e in r.json()["events"]
    ]
    assert sorted(sent) == sorted(f"e{i}" for i in range(7))  # every event exactly once
    assert result.accepted + result.duplicates == 7


def test_single_event_413_is_raised(cl_server: ScriptedServer) -> None:
    cl_server.script(error(413, "body_too_large"))
    client, _ = make_client(cl_server)
    with pytest.raises(RejectedError) as info:
        client.upload_events("dev_1", [{"event_id": "big"}])
    assert info.value.code == "body_too_large"


def test_ack_with_bare_answer_fetches_the_alert(cl_server: ScriptedServer) -> None:
    alert = {"alert_id": "al_1", "status": "acknowledged", "title": "t", "notes": [{"text": "mine"}]}
    cl_server.script(Scripted(200, {"ok": True}), Scripted(200, alert))
    client, _ = make_client(cl_server)
    result = client.ack_alert("al_1", note="mine")
    assert result.status == "acknowledged" and result.notes == ({"text": "mine"},)
    assert cl_server.received[0].json() == {"note": "mine"}
    assert cl_server.received[1].method == "GET"


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        IssuerClient("tripkey.example.com")
    with pytest.raises(ValueError):
        IssuerClient("https://x", timeout=0)
    with pytest.raises(ValueError):
        IssuerClient("https://x", retries=-1)


# ------------------------------------------------------------------------------------------ TLS


def test_tls_verification_uses_custom_ca_bundle(cl_tls_server: tuple[ScriptedServer, object]) -> None:
    server, ca_bundle = cl_tls_server
    server.rule = lambda req: Scripted(200, HEALTH)
    assert server.url.startswith("https://")
    # verification is on by default: the private CA is unknown to the system store
    default = IssuerClient(server.url, TOKEN, retries=2)
    sleeps = SleepLog()
    default.sleep = sleeps
    with pytest.raises(IssuerUnreachable, match="TLS failure"):
        default.health()
    assert sleeps.delays == []  # a certificate problem does not heal by retrying
    assert server.received == []  # no request (and no token) went over the unverified channel
    assert IssuerClient(server.url, TOKEN, ca_bundle=str(ca_bundle)).health().ok is True
    with pytest.warns(Warning, match="Unverified HTTPS"):
        assert IssuerClient(server.url, TOKEN, verify=False).health().ok is True


def test_tls_wrong_ca_bundle_fails(cl_tls_server: tuple[ScriptedServer, object], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.tls import make_test_tls

    server, _ = cl_tls_server
    server.rule = lambda req: Scripted(200, HEALTH)
    other = tmp_path / "other"
    other.mkdir()
    wrong = make_test_tls(other).ca_bundle
    with pytest.raises(IssuerUnreachable, match="TLS failure"):
        IssuerClient(server.url, TOKEN, ca_bundle=str(wrong), retries=0).health()


def test_missing_ca_bundle(cl_tls_server: tuple[ScriptedServer, object], tmp_path) -> None:  # type: ignore[no-untyped-def]
    server, ca_bundle = cl_tls_server
    server.rule = lambda req: Scripted(200, HEALTH)
    with pytest.raises(ValueError, match="does not exist"):
        IssuerClient(server.url, TOKEN, ca_bundle=str(tmp_path / "nope.pem"))
    moved = tmp_path / "moved.pem"
    moved.write_bytes(ca_bundle.read_bytes())
    client = IssuerClient(server.url, TOKEN, ca_bundle=str(moved), retries=0)
    assert client.health().ok
    moved.unlink()  # the bundle disappears while the agent runs: a clear error, not a bare OSError
    with pytest.raises(IssuerUnreachable, match="TLS setup failed"):
        client.health()
