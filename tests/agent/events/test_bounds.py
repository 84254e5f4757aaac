"""Every read event fits every place it goes: printable text and strings within budget.

Regression: in CI the test runner's own ancestor (`sh -c <a script of more than 8,192
characters>`) made the issuer refuse the whole read event with 422, and the agent discarded it.
The limits checked here are the issuer's real ones: its pydantic schema and its default body size.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.events.bounds import (
    ANCESTOR_ARGV_BUDGET,
    ARG_BUDGET,
    MAX_ANCESTORS,
    MAX_ARGS,
    READER_ARGV_BUDGET,
    bound_argv,
    bound_event,
    bound_text,
    printable,
    wire_cost,
)
from agent.events.model import ProcessInfo, ReadEvent
from agent.events.readlog import ReadLog
from agent.events.redact import REDACTED
from agent.reporting.payloads import heartbeat_payload, read_event_payload
from agent.selfreport.server import parse_request
from issuer.api.schemas import EventBatch, Heartbeat
from issuer.settings import Settings

NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
# The costliest characters on the wire: an astral emoji (a 12-byte surrogate-pair escape), a
# control character (6 bytes) and an undecodable byte (printed as 4 characters).
HOSTILE = "\U0001f600\x01\udcff"


def event(**fields: Any) -> ReadEvent:
    base: dict[str, Any] = {
        "time": NOW,
        "path": "/home/alice/.aws/credentials",
        "pid": 4242,
        "sensor": "fanotify",
    }
    return ReadEvent(**{**base, **fields})


def no_surrogates_or_nul(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# ----- printable -----------------------------------------------------------------------------------


def test_undecodable_bytes_and_nul_are_spelled_out() -> None:
    assert printable(os.fsdecode(b"/tmp/ev\xffil")) == "/tmp/ev\\xffil"
    assert printable("a\x00b") == "a\\x00b"
    assert printable("lone \ud800 surrogate") == "lone \\ud800 surrogate"
    assert printable("grüße ✓ \U0001f600") == "grüße ✓ \U0001f600"  # valid Unicode is kept as is


def test_a_read_event_is_printable_from_birth() -> None:
    read = event(
        exe=os.fsdecode(b"/tmp/\xfe\xffstealer"),
        cmdline=(os.fsdecode(b"\xff"), "ok"),
        cwd=os.fsdecode(b"/tmp/\x80"),
        ancestors=(ProcessInfo(pid=1, exe="/sbin/init", cmdline=("a\x00b",)),),
    )
    assert read.exe == "/tmp/\\xfe\\xffstealer"
    assert read.cmdline == ("\\xff", "ok") and read.cwd == "/tmp/\\x80"
    assert read.ancestors[0].cmdline == ("a\\x00b",)


def test_a_reader_with_an_undecodable_name_is_stored_in_the_read_log(tmp_path: Path) -> None:
    log = ReadLog(tmp_path / "reads.db")
    log.record(event(exe=os.fsdecode(b"/tmp/\xffx"), cmdline=(os.fsdecode(b"\xff"),)), "unknown")
    [row] = log.query()
    assert row["exe"] == "/tmp/\\xffx" and row["cmdline"] == ["\\xff"]


# ----- bounding --------------------------------------------------------------------------------------


def test_short_text_is_untouched_and_long_text_says_what_was_cut() -> None:
    assert bound_text("cat", 4096) == "cat"
    cut = bound_text("x" * 10_000, 4096)
    assert cut.startswith("x" * 4000) and cut.endswith(f"...[+{10_000 - cut.index('.')} chars]")
    assert wire_cost(cut) <= 4096


@given(text=st.text(alphabet=st.characters(codec=None)), budget=st.integers(min_value=64, max_value=9000))
def test_bounded_text_is_printable_within_budget_and_a_prefix(text: str, budget: int) -> None:
    cut = bound_text(text, budget)
    assert wire_cost(cut) <= budget and no_surrogates_or_nul(cut)
    full = printable(text)
    assert cut == full or (cut.endswith(" chars]") and full.startswith(cut[: cut.rindex("...[+")]))


def test_argv_keeps_at_most_max_args_and_counts_the_rest() -> None:
    argv = [f"arg{i}" for i in range(1000)]
    kept = bound_argv(argv, READER_ARGV_BUDGET)
    assert kept[:MAX_ARGS] == tuple(argv[:MAX_ARGS]) and kept[-1] == f"...[+{1000 - MAX_ARGS} more arguments]"


def test_argv_of_huge_arguments_stays_within_its_budget() -> None:
    kept = bound_argv(["bash", "-c", "x" * 100_000, "y" * 100_000, "z"], ANCESTOR_ARGV_BUDGET)
    assert kept[:2] == ("bash", "-c") and kept[2].startswith("x" * 1000)
    assert sum(wire_cost(a) + 4 for a in kept) <= ANCESTOR_ARGV_BUDGET + 64
    assert kept[-1].endswith("more arguments]")
    assert all(wire_cost(a) <= ARG_BUDGET for a in kept)


def test_counts_stay_exact_through_both_cuts_and_bounding_twice_changes_nothing() -> None:
    argv = ["tool", "y" * 100_000, *(f"a{i}" for i in range(500))]
    born = event(cmdline=argv)  # the coarse cut at birth
    assert len(born.cmdline) == MAX_ARGS + 1 and born.cmdline[1].endswith(" chars]")
    bounded = bound_event(born)
    kept = bounded.cmdline[1][: bounded.cmdline[1].index("...[+")]
    assert bounded.cmdline[1] == f"{kept}...[+{100_000 - len(kept)} chars]"
    shown = [a for a in bounded.cmdline if not a.startswith("...[+")]
    assert bounded.cmdline[-1] == f"...[+{len(argv) - len(shown)} more arguments]"
    assert bound_event(bounded) == bounded


def hostile_event() -> ReadEvent:
    """Past every limit: more arguments than MAX_ARGS, one longer than ARG_BUDGET, more ancestors than
    MAX_ANCESTORS, all of the costliest characters (procinfo reads at most 64 KiB of a cmdline)."""
    huge_argv = (HOSTILE * 7_000, *(HOSTILE * 40 for _ in range(300)))
    ancestor = ProcessInfo(pid=7, exe="/" + HOSTILE * 5_000, cmdline=huge_argv, uid=0)
    return event(
        path="/home/alice/.aws/credentials",
        exe="/" + HOSTILE * 5_000,
        cmdline=huge_argv,
        user=HOSTILE * 500,
        cwd="/" + HOSTILE * 5_000,
        ancestors=tuple(ancestor for _ in range(200)),
    )


def test_the_largest_possible_event_fits_the_issuers_schema_and_body_limit() -> None:
    bounded = bound_event(hostile_event())
    assert len(bounded.ancestors) == MAX_ANCESTORS
    payload = read_event_payload(bounded, str(uuid.uuid4()), "unknown")
    body = json.dumps({"events": [payload]})  # ASCII escapes, as requests sends it
    assert len(body.encode()) <= Settings().max_body_bytes
    EventBatch.model_validate_json(body)  # raises on any field over the issuer's limits


def test_the_largest_event_with_the_largest_provenance_still_fits() -> None:
    """A reader's provenance is built from hostile names too (its path, the directory that makes it
    writable, its script): each string is cut by the probe, so the worst event still fits."""
    from agent.events.bounds import NAME_BUDGET, PATH_BUDGET, TEXT_BUDGET
    from agent.events.probe import with_provenance
    from agent.events.provenance import CodeSigning, FileProvenance, ReaderProvenance, signing_from_flags
    from agent.events.trust import Classification

    def worst_file() -> FileProvenance:
        return FileProvenance(
            path=bound_text("/" + HOSTILE * 5_000, PATH_BUDGET),
            owner=bound_text(HOSTILE * 500, NAME_BUDGET),
            writable_via=bound_text(HOSTILE * 5_000, TEXT_BUDGET),
            user_writable=True,
            user_place="home",
            package=bound_text(HOSTILE * 500, NAME_BUDGET),
            package_db="dpkg",
            hash_error=bound_text(HOSTILE * 5_000, TEXT_BUDGET),
            error=bound_text(HOSTILE * 5_000, TEXT_BUDGET),
        )

    signing = signing_from_flags(HOSTILE * 500, HOSTILE * 500, False, 3)
    assert isinstance(signing, CodeSigning)
    provenance = ReaderProvenance(
        exe=worst_file(),
        script=worst_file(),
        script_kind="file",
        script_name=bound_text(HOSTILE * 5_000, PATH_BUDGET),
        signing=signing,
        error=bound_text(HOSTILE * 5_000, TEXT_BUDGET),
    )
    bounded = with_provenance(bound_event(hostile_event()), provenance)
    claim = Classification("masquerading", "secret scanners", "secret_scanner", HOSTILE * 50_000)
    payload = read_event_payload(bounded, str(uuid.uuid4()), claim)
    body = json.dumps({"events": [payload]})
    assert len(body.encode()) <= Settings().max_body_bytes
    EventBatch.model_validate_json(body)


def test_the_ci_runner_shape_is_accepted() -> None:
    """The regression itself: a parent `sh -c` with a 10 kB script."""
    parent = ProcessInfo(pid=99, exe="/usr/bin/dash", cmdline=("sh", "-c", ": " * 5_000 + "; make test"))
    bounded = bound_event(event(exe="/usr/bin/cat", cmdline=("cat", "credentials"), ancestors=(parent,)))
    payload = read_event_payload(bounded, str(uuid.uuid4()), "shell_utility")
    EventBatch.model_validate({"events": [payload]})
    script = bounded.ancestors[0].cmdline[2]
    assert script.startswith(": : : ") and script.endswith(" chars]")


def test_a_known_secret_is_scrubbed_before_any_cut_so_no_prefix_survives() -> None:
    secret = "IQoJb3JpZ2luX2VjE" + "Ab1" * 200  # a long session-token-like value
    arg = "x" * (ARG_BUDGET - 100) + secret  # a cut would fall inside the secret
    bounded = bound_event(event(cmdline=("tool", arg)), secrets=[secret])
    assert secret[:16] not in json.dumps(bounded.cmdline)
    assert bounded.cmdline[1].startswith("x" * 100)


def test_a_bounded_event_reaches_the_live_issuer(live_issuer: Any) -> None:
    device_id, token = live_issuer.enroll(hostname="bounds-test")
    payload = read_event_payload(bound_event(hostile_event()), str(uuid.uuid4()), "unknown")
    response = live_issuer.request(
        "POST", f"/v1/devices/{device_id}/events", token, json={"events": [payload]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


# ----- other free text the agent sends ---------------------------------------------------------------


def test_heartbeat_errors_are_bounded_to_the_schema() -> None:
    payload = heartbeat_payload(
        sensor_health={"name": "fanotify", "mode": "permission", "healthy": False, "error": "e" * 50_000},
        targets=[
            {"path": "/p", "local_user": "a", "profile": "p", "planted": False, "error": HOSTILE * 9_000}
        ],
        last_event_at=None,
        spool=None,
    )
    Heartbeat.model_validate(payload)
    assert payload["sensor"]["error"].endswith(" chars]")


@pytest.mark.parametrize("note", ["oops\x00", "oops \udcff"])
def test_a_self_report_note_is_made_printable(note: str) -> None:
    parsed, _ = parse_request(json.dumps({"note": note}).encode())
    assert no_surrogates_or_nul(parsed) and parsed.startswith("oops")


def test_redaction_still_applies_to_printable_arguments() -> None:
    read = event(cmdline=("aws", "configure", "set", "aws_secret_access_key", os.fsdecode(b"s3cr\xffet")))
    assert read.cmdline[-1] == REDACTED
