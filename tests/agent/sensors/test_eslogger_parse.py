"""eslogger JSON parser: process tree, path matching, malformed and partial lines.

Fixtures are built by tests.sensors.test_eslogger_fixtures.py, whose docstring cites the format.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from agent.sensors._eslogger import psutil_fallback
from agent.sensors._eslogger_parse import (
    MAX_LINE_BYTES,
    EsloggerParser,
    ProcessTable,
    ProcRecord,
    canonical_path,
    parse_time,
)
from tests.support.eslogger import exec_msg, exit_msg, fork_msg, line, open_msg, proc

CRED = "/Users/alice/.aws/credentials"
LAUNCHD = proc(1, "/sbin/launchd", ppid=0, uid=0)
LOGIN = proc(400, "/usr/bin/login", ppid=1, uid=0)
ZSH = proc(480, "/bin/zsh", ppid=400)


def shell_session() -> list[bytes]:
    """login execs zsh (pid 480); zsh forks 501 which execs `cat ~/.aws/credentials`."""
    child = proc(501, "/bin/zsh", ppid=480, pidversion=7)
    cat = proc(501, "/bin/cat", ppid=480, pidversion=7)
    return [
        line(exec_msg(LOGIN, proc(400, "/usr/bin/login", ppid=1, uid=0), ["login", "-pf", "alice"])),
        line(exec_msg(proc(480, "/usr/bin/login", ppid=400), ZSH, ["-zsh"], cwd="/Users/alice")),
        line(fork_msg(ZSH, child)),
        line(exec_msg(child, cat, ["cat", CRED], cwd="/Users/alice/projects")),
        line(open_msg(cat, CRED)),
    ]


def parse_all(parser: EsloggerParser, lines: list[bytes]) -> list:
    return parser.feed(b"".join(lines))


def test_open_of_planted_file_carries_command_line_and_ancestors() -> None:
    parser = EsloggerParser([CRED], user_name=lambda uid: {501: "alice", 0: "root"}.get(uid))
    [event] = parse_all(parser, shell_session())
    assert event.path == CRED
    assert event.sensor == "eslogger" and event.access == "open"
    assert (event.pid, event.ppid, event.uid, event.user) == (501, 480, 501, "alice")
    assert event.exe == "/bin/cat"
    assert event.cmdline == ("cat", CRED)
    assert event.cwd == "/Users/alice/projects"
    assert event.time == dt.datetime(2024, 5, 2, 10, 11, 12, 123456, tzinfo=dt.UTC)
    assert event.start_time == dt.datetime(2024, 5, 2, 10, 11, 11, 500000, tzinfo=dt.UTC)
    assert [(a.pid, a.exe, a.cmdline) for a in event.ancestors] == [
        (480, "/bin/zsh", ("-zsh",)),
        (400, "/usr/bin/login", ("login", "-pf", "alice")),
        (1, None, ()),  # launchd: never exec'd while we watched, no fallback -> pid only
    ]
    assert parser.malformed == 0 and parser.dropped == 0


def test_the_readers_code_signature_travels_with_the_read() -> None:
    """es_process_t's signing_id, team_id, is_platform_binary and codesigning_flags (CS_VALID 0x1,
    CS_ADHOC 0x2 in <kern/cs_blobs.h>) become the read's CodeSigning: Apple's cat vouches for itself,
    an ad-hoc signed "trufflehog" in Downloads names itself and vouches for nothing."""
    parser = EsloggerParser([CRED])
    [apple] = parse_all(parser, shell_session())
    assert apple.signing is not None and apple.signing.platform_binary is True
    assert apple.signing.signing_id == "com.apple.cat" and apple.signing.vouches()
    fake = proc(777, "/Users/alice/Downloads/trufflehog", ppid=480)
    fake.update(
        signing_id="com.trufflesecurity.trufflehog",
        team_id=None,
        is_platform_binary=False,
        codesigning_flags=0x3,
    )
    [event] = parser.feed(line(open_msg(fake, CRED)))
    assert event.signing is not None and event.signing.adhoc is True and event.signing.valid is True
    assert not event.signing.vouches()


def test_forked_child_without_exec_inherits_parent_argv() -> None:
    python = proc(700, "/usr/bin/python3", ppid=480)
    worker = proc(701, "/usr/bin/python3", ppid=700)
    parser = EsloggerParser([CRED])
    events = parse_all(
        parser,
        [
            line(exec_msg(proc(700, "/bin/zsh", ppid=480), python, ["python3", "steal.py"])),
            line(fork_msg(python, worker)),
            line(open_msg(worker, CRED)),
        ],
    )
    assert [e.cmdline for e in events] == [("python3", "steal.py")]
    assert events[0].ancestors[0].cmdline == ("python3", "steal.py")


def test_exited_parent_is_still_an_ancestor_and_reused_pid_is_replaced() -> None:
    parent = proc(800, "/usr/bin/ruby", ppid=1)
    child = proc(801, "/bin/cat", ppid=800)
    parser = EsloggerParser([CRED])
    events = parse_all(
        parser,
        [
            line(exec_msg(proc(800, "/bin/sh", ppid=1), parent, ["ruby", "x.rb"])),
            line(exec_msg(proc(801, "/usr/bin/ruby", ppid=800), child, ["cat", CRED])),
            line(exit_msg(parent)),
            line(open_msg(child, CRED)),
        ],
    )
    assert events[0].ancestors[0].cmdline == ("ruby", "x.rb")
    # pid 800 reused by a new process: fork replaces the old record, argv not carried over.
    newcomer = proc(800, "/usr/sbin/mdworker", ppid=1, pidversion=99)
    parser.feed(line(fork_msg(LAUNCHD, newcomer)) + line(open_msg(newcomer, CRED)))
    record = parser.table.get(800)
    assert record is not None and record.exe == "/usr/sbin/mdworker" and record.pidversion == 99


def test_var_and_private_var_and_case_are_one_file() -> None:
    planted = "/var/root/.aws/credentials"
    reader = proc(900, "/bin/cat", uid=0)
    parser = EsloggerParser([planted])
    events = parser.feed(
        line(open_msg(reader, "/private/var/root/.aws/credentials"))
        + line(open_msg(reader, "/private/var/root/.AWS/Credentials"))
        + line(open_msg(reader, "/private/var/root/.aws/config"))
    )
    assert [e.path for e in events] == [planted, planted]  # reported as configured
    strict = EsloggerParser([planted], case_sensitive=True)
    assert len(strict.feed(line(open_msg(reader, "/private/var/root/.AWS/Credentials")))) == 0
    assert canonical_path("/tmp/x") == canonical_path("/private/tmp/X")
    assert canonical_path("/variable/x") == "/variable/x"  # only the /var directory itself maps


def test_write_only_opens_and_own_pid_are_not_reads() -> None:
    parser = EsloggerParser([CRED], skip_pids={4321})
    writer = proc(902, "/usr/bin/vim")
    agent = proc(4321, "/usr/local/bin/tripkey-agent", uid=0)
    events = parser.feed(
        line(open_msg(writer, CRED, fflag=0x2))
        + line(open_msg(agent, CRED))
        + line(open_msg(writer, CRED, fflag=0x3))
    )
    assert [(e.pid, e.exe) for e in events] == [(902, "/usr/bin/vim")]


@pytest.mark.parametrize(
    "bad",
    [
        b"not json at all",
        b'{"event_type": 10, "event": {"open": {"file": {"path": "/Users/alice/.aws/credentials"',
        b"[1, 2, 3]",
        json.dumps({"event": {"open": {}}, "process": {}}).encode(),  # no pid
        json.dumps(
            {"event": {"open": {"file": {"path": CRED}}}, "process": proc(5, "/bin/cat")}
        ).encode(),  # no time
        json.dumps(
            {
                "time": "2024-05-02T10:11:12Z",
                "process": proc(5, "/bin/cat"),
                "event": {"open": {"file": {"path": CRED}}, "exec": {}},
            }
        ).encode(),
        b"\xff\xfe credentials",
    ],
)
def test_malformed_line_is_skipped_counted_and_parsing_goes_on(bad: bytes) -> None:
    parser = EsloggerParser([CRED])
    events = parser.feed(bad + b"\n" + line(open_msg(proc(903, "/bin/cat"), CRED)))
    assert [e.pid for e in events] == [903]
    assert parser.malformed == 1 and parser.lost_events == 1
    assert parser.last_error


def test_unrelated_open_is_not_decoded() -> None:
    # Opens of other files are the bulk of eslogger's output; they are skipped before json.loads,
    # so even a damaged one costs nothing and is not a lost read of a planted file.
    parser = EsloggerParser([CRED])
    assert parser.feed(b'{"event_type":10,"event":{"open":{"file":{"path":"/etc/hosts"<<<\n') == []
    assert parser.malformed == 0 and parser.lines == 1


def test_partial_lines_in_any_chunking_give_the_same_events() -> None:
    data = b"".join(shell_session()) * 2
    whole = EsloggerParser([CRED]).feed(data)
    assert len(whole) == 2
    for size in (1, 7, 4096):
        parser = EsloggerParser([CRED])
        got = []
        for i in range(0, len(data), size):
            got += parser.feed(data[i : i + size])
        assert got == whole, size
        assert parser.malformed == 0


def test_trailing_partial_line_at_end_of_stream() -> None:
    parser = EsloggerParser([CRED])
    complete = line(open_msg(proc(904, "/bin/cat"), CRED)).rstrip(b"\n")
    assert parser.feed(complete) == []  # no newline yet: waits
    assert [e.pid for e in parser.finish()] == [904]  # complete JSON at EOF is still a message
    assert parser.feed(complete[:40]) == []
    assert parser.finish() == [] and parser.malformed == 1  # cut-off message: counted, not lost silently


def test_overlong_line_is_discarded_and_counted() -> None:
    parser = EsloggerParser([CRED])
    assert parser.feed(b"x" * (MAX_LINE_BYTES + 1)) == []
    assert parser.malformed == 1
    assert [e.pid for e in parser.feed(b"\n" + line(open_msg(proc(905, "/bin/cat"), CRED)))] == [905]


def test_gap_in_global_sequence_is_reported_as_dropped() -> None:
    parser = EsloggerParser([CRED])
    reader = proc(906, "/bin/cat")
    parser.feed(line(open_msg(reader, CRED, seq=10)) + line(open_msg(reader, CRED, seq=11)))
    assert parser.dropped == 0
    parser.feed(line(open_msg(reader, CRED, seq=15)))
    assert parser.dropped == 3 and parser.lost_events == 3


def test_set_paths_switches_targets() -> None:
    other = "/Users/bob/.aws/credentials"
    parser = EsloggerParser([CRED])
    reader = proc(907, "/bin/cat")
    parser.set_paths([other])
    events = parser.feed(line(open_msg(reader, CRED)) + line(open_msg(reader, other)))
    assert [e.path for e in events] == [other]


def test_non_ascii_planted_name_is_matched_without_prefilter() -> None:
    planted = "/Users/zoë/.aws/crédentials"
    parser = EsloggerParser([planted])
    msg = json.dumps(open_msg(proc(908, "/bin/cat"), planted)).encode() + b"\n"  # \u-escaped
    assert [e.path for e in parser.feed(msg)] == [planted]


def test_nanosecond_times_and_bad_times() -> None:
    assert parse_time("2024-05-02T10:11:12.999999999Z") == dt.datetime(
        2024, 5, 2, 10, 11, 12, 999999, tzinfo=dt.UTC
    )
    assert parse_time("2024-05-02T12:11:12+02:00") == dt.datetime(2024, 5, 2, 10, 11, 12, tzinfo=dt.UTC)
    assert parse_time("yesterday") is None and parse_time(None) is None


def test_process_table_is_bounded() -> None:
    table = ProcessTable(max_live=3, max_exited=1)
    for pid in range(10):
        table.put(ProcRecord(pid=pid))
    assert len(table) == 3 and table.get(0) is None and table.get(9) is not None
    table.exit(9)
    table.exit(8)
    assert table.get(9) is None and table.get(8) is not None


def test_process_started_before_eslogger_is_filled_in_from_the_live_process() -> None:
    # A REAL process (psutil works on Linux as on macOS): the table never saw its exec.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-arg"])
    try:
        live = psutil.Process(child.pid)
        # Right after fork, /proc shows the parent's command line until the child has exec'd.
        deadline = time.monotonic() + 10
        while live.cmdline()[-1:] != ["marker-arg"]:
            assert time.monotonic() < deadline, "the child never exec'd"
            time.sleep(0.01)
        start = dt.datetime.fromtimestamp(live.create_time(), tz=dt.UTC)
        reader = proc(
            child.pid,
            sys.executable,
            ppid=os.getpid(),
            uid=os.getuid(),
            start=start.isoformat().replace("+00:00", "Z"),
        )
        parser = EsloggerParser([CRED], fallback=psutil_fallback)
        [event] = parser.feed(line(open_msg(reader, CRED)))
        assert event.cmdline[-1] == "marker-arg"
        assert event.ancestors[0].pid == os.getpid()
        assert event.ancestors[0].cmdline == tuple(psutil.Process().cmdline())
    finally:
        child.kill()
        child.wait()
    assert psutil_fallback(child.pid) is None  # gone: the fallback says so, never guesses


def test_fallback_for_a_reused_pid_is_ignored() -> None:
    stale = ProcRecord(
        pid=910, exe="/usr/bin/other", args=("other",), start_time=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    )
    parser = EsloggerParser([CRED], fallback=lambda pid: stale if pid == 910 else None)
    [event] = parser.feed(line(open_msg(proc(910, "/bin/cat"), CRED)))
    assert event.cmdline == ()  # start time differs: another process now has that pid


def test_a_new_eslogger_process_restarts_the_sequence() -> None:
    parser = EsloggerParser([CRED])
    reader = proc(911, "/bin/cat")
    parser.feed(line(open_msg(reader, CRED, seq=500)))
    parser.new_stream()  # eslogger restarted: a new ES client counts from 1 again
    parser.feed(line(open_msg(reader, CRED, seq=1)) + line(open_msg(reader, CRED, seq=4)))
    assert parser.dropped == 2
