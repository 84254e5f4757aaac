"""`tripkey demo`: the whole flow on this machine, on loopback, with embedded defaults.

It starts an emulated AWS account (moto server) with a CloudTrail of its own (demo/cloudtrail.py: a
recorder in front of moto delivering each call through an EventBridge rule to an SQS queue), the
issuer (SQLite in a temporary directory, reading that queue) and an agent planting into a sandbox
credentials file, then plays a curious reader and an attacker, waits for the detection — through
the push path, as in a real account — and prints the alert as a responder reads it: the reader, the
attacker's user agent, calls and source address, and the verdict. Every part is a real process started
through the same commands an operator uses (`tripkey-issuer serve`, `tripkey-agent run`, `aws`), so
the demo exercises the product, not a shortcut. Everything stops at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from demo.cloudtrail import CloudTrailRecorder, setup_push_path
from demo.processes import (
    DemoError,
    DemoInterrupted,
    Processes,
    Steps,
    find_binary,
    free_port,
    raise_interrupted,
    signals_handled,
    wait_until,
    workdir,
)
from server_api_client.client import IssuerClient
from server_api_client.errors import TripkeyError
from server_api_client.formatting import format_alert

# The sandbox user's own profile: the demo shows it stays byte-identical. These are AWS's documented
# example values, not real credentials.
SANDBOX_CREDENTIALS = (
    "# my personal sandbox account\n"
    "[personal]\n"
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
)
DEMO_PROFILE = "prod-backup"
ISSUER_USER = "tripkey-issuer-demo"
ADMIN_POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
BOOTSTRAP_ACTIONS = (
    ["iam", "create-user", "--user-name", ISSUER_USER],
    [
        "iam",
        "put-user-policy",
        "--user-name",
        ISSUER_USER,
        "--policy-name",
        "issuer",
        "--policy-document",
        ADMIN_POLICY,
    ],
    ["iam", "create-access-key", "--user-name", ISSUER_USER],
)


def _aws_env(base: dict[str, str], credentials_file: Path | None) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials_file) if credentials_file else os.devnull
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def _sensor_for_this_run(steps: Steps) -> str:
    if os.geteuid() == 0:
        steps.detail("running as root: the real kernel sensor (fanotify) attributes every read")
        return "fanotify"
    steps.detail(
        "NOT root: process attribution needs root (fanotify needs CAP_SYS_ADMIN). The agent will say "
        "its sensor cannot start; planting, detection and alerting still run. Re-run `sudo make demo` "
        "to see which process read the file."
    )
    return "fanotify"


def run_demo(output_dir: Path, *, timeout: float, keep: bool, quiet: bool) -> dict[str, Any]:
    steps = Steps(quiet=quiet)
    base_env = dict(os.environ)
    with workdir(keep) as work:
        procs = Processes(work)
        recorders: list[CloudTrailRecorder] = []
        # Without this, SIGTERM or SIGHUP (a closed terminal) would end Python at once, skip the
        # `finally` below and leave every child running.
        with signals_handled(raise_interrupted):
            try:
                return _run(steps, procs, work, base_env, output_dir, timeout, recorders)
            finally:
                for recorder in recorders:
                    recorder.stop()
                procs.stop_all()
                if keep:
                    steps.say(f"kept the demo's files in {work}")


def _run(
    steps: Steps,
    procs: Processes,
    work: Path,
    base_env: dict[str, str],
    output_dir: Path,
    timeout: float,
    recorders: list[CloudTrailRecorder],
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    remaining = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731

    # 1. The emulated AWS account, with IAM authorization enforced so the canary's explicit deny
    #    really denies. moto serves a budget of unauthenticated actions first: three are enough to
    #    create the issuer's own IAM user with its keys; every request after that is authorized.
    steps.step("starting an emulated AWS account (moto server, IAM enforced) on loopback")
    moto_port = free_port()
    aws_url = f"http://127.0.0.1:{moto_port}"
    moto = procs.start(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
        {**_aws_env(base_env, None), "INITIAL_NO_AUTH_ACTION_COUNT": str(len(BOOTSTRAP_ACTIONS))},
    )
    wait_until(lambda: _http_ok(f"{aws_url}/moto-api/"), remaining(), "the emulated AWS account", [moto])
    admin_env = {**_aws_env(base_env, None), **_bootstrap_issuer_user(aws_url, base_env)}
    steps.detail(f"AWS endpoint {aws_url}; created the issuer's IAM user")
    # The account's CloudTrail: a recorder in front of moto; each call it sees reaches the issuer's
    # SQS queue through events:PutEvents and an EventBridge rule, the way AWS delivers it.
    operator = (admin_env["AWS_ACCESS_KEY_ID"], admin_env["AWS_SECRET_ACCESS_KEY"])
    queue_url = setup_push_path(aws_url, operator)
    recorder = CloudTrailRecorder(aws_url, operator).start()
    recorders.append(recorder)
    steps.detail(f"CloudTrail -> EventBridge rule -> SQS queue {queue_url.rsplit('/', 1)[-1]}")
    steps.detail(f"every other client reaches the account through its recorder at {recorder.url}")

    # 2. The issuer.
    steps.step("starting the Tripkey issuer (SQLite in a temporary directory)")
    issuer_port = free_port()
    issuer_url = f"http://127.0.0.1:{issuer_port}"
    data_dir = work / "issuer"
    data_dir.mkdir()
    issuer_env = {**admin_env, "TRIPKEY_DATA_DIR": str(data_dir)}
    db_url = f"sqlite:///{data_dir / 'issuer.db'}"
    output_dir.mkdir(parents=True, exist_ok=True)
    sink_file = (output_dir / "alerts.jsonl").resolve()
    issuer_config = work / "issuer.toml"
    # Alerts also go to a JSONL sink, the simplest of the delivery sinks.
    issuer_config.write_text(f'[[sinks]]\ntype = "jsonl"\nname = "demo-jsonl"\npath = "{sink_file}"\n')
    issuer = procs.start(
        "issuer",
        [
            find_binary("tripkey-issuer"),
            "serve",
            "--config",
            str(issuer_config),
            "--db",
            db_url,
            "--listen",
            f"127.0.0.1:{issuer_port}",
            "--aws-endpoint",
            aws_url,
            "--sqs-queue-url",
            queue_url,
            # GetAccessKeyLastUsed stays on as the safety net; the push path is faster.
            "--poll-interval",
            "30",
        ],
        issuer_env,
    )
    wait_until(lambda: _http_ok(f"{issuer_url}/healthz"), remaining(), "the issuer", [moto, issuer])
    steps.detail(f"issuer {issuer_url} (API docs at {issuer_url}/docs)")
    enroll_token = _create_token(db_url, "enroll", issuer_env)
    responder_token = _create_token(db_url, "responder", issuer_env)
    steps.detail("created an enrollment token (what MDM pushes) and a responder token")

    # 3. The agent, planting into a sandbox home.
    steps.step("starting the agent; it enrolls and plants a canary into a sandbox credentials file")
    owner = pwd.getpwuid(os.geteuid()).pw_name
    home = work / "home" / "demo-user"
    (home / ".aws").mkdir(parents=True, mode=0o700)
    credentials = home / ".aws" / "credentials"
    credentials.write_text(SANDBOX_CREDENTIALS)
    credentials.chmod(0o600)
    sensor = _sensor_for_this_run(steps)
    config = work / "agent.toml"
    config.write_text(
        "\n".join(
            [
                f'issuer_url = "{issuer_url}"',
                f'enroll_token = "{enroll_token}"',
                f'profile = "{DEMO_PROFILE}"',
                f'state_dir = "{work / "agent-state"}"',
                f'sensor = "{sensor}"',
                "all_users = false",
                "heartbeat_interval = 2",
                "upload_interval = 1",
                f'aws_endpoint_url = "{aws_url}"',
                f'selfreport_socket = "{work / "selfreport.sock"}"',
                "[[target]]",
                f'path = "{credentials}"',
                f'owner = "{owner}"',
                "",
            ]
        )
    )
    config.chmod(0o600)
    agent = procs.start("agent", [find_binary("tripkey-agent"), "run", "--config", str(config)], base_env)
    responder = IssuerClient(issuer_url, responder_token, timeout=5, retries=1)
    everyone = [moto, issuer, agent]
    device = wait_until(lambda: _planted_device(responder), remaining(), "the agent to plant", everyone)
    key_id = _planted_key_id(responder, device.device_id)
    steps.detail(f"device {device.device_id} ({device.hostname}) enrolled")
    steps.detail(f"planted profile [{DEMO_PROFILE}] in {credentials} with key {key_id} (secret not shown)")
    if sensor:
        time.sleep(1.0)  # let the sensor mark the directory before the reads below

    # 4. A curious reader, then an attacker.
    # The sandbox file, never the real ~/.aws/credentials of whoever runs the demo: say so.
    steps.step(f"a curious reader opens the sandbox file: `grep -A2 {DEMO_PROFILE} {credentials}`")
    subprocess.run(["grep", "-A2", DEMO_PROFILE, str(credentials)], stdout=subprocess.DEVNULL, check=False)
    steps.step("an attacker uses the key with the real AWS CLI against the emulated account")
    aws_cli = find_binary("aws")
    attacker_env = _aws_env(base_env, credentials)
    for argv in (["sts", "get-caller-identity"], ["s3", "ls"]):
        done = subprocess.run(
            [aws_cli, "--endpoint-url", recorder.url, "--profile", DEMO_PROFILE, *argv],
            env=attacker_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and argv[0] == "sts":
            outcome = "allowed (no policy can deny GetCallerIdentity; the use is detected all the same)"
        elif done.returncode == 0:
            outcome = "allowed (unexpected: the canary should deny this)"
        else:
            outcome = "denied (the canary's explicit deny)"
        steps.detail(f"aws {' '.join(argv)} -> {outcome}")

    # 5. Detection.
    steps.step("waiting for the issuer to detect the key's use (CloudTrail -> EventBridge -> SQS) and alert")
    raised: list[dict[str, Any]] = []  # an alert seen before its reads arrived, for the error
    try:
        alert = wait_until(
            lambda: _alert_with_reads(responder, key_id, raised), remaining(), "the alert", everyone
        )
    except DemoError as exc:
        if not raised:
            raise
        raise DemoError(
            f"{exc}: alert {raised[-1]['alert_id']} was raised but names no reader; the agent's record of "
            "the read never reached the issuer (its reasons are in agent.log)"
        ) from None
    alert_path = output_dir / "alert.json"
    alert_path.write_text(json.dumps(alert, indent=2, sort_keys=True) + "\n")
    steps.detail(f"alert {alert['alert_id']} raised; JSON written to {alert_path}")
    steps.detail(f"delivered to the JSONL sink {sink_file}")
    if not steps.quiet:
        print()
        print(format_alert(alert))
        print()
    # Checked only now: the demo's own read of the file would otherwise be one of the readers.
    steps.detail("the user's own [personal] profile is byte-identical: " + _personal_intact(credentials))
    steps.step("stopping everything")
    return alert


def _http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def _create_token(db_url: str, role: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [find_binary("tripkey-issuer"), "token", "create", "--role", role, "--db", db_url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DemoError(f"could not create a {role} token: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["token"])


def _planted_device(client: IssuerClient) -> Any:
    try:
        devices = client.list_devices()
    except TripkeyError:
        return None
    for device in devices:
        targets = (device.health or {}).get("targets") or []
        if any(t.get("planted") for t in targets):
            return device
    return None


def _planted_key_id(client: IssuerClient, device_id: str) -> str:
    active = [c for c in client.list_credentials(device_id) if c.status == "active"]
    if len(active) != 1:
        raise DemoError(f"expected one active credential on the demo device, found {len(active)}")
    return active[0].access_key_id


def _bootstrap_issuer_user(aws_url: str, base_env: dict[str, str]) -> dict[str, str]:
    """Create the issuer's IAM user with the AWS CLI; return its keys as environment variables."""
    env = {**_aws_env(base_env, None), "AWS_ACCESS_KEY_ID": "bootstrap", "AWS_SECRET_ACCESS_KEY": "bootstrap"}
    output = ""
    for argv in BOOTSTRAP_ACTIONS:
        done = subprocess.run(
            [find_binary("aws"), "--endpoint-url", aws_url, *argv, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise DemoError(f"could not set up the emulated account ({argv[1]}): {done.stderr.strip()}")
        output = done.stdout
    key = json.loads(output)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def _personal_intact(path: Path) -> str:
    return "yes" if SANDBOX_CREDENTIALS in path.read_text() else "NO (this is a bug)"


def _alert_with_reads(
    client: IssuerClient, key_id: str, raised: list[dict[str, Any]]
) -> dict[str, Any] | None:
    try:
        for summary in client.list_alerts():
            alert = client.get_alert(summary.alert_id).raw
            credential = (alert.get("enrichment") or {}).get("credential") or {}
            if credential.get("access_key_id") != key_id:
                continue
            # Wait until the agent's reads have reached the issuer (unless attribution is off) and
            # both attacker calls came through the push path with their user agent and address.
            reads = (alert.get("enrichment") or {}).get("reads") or []
            delivered = all(d.get("status") != "pending" for d in alert.get("deliveries") or [])
            activity = alert.get("summary") or {}
            pushed = (
                "sqs" in (activity.get("detection_sources") or [])
                and len(activity.get("event_names") or []) >= 2
            )
            if (reads or os.geteuid() != 0) and pushed and alert.get("deliveries") and delivered:
                return alert
            raised[:] = [alert]
            # The alert is re-enriched as reads arrive; poll again.
    except TripkeyError:
        return None
    return None


#: What the demo runs besides the client: the issuer's stack, the emulated AWS account, the AWS CLI.
NEEDED_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "boto3", "moto", "awscli")


def require_modules() -> None:
    """ModuleNotFoundError naming the first module the demo needs that is not installed."""
    for name in NEEDED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # sys.modules[name] is None: known to be unimportable
            found = False
        if not found:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def main(argv: list[str] | None = None) -> int:
    require_modules()
    parser = argparse.ArgumentParser(
        prog="tripkey demo",
        description=(
            "Run the whole Tripkey flow on this machine: an emulated AWS account (moto), the issuer "
            "(SQLite), an agent planting a canary in a sandbox file, a curious reader, an attacker "
            "using the key with the AWS CLI, and the resulting alert. Run as root to see kernel-level "
            "attribution of the reader. Nothing outside a temporary directory is touched."
        ),
    )
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="where alert.json goes")
    parser.add_argument("--timeout", type=float, default=55.0, help="give up after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and logs")
    parser.add_argument("--json", action="store_true", help="print only the alert JSON")
    args = parser.parse_args(argv)
    try:
        alert = run_demo(args.output, timeout=args.timeout, keep=args.keep, quiet=args.json)
    except DemoError as exc:
        print(f"tripkey demo: {exc}", file=sys.stderr)
        print("re-run with --keep to look at the logs of each process", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, DemoInterrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        print(f"tripkey demo: interrupted ({name}); every process it started was stopped", file=sys.stderr)
        return 128 + signum
    if args.json:
        print(json.dumps(alert, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
