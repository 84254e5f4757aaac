r"""The eslogger parser and its byte-level filter on recorded eslogger output.

Source of the recorded lines (tests/data/eslogger/): mullvad/mullvadvpn-app,
talpid-core/src/split_tunnel/macos/process.rs (test_deserialize_esmessage) at commit
9380a8076bc0511937477989a80ebca89cb334d9 — an exit and an exec recorded on macOS 15 (schema 9),
a fork on macOS 26 (schema 10) and an exec on macOS 27 beta (schema 11). What they show that a
documentation-derived fixture did not: keys in no fixed order, every `/` written `\/`, and in
schema 10 audit tokens as a list of eight words. No recorded open event is public: the opens here
wrap recorded process objects in the recorded envelope (tests.support.eslogger.recorded_open).
"""

from __future__ import annotations

import json

import pytest

from agent.sensors import _eslogger_parse
from agent.sensors._eslogger_filter import OpenFilter, needles_for, peek_int
from agent.sensors._eslogger_parse import EsloggerParser, process_record
from tests.support.eslogger import (
    RECORDED,
    as_eslogger_writes,
    recorded,
    recorded_message,
    recorded_open,
)

CRED = "/Users/alice/.aws/credentials"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_every_recorded_line_is_compact_json_with_escaped_slashes(name: str) -> None:
    raw = recorded(name)
    assert b"\\/" in raw and b'":/' not in raw  # the escaping the filter must see through
    assert peek_int(raw, b'"event_type":') == json.loads(raw)["event_type"]
    assert peek_int(raw, b'"global_seq_num":') == json.loads(raw)["global_seq_num"]


def test_process_identity_in_each_schema_version() -> None:
    exit_v9 = process_record(recorded_message("exit-v9")["process"])
    assert (exit_v9.pid, exit_v9.uid, exit_v9.pidversion, exit_v9.ppid) == (11221, 0, 170692, 532)
    assert exit_v9.exe == "/usr/sbin/ipconfig"
    assert (exit_v9.signing.signing_id, exit_v9.signing.team_id) == ("com.apple.ipconfig", None)

    fork_v10 = recorded_message("fork-v10")
    # audit_token: [auid, euid, egid, ruid, rgid, pid, asid, pidversion]
    parent = process_record(fork_v10["process"])
    child = process_record(fork_v10["event"]["fork"]["child"])
    assert (parent.pid, parent.uid, parent.pidversion) == (19745, 501, 35165)
    assert (child.pid, child.ppid, child.pidversion) == (21497, 19745, 38282)
    assert (child.signing.signing_id, child.signing.team_id) == ("net.mullvad.vpn", "CKG9MXH72F")

    exec_v11 = process_record(recorded_message("exec-v11")["event"]["exec"]["target"])
    assert (exec_v11.pid, exec_v11.uid) == (11085, 501)
    assert exec_v11.signing.signing_id == "com.apple.localizationswitcherd"


def test_recorded_exec_then_open_gives_argv_cwd_and_signing_identity() -> None:
    exec_line = recorded("exec-v9")  # /bin/nu (pid 97391) execs /bin/connection-checker
    target = recorded_message("exec-v9")["event"]["exec"]["target"]
    parser = EsloggerParser([CRED])
    reads = parser.feed_reads(exec_line + recorded_open(target, CRED, seq=76))
    [(event, reader)] = reads
    assert (event.pid, event.ppid, event.exe) == (97391, 58916, "/bin/connection-checker")
    assert event.cmdline == ("/bin/connection-checker",) and event.cwd == "/bin/mullvadvpn-app"
    assert (reader.signing.signing_id, reader.signing.team_id) == (
        "connection_checker-04fde7bdb8bceee3",
        None,
    )
    assert parser.malformed == 0 and parser.dropped == 0 and parser.skipped_opens == 0


def test_recorded_fork_with_list_audit_tokens_then_open_of_the_planted_file() -> None:
    fork = recorded_message("fork-v10")
    child = fork["event"]["fork"]["child"]
    parser = EsloggerParser([CRED])
    [(event, reader)] = parser.feed_reads(recorded("fork-v10") + recorded_open(child, CRED, seq=2))
    app = "/Applications/Mullvad VPN.app/Contents/MacOS/Mullvad VPN"
    assert (event.pid, event.ppid, event.exe, event.uid) == (21497, 19745, app, 501)
    assert [(a.pid, a.exe) for a in event.ancestors][:1] == [(19745, app)]
    assert (reader.signing.signing_id, reader.signing.team_id) == ("net.mullvad.vpn", "CKG9MXH72F")


