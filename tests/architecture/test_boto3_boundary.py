"""boto3 is imported by issuer/aws/gateway.py and no other module (issuer, agent, client, demo)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO_ROOT

ALLOWED = REPO_ROOT / "issuer" / "aws" / "gateway.py"
SCANNED_PACKAGES = ("issuer", "agent", "server_api_client", "demo")


def _boto3_imports(path: Path) -> list[int]:
    """Line numbers that import boto3: import statements, importlib.import_module / __import__ calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "boto3" for alias in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] == "boto3":
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                called = ast.unparse(node.func)
                if (
                    called in {"importlib.import_module", "import_module", "__import__"}
                    and first.value.split(".")[0] == "boto3"
                ):
                    lines.append(node.lineno)
    return lines


def test_only_issuer_aws_imports_boto3() -> None:
    offenders = []
    scanned = 0
    for package in SCANNED_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            scanned += 1
            if path != ALLOWED and (lines := _boto3_imports(path)):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{','.join(map(str, lines))}")
    assert scanned > 3
    assert offenders == [], f"boto3 imported outside issuer/aws/gateway.py: {offenders}"


def test_the_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    # The guard above would pass vacuously if the scanner were blind; prove it sees each form.
    assert _boto3_imports(ALLOWED), "issuer/aws/gateway.py must import boto3 itself"
    samples = {
        "import boto3\n": [1],
        "import os, boto3.session\n": [1],
        "from boto3 import client\n": [1],
        "from boto3.dynamodb.conditions import Key\n": [1],
        "def f():\n    import boto3 as b\n": [2],
        "import importlib\nimportlib.import_module('boto3')\n": [2],
        "__import__('boto3.session')\n": [1],
        "import botocore\nfrom .boto3 import x\nboto3 = 1\n": [],
    }
    for source, expected in samples.items():
        path = tmp_path / "sample.py"
        path.write_text(source)
        assert _boto3_imports(path) == expected, source


def test_config_module_loads_without_boto3() -> None:
    """issuer.aws.config is plain data: settings code can import it where boto3 is absent."""
    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "import issuer.aws.config as c\n"
        "print(c.MintingConfig().backend)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "iam-user"
