"""Where things are, and who we are: the repository root, the venv's bin, root or not."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Never let a developer's real AWS configuration leak into a test.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/tripkey-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/tripkey-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


requires_root = pytest.mark.skipif(not is_root(), reason="needs root (real kernel sensor)")
