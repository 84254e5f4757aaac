"""Nothing under packaging/ may carry a real secret: only placeholders."""

from __future__ import annotations

import re

import pytest

from tests.support.packaging import PACKAGING

PLACEHOLDER = "REPLACE-WITH-ENROLLMENT-TOKEN"
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    "Tripkey API token": re.compile(r"\btk[edr]_[A-Za-z0-9_-]{20,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}
FILES = sorted(p for p in PACKAGING.rglob("*") if p.is_file())


def test_there_are_packaging_files() -> None:
    assert len(FILES) >= 15


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGING)))
def test_no_secret_in(path) -> None:  # type: ignore[no-untyped-def]
    text = path.read_text(errors="replace")
    for what, pattern in SECRET_PATTERNS.items():
        match = pattern.search(text)
        assert match is None, f"{what} in {path.name}: {match.group(0) if match else ''}"
    for value in re.findall(r'enroll_token\W{1,40}?"([^"\[\]]+)"', text):
        assert value == PLACEHOLDER, f"{path.name}: enroll_token must be the placeholder, not {value!r}"
    for value in re.findall(r"<key>enroll_token</key>\s*<string>([^<]*)</string>", text):
        assert value == PLACEHOLDER, path.name


def test_the_secret_checks_would_catch_one() -> None:
    leaked = 'enroll_token = "tke_6mZ1c0lZrj9Vw4Jx2eKkzT0c2Bq5yP8sNnQ7d3HhLgA"\nAKIAIOSFODNN7EXAMPLE\n'
    assert SECRET_PATTERNS["Tripkey API token"].search(leaked)
    assert SECRET_PATTERNS["AWS access key id"].search(leaked)
    assert SECRET_PATTERNS["AWS secret access key"].search("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
