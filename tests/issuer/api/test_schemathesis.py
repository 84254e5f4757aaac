"""Property-based fuzzing of the whole API from its own /openapi.json (schemathesis CLI, real HTTP).

Bounded: 25 examples per operation, check `not_a_server_error` only: whatever the input, the
issuer answers 2xx/4xx, never 5xx. Three runs so that each route is fuzzed past its auth check:
device routes with that device's token (path ids pinned to real ones), enroll with an enroll
token, everything else with a responder token.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.support.paths import VENV_BIN

PLACEMENT = {"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"}


def _schemathesis(issuer: Any, tmp_path: Path, token: str, parameters: dict[str, str], *filters: str) -> None:
    config = tmp_path / f"schemathesis-{token[:4]}.toml"
    config.write_text("[parameters]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in parameters.items()))
    result = subprocess.run(
        [
            str(VENV_BIN / "schemathesis"),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{issuer.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--phases",
            "examples,fuzzing",
            "--workers",
            "2",
            "--generation-database",
            "none",
            "--seed",
            "20261122",
            "--request-timeout",
            "20",
            "--header",
            f"Authorization: Bearer {token}",
            *filters,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "Server error" not in result.stdout
    selected = re.search(r"Operations:\s+(\d+) selected", result.stdout)
    assert selected and int(selected.group(1)) > 0, result.stdout[-3000:]


def test_no_input_makes_the_issuer_fail(live_issuer: Any, tmp_path: Path) -> None:
    device_id, device_token = live_issuer.enroll()
    cred = live_issuer.request("POST", f"/v1/devices/{device_id}/credentials", device_token, json=PLACEMENT)
    ids = {"path.device_id": device_id, "path.credential_id": cred.json()["credential_id"]}
    _schemathesis(
        live_issuer,
        tmp_path,
        device_token,
        ids,
        "--include-path-regex",
        r"^/v1/devices/\{device_id\}/",
    )
    _schemathesis(
        live_issuer, tmp_path, live_issuer.create_token("enroll"), {}, "--include-path", "/v1/enroll"
    )
    _schemathesis(
        live_issuer,
        tmp_path,
        live_issuer.create_token("responder"),
        {"path.device_id": device_id},
        "--exclude-path",
        "/v1/enroll",
    )
