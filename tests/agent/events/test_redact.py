"""Secrets on a reader's command line never reach a ReadEvent (so neither the read log nor an alert)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from agent.events.model import ProcessInfo, ReadEvent
from agent.events.readlog import ReadLog
from agent.events.redact import (
    _SENSITIVE,
    REDACTED,
    _may_hold_sensitive_word,
    is_sensitive_name,
    redact_argv,
    redact_text,
)

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example secret key
R = REDACTED


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["aws", "configure", "set", "aws_secret_access_key", "s3cr3t"],
         ["aws", "configure", "set", "aws_secret_access_key", R]),
        (["aws", "configure", "set", "aws_session_token", "FwoGZX"],
         ["aws", "configure", "set", "aws_session_token", R]),
        (["mysql", "--password", "hunter2", "-h", "db"], ["mysql", "--password", R, "-h", "db"]),
        (["tool", "--db-password=hunter2", "--api-key", "k1"],
         ["tool", "--db-password=" + R, "--api-key", R]),
        (["curl", "-u", "bob:pw", "https://a:b@h/x?token=abc&x=1"],
         ["curl", "-u", "bob:" + R, f"https://a:{R}@h/x?token={R}&x=1"]),
        (["sh", "-c", "echo aws_secret_access_key = abc >> f"],
         ["sh", "-c", f"echo aws_secret_access_key = {R} >> f"]),
        (["sh", "-c", "aws configure set aws_secret_access_key abc; ls"],
         ["sh", "-c", f"aws configure set aws_secret_access_key {R}; ls"]),
        (["python3", "-c", 'print({"token": "t1"})'], ["python3", "-c", f'print({{"token": {R}}})']),
        (["echo", "AKIAIOSFODNN7EXAMPLE", AWS_SECRET], ["echo", "AKIAIOSFODNN7EXAMPLE", R]),
        (["env", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "cmd"], ["env", f"AWS_SECRET_ACCESS_KEY={R}", "cmd"]),
    ],
)  # fmt: skip
def test_secret_values_are_redacted(argv: list[str], expected: list[str]) -> None:
    assert redact_argv(argv) == tuple(expected)


@pytest.mark.parametrize(
    "argv",
    [
        ["cat", "/home/alice/.aws/credentials"],
        ["grep", "aws_secret_access_key", "/home/alice/.aws/credentials"],  # a bare name keeps its file
        ["aws", "configure", "get", "aws_secret_access_key", "--profile", "prod"],
        ["aws", "secretsmanager", "get-secret-value", "--secret-id", "prod/db"],  # a name, not a value
        ["aws", "sts", "assume-role-with-web-identity", "--web-identity-token-file", "/tmp/t"],
        ["git", "checkout", "0123456789abcdef0123456789abcdef01234567"],  # a SHA is not a key
        ["gh", "auth", "login", "--with-token"],
        ["tool", "--token", "-v"],  # the next word is an option, not the value
        ["sudo", "-u", "alice", "cat", "/etc/hosts"],
        ["ls", "/home/alice/Abcdefghijklmnopqrstuvwxyz0123456789ABCD"],  # a path segment
        [],
    ],
)
def test_ordinary_command_lines_are_kept(argv: list[str]) -> None:
    assert redact_argv(argv) == tuple(argv)


def test_sensitive_names() -> None:
    assert all(map(is_sensitive_name, ["--password", "aws_secret_access_key", "API-KEY", "GITHUB_TOKEN"]))
    assert not any(map(is_sensitive_name, ["--secret-id", "token_file", "--profile", "-", ""]))


def _event(cmdline: tuple[str, ...], parent: tuple[str, ...]) -> ReadEvent:
    return ReadEvent(
        time=dt.datetime(2026, 11, 22, tzinfo=dt.UTC),
        path="/home/alice/.aws/credentials",
        pid=42,
        sensor="fanotify",
        cmdline=cmdline,
        ancestors=(ProcessInfo(pid=41, exe="/usr/bin/bash", cmdline=parent), ProcessInfo(pid=1)),
    )


def test_read_event_redacts_reader_and_ancestors_at_construction(tmp_path: Path) -> None:
    """Every consumer (read log, upload payload via to_dict, alert) sees only redacted argv."""
    event = _event(
        ("aws", "configure", "set", "aws_secret_access_key", "REALSECRET"),
        ("bash", "-c", f"aws configure set aws_secret_access_key REALSECRET; echo {AWS_SECRET}"),
    )
    assert event.cmdline == ("aws", "configure", "set", "aws_secret_access_key", R)
    assert "REALSECRET" not in json.dumps(event.to_dict()) and AWS_SECRET not in json.dumps(event.to_dict())
    assert event.ancestors[1] == ProcessInfo(pid=1)
    with ReadLog(tmp_path / "reads.db") as log:  # no secrets registered: the event itself is clean
        log.record(event, "aws_tool")
        (row,) = log.query()
    assert row["cmdline"][-1] == R and "REALSECRET" not in json.dumps(row)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("reads.db*"))
    assert b"REALSECRET" not in stored and AWS_SECRET.encode() not in stored


def test_clean_event_is_untouched() -> None:
    event = _event(("cat", "/home/alice/.aws/credentials"), ("bash",))
    assert event.cmdline == ("cat", "/home/alice/.aws/credentials")
    assert event.ancestors[0].cmdline == ("bash",)


@pytest.mark.parametrize(
    "arg",
    [
        "\u017fecret=hunter2",  # long s: IGNORECASE equates it with s
        "TO\u212aEN=hunter2",  # Kelvin sign: equated with k
        "pr\u0131vate_key=hunter2",  # dotless i: equated with i, but casefold() keeps it
        "PASSWORD=hunter2",
    ],
)
def test_the_fast_prefilter_never_skips_an_assignment_the_full_pattern_would_redact(arg: str) -> None:
    assert redact_text(arg).endswith("=" + REDACTED)


def test_the_prefilter_covers_every_character_ignorecase_equates_with_a_word_letter() -> None:
    """_may_hold_sensitive_word must hold wherever _SENSITIVE matches, over all of Unicode: each
    character re's IGNORECASE equates with a letter of a sensitive word, put into that word."""
    words = ("secret", "password", "passwd", "passphrase", "token", "api_key", "private-key")
    letters = "".join(sorted(set("".join(words))))
    any_letter = re.compile(f"[{re.escape(letters)}]", re.IGNORECASE)
    checked = 0
    for cp in range(0x110000):
        char = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or not any_letter.fullmatch(char):
            continue
        for letter in letters:
            if not re.fullmatch(re.escape(letter), char, re.IGNORECASE):
                continue
            word = next(w for w in words if letter in w)
            spelled = word.replace(letter, char, 1)
            assert _SENSITIVE.search(spelled), spelled
            assert _may_hold_sensitive_word(spelled), (hex(cp), word)
            checked += 1
    assert checked > len(letters)  # upper and lower case at least, plus the odd ones