def test_opens_of_other_files_are_never_decoded_and_their_sequence_numbers_still_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    process = recorded_message("exit-v9")["process"]
    other = [recorded_open(process, f"/System/Library/F{n}.framework/F{n}", seq=n) for n in range(1, 50)]
    planted = recorded_open(process, CRED, seq=50)
    decoded: list[bytes] = []
    real_loads = json.loads
    monkeypatch.setattr(_eslogger_parse.json, "loads", lambda raw: decoded.append(raw) or real_loads(raw))
    parser = EsloggerParser([CRED])
    events = parser.feed(b"".join(other) + planted)
    assert [e.path for e in events] == [CRED]
    assert decoded == [planted.strip()]  # the 49 other opens: not one JSON decode
    assert parser.skipped_opens == 49
    assert parser.dropped == 0  # skipped is not lost: the sequence stayed continuous
    parser.feed(recorded_open(process, "/tmp/x", seq=51) + recorded_open(process, CRED, seq=60))
    assert parser.dropped == 8  # a real gap (52..59) is still reported


def test_filter_sees_through_json_escaping_and_case() -> None:
    process = recorded_message("exit-v9")["process"]
    parser = EsloggerParser([CRED])
    upper = recorded_open(process, "/Users/alice/.AWS/Credentials", seq=1)  # APFS: the same file
    message = json.loads(recorded_open(process, CRED, seq=2))
    plain = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    assert b"\\/" not in plain  # a writer that does not escape slashes
    assert [e.path for e in parser.feed(upper + plain)] == [CRED, CRED]
    sensitive = EsloggerParser([CRED], case_sensitive=True)
    assert sensitive.feed(recorded_open(process, "/Users/alice/.AWS/Credentials", seq=1)) == []


def test_filter_handles_non_ascii_planted_paths_in_either_json_spelling() -> None:
    process = recorded_message("exit-v9")["process"]
    path = "/Users/zoë/Clés/clés"
    message = json.loads(recorded_open(process, path, seq=1))
    raw_utf8 = as_eslogger_writes(message)
    compact = json.dumps(message, separators=(",", ":"), ensure_ascii=True)
    escaped = compact.replace("/", "\\/").encode() + b"\n"
    assert "é".encode() in raw_utf8 and b"\\u00e9" in escaped
    for line in (raw_utf8, escaped):
        assert [e.path for e in EsloggerParser([path]).feed(line)] == [path]
    # Nothing plain-ASCII of 4+ bytes to look for: the filter steps aside (every open decoded).
    assert needles_for(["/é/ü"], case_sensitive=False) is None
    assert OpenFilter(["/é/ü"]).may_match(b"anything")


def test_a_reader_cannot_forge_the_event_type_or_the_planted_path_through_names() -> None:
    # A hostile process puts the filter's keys and the planted path in its file names and argv;
    # JSON escapes the quotes, so the bytes `"event_type":` still only match the real key.
    process = recorded_message("exit-v9")["process"]
    decoy = '/tmp/"event_type":9,"global_seq_num":1,"x":"/Users/alice/.aws/credentials'
    line = recorded_open(process, decoy, seq=7)
    assert peek_int(line, b'"event_type":') == 10 and peek_int(line, b'"global_seq_num":') == 7
    parser = EsloggerParser([CRED])
    assert parser.feed(line) == []  # passed the filter (it names the tail), refused on the exact path
    assert parser.skipped_opens == 0 and parser.malformed == 0 and parser.dropped == 0
    assert parser.feed(recorded_open(process, "/private/tmp/.aws/credentials", seq=8)) == []


def test_peek_int_on_malformed_bytes() -> None:
    assert peek_int(b'{"event_type":}', b'"event_type":') is None
    assert peek_int(b'{"event_type": 15}', b'"event_type":') == 15
    assert peek_int(b"not json", b'"event_type":') is None
    assert peek_int(b'{"event_type":10', b'"event_type":') == 10  # cut line: decoded later, counted there


def test_the_filter_reads_the_opened_file_path_whatever_the_key_order_and_escapes() -> None:
    process = recorded_message("exit-v9")["process"]
    planted = '/Users/o"brien/.aws/credentials'  # a quote in a folder name: JSON writes \"
    parser = EsloggerParser([planted])
    message = json.loads(recorded_open(process, planted, seq=1))
    file = message["event"]["open"]["file"]
    message["event"]["open"] = {
        "file": {"stat": file["stat"], "path": file["path"]},
        "fflag": 1,
    }  # other order
    [read] = parser.feed(as_eslogger_writes(message))
    assert read.path == planted
    other = as_eslogger_writes(json.loads(recorded_open(process, '/tmp/x"y', seq=2)))
    cut = recorded_open(process, CRED, seq=3)[:-40] + b"\n"  # a line cut inside: never skipped
    assert parser.feed(other + cut) == []
    assert parser.skipped_opens == 1 and parser.malformed == 1
