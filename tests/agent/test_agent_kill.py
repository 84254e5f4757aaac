"""kill -9 of the REAL `tripkey-agent run` while it re-plants in a loop: files are always whole.

The child process is the real agent (`agent.cli.main(["run", "--config", ...])`: service,
planter, uploader, sensor, repair watcher) with ONE seam: its renewal schedule says "due" on every
check (`agent.planting.planter.refresh_due`), and it checks every 0.1 s — so every pass rotates the key on
the live issuer and re-plants both targets, as a 90-day rotation would, hundreds of times faster.
(Short-term credentials cannot stand in: moto's GetFederationToken returns one fixed key id.)
The agent process is SIGKILLed at random moments, over and over. After each kill, each credentials
file must be a complete file the agent could have written: botocore parses it, our profile holds a
key the agent had recorded as its own (recorded BEFORE the write), the user's own bytes are intact,
owner/mode are right, and no temp file is left behind once the agent runs again. At the end
`tripkey-agent unplant` restores both files byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.credfile.edit import unplant_bytes
from agent.credfile.safefs import temp_name_pattern
from tests.support.agent import SEED, make_users, parse_credentials
from tests.support.paths import REPO_ROOT, VENV_BIN, requires_root

pytestmark = requires_root

KILLS = 8
PROFILE = "prod-backup"
SEEDS = {
    "alice": SEED,
    "bob": b"[ops]\naws_access_key_id=AKIAUSERBOPS00000001\naws_secret_access_key=x\n\n; end\n",
}


def _state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# The real `tripkey-agent run`, renewing on every pass (see the module docstring).
LOOPING_AGENT = """
import sys
import agent.planting.planter
from agent.cli import main
agent.planting.planter.refresh_due = lambda ts, config, now: "rotation"
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def _agent(config: Path, *args: str) -> list[str]:
    return [str(VENV_BIN / "tripkey-agent"), *args, "--config", str(config)]


def test_sigkill_of_the_running_agent_never_leaves_a_partial_file(
    tmp_path: Path, issuer_factory: Any
) -> None:
    # Every pass rotates both keys, far past a real device's minting budget (issuer.minting).
    issuer = issuer_factory(device_mint_burst=100_000)
    passwd, users = make_users(tmp_path)
    for user in users:
        user.credentials.parent.mkdir()
        os.chown(user.credentials.parent, user.uid, user.gid)
        user.credentials.write_bytes(SEEDS[user.name])
        os.chown(user.credentials, user.uid, user.gid)
        os.chmod(user.credentials, 0o600)
    state_dir = tmp_path / "state"
    config = tmp_path / "agent.toml"
    targets = "".join(f'[[target]]\npath = "{u.credentials}"\nowner = "{u.name}"\n' for u in users)
    config.write_text(
        f'issuer_url = "{issuer.url}"\nenroll_token = "{issuer.create_token("enroll")}"\n'
        f'state_dir = "{state_dir}"\nall_users = false\npasswd_file = "{passwd}"\n'
        'sensor = "fanotify-notify"\nselfreport = false\n'
        "check_interval = 0.1\n"
        "upload_interval = 0.5\nheartbeat_interval = 1.0\n" + targets
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    rng = random.Random(20261122)
    pattern = temp_name_pattern("credentials")
    keys_seen: set[str] = set()
    leftovers = 0
    for kill in range(KILLS):
        log_path = tmp_path / f"agent-{kill}.log"  # a file: a full pipe would stall the agent
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", LOOPING_AGENT, str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=REPO_ROOT,
            )
            try:
                # Wait until both targets are planted and this run has renewed a key (it loops).
                before = set(_state(state_dir / "state.json").get("owned_key_ids", []))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and proc.poll() is None:
                    state = _state(state_dir / "state.json")
                    statuses = [t.get("status") for t in state.get("targets", {}).values()]
                    if statuses == ["planted"] * len(users) and set(state["owned_key_ids"]) - before:
                        break
                    time.sleep(0.05)
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"run {kill} never looped: {state}"
                time.sleep(rng.uniform(0.0, 1.5))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
        # state.json is written atomically too: it parses after every kill.
        owned = set(_state(state_dir / "state.json")["owned_key_ids"])
        for user in users:
            data = user.credentials.read_bytes()
            key = parse_credentials(user.credentials)[PROFILE]["aws_access_key_id"]
            assert key in owned, f"kill {kill}: {user.name}'s file holds a key the agent never recorded"
            keys_seen.add(key)
            leftovers += sum(1 for p in user.credentials.parent.iterdir() if pattern.fullmatch(p.name))
            assert unplant_bytes(data, PROFILE, owned) == SEEDS[user.name], f"kill {kill}: user bytes changed"
            st = os.lstat(user.credentials)
            assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (user.uid, 0o600, 1)
    # The loop really re-planted: far more keys than kills went through the files.
    assert len(keys_seen) >= KILLS
    # Temp files a killed writer may have left are cleaned by the next write; unplant is byte-exact.
    done = subprocess.run(_agent(config, "unplant", "--json"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for user in users:
        assert user.credentials.read_bytes() == SEEDS[user.name]
        assert [p.name for p in user.credentials.parent.iterdir() if pattern.fullmatch(p.name)] == []
    print(f"kills={KILLS} keys planted={len(keys_seen)} killed mid-write (temp left)={leftovers}")
