"""The pure audit record parser, on documented and captured record text.

Format references:
* Red Hat Enterprise Linux 7 Security Guide, §7.6 "Understanding Audit Log Files": the
  `cat /etc/ssh/sshd_config` example event (SYSCALL, CWD, PATH, PROCTITLE; its PROCTITLE header is
  printed as `audit(...) :` with a space, reproduced as documented).
* auditd.conf(5) `log_format = ENRICHED`: interpreted fields follow a 0x1d (GS) separator.
* kernel/audit.c audit_log_n_untrustedstring(): strings with a space, quote, control or non-ASCII
  byte are logged as upper-case hex, others in double quotes; `key=(null)` when no key; several
  keys are joined by 0x01. kernel/auditsc.c: PROCTITLE is argv with NUL separators, ≤128 bytes;
  a syscall event ends with EOE (auditd does not write EOE to its log).
The ENRICHED lines below were captured from auditd 3.0.9 on Debian 12 (kernel 6.x) for this test.
"""

from __future__ import annotations

import datetime as dt
import struct

import pytest

from agent.sensors._audit_netlink import netlink_records
from agent.sensors._audit_parse import (
    AuditParseError,
    EventAssembler,
    decode_proctitle,
    decode_value,
    group_events,
    parse_line,
    parse_syscalls,
    record_from_netlink,
    syscall_from_event,
)

REDHAT_EXAMPLE = [
    "type=SYSCALL msg=audit(1364481363.243:24287): arch=c000003e syscall=2 success=no exit=-13 "
    "a0=7fffd19c5592 a1=0 a2=7fffd19c4b50 a3=a items=1 ppid=2686 pid=3538 auid=1000 uid=1000 gid=1000 "
    'euid=1000 suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000 tty=pts0 ses=1 comm="cat" '
    'exe="/bin/cat" subj=unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023 key="sshd_config"',
    'type=CWD msg=audit(1364481363.243:24287):  cwd="/home/shadowman"',
    'type=PATH msg=audit(1364481363.243:24287): item=0 name="/etc/ssh/sshd_config" inode=409248 '
    "dev=fd:00 mode=0100600 ouid=0 ogid=0 rdev=00:00 obj=system_u:object_r:etc_t:s0 objtype=NORMAL "
    "cap_fp=none cap_fi=none cap_fe=0 cap_fver=0",
    "type=PROCTITLE msg=audit(1364481363.243:24287) : "
    "proctitle=636174002F6574632F7373682F737368645F636F6E666967",
]

GS = "\x1d"
CAPTURED_ENRICHED = [
    "type=SYSCALL msg=audit(1795342436.964:8): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c "
    "a1=7fffd45f1add a2=0 a3=0 items=1 ppid=6122 pid=6185 auid=4294967295 uid=0 gid=0 euid=0 suid=0 "
    'fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="head" exe="/usr/bin/head" '
    f'key="cfgread"{GS}ARCH=x86_64 SYSCALL=openat AUID="unset" UID="root" GID="root" EUID="root"',
    'type=CWD msg=audit(1795342436.964:8): cwd="/tmp/c2exp"',
    'type=PATH msg=audit(1795342436.964:8): item=0 name="d/credentials" inode=2278175 dev=fe:00 '
    "mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 "
    f'cap_frootid=0{GS}OUID="root" OGID="root"',
    "type=PROCTITLE msg=audit(1795342436.964:8): proctitle=68656164002D3100642F63726564656E7469616C73",
]


def _hex(text: str) -> str:
    return text.encode().hex().upper()


def test_red_hat_documented_event():
    (event,) = parse_syscalls(REDHAT_EXAMPLE)
    assert event.time == dt.datetime(2013, 3, 28, 14, 36, 3, 243000, tzinfo=dt.UTC)
    assert (event.serial, event.arch, event.syscall, event.success) == (24287, "c000003e", 2, False)
    assert (event.pid, event.ppid, event.uid, event.auid, event.euid) == (3538, 2686, 1000, 1000, 1000)
    assert (event.exe, event.comm, event.keys, event.cwd) == (
        "/bin/cat",
        "cat",
        ("sshd_config",),
        "/home/shadowman",
    )
    (path,) = event.paths
    assert (path.item, path.name, path.inode, path.dev, path.nametype) == (
        0,
        "/etc/ssh/sshd_config",
        409248,
        "fd:00",
        "NORMAL",
    )
    assert event.proctitle == ("cat", "/etc/ssh/sshd_config")
    assert event.is_open()  # x86_64 syscall 2 = open


def test_captured_enriched_lines_drop_interpretations():
    (event,) = parse_syscalls(CAPTURED_ENRICHED, key="cfgread")
    assert event.keys == ("cfgread",)  # not 'cfgread"ARCH=x86_64...'
    assert event.auid is None  # 4294967295 = unset
    assert event.paths[0].name == "d/credentials" and event.paths[0].nametype == "NORMAL"
    assert event.proctitle == ("head", "-1", "d/credentials")
    assert event.syscall == 257 and event.is_open()
    assert parse_syscalls(CAPTURED_ENRICHED, key="other") == []


def test_interleaved_and_out_of_order_records_are_grouped_by_serial():
    a = [line.replace(":24287)", ":100)") for line in REDHAT_EXAMPLE]
    b = [line.replace(":8)", ":101)") for line in CAPTURED_ENRICHED]
    lines = [a[2], b[3], b[0], a[0], "", "garbage that is not a record", b[2], a[3], a[1], b[1]]
    events = parse_syscalls(lines)
    assert [e.serial for e in events] == [100, 101]
    assert events[0].proctitle == ("cat", "/etc/ssh/sshd_config") and events[0].cwd == "/home/shadowman"
    assert events[1].paths[0].inode == 2278175 and events[1].cwd == "/tmp/c2exp"


def test_same_serial_different_time_are_different_events():
    later = [line.replace("1795342436.964", "1795342499.001") for line in CAPTURED_ENRICHED]
    assert len(group_events(CAPTURED_ENRICHED + later)) == 2


def test_missing_proctitle_and_cwd():
    (event,) = parse_syscalls(CAPTURED_ENRICHED[:1] + CAPTURED_ENRICHED[2:3])
    assert event.proctitle == () and event.cwd is None and event.pid == 6185


def test_hex_encoded_names_with_spaces_and_non_ascii():
    lines = [
        "type=SYSCALL msg=audit(1700000000.5:7): arch=c000003e syscall=257 success=yes exit=3 items=2 "
        f"ppid=10 pid=11 auid=1000 uid=1000 euid=1000 comm={_hex('my cat')} exe={_hex('/opt/my tools/cat')} "
        f"key={_hex('cfgread' + chr(1) + 'other')}",
        f"type=CWD msg=audit(1700000000.5:7): cwd={_hex('/home/a b')}",
        f"type=PATH msg=audit(1700000000.5:7): item=0 name={_hex('/home/a b/.aws')} inode=5 nametype=PARENT",
        f"type=PATH msg=audit(1700000000.5:7): item=1 name={_hex('crédentials x')} inode=6 nametype=NORMAL",
        f"type=PROCTITLE msg=audit(1700000000.5:7): proctitle={_hex('cat' + chr(0) + 'crédentials x')}",
    ]
    (event,) = parse_syscalls(lines, key="other")
    assert event.time.microsecond == 500000  # "1700000000.5": fraction is milliseconds as logged
    assert (event.comm, event.exe, event.cwd) == ("my cat", "/opt/my tools/cat", "/home/a b")
    assert event.keys == ("cfgread", "other")
    assert [p.name for p in event.paths] == ["/home/a b/.aws", "crédentials x"]
    assert event.proctitle == ("cat", "crédentials x")


def test_plain_quoted_proctitle_null_key_and_node_prefix():
    lines = [
        "node=web-1 type=SYSCALL msg=audit(1700000001.000:9): arch=c00000b7 syscall=56 success=yes "
        'pid=42 ppid=1 uid=0 comm="sshd" exe="/usr/sbin/sshd" key=(null)',
        'node=web-1 type=PROCTITLE msg=audit(1700000001.000:9): proctitle="/usr/sbin/sshd"',
        "node=web-1 type=PATH msg=audit(1700000001.000:9): item=0 name=(null) inode=7 nametype=NORMAL",
    ]
    (event,) = parse_syscalls(lines)
    assert event.proctitle == ("/usr/sbin/sshd",) and event.keys == ()
    assert event.paths[0].name is None and event.is_open()  # aarch64 56 = openat


def test_metadata_syscalls_are_not_opens():
    line = CAPTURED_ENRICHED[0].replace("syscall=257", "syscall=192")  # lgetxattr (ls -l)
    assert not parse_syscalls([line])[0].is_open()
    unknown_arch = (
        CAPTURED_ENRICHED[0].replace("arch=c000003e", "arch=deadbeef").replace("syscall=257", "syscall=9")
    )
    assert parse_syscalls([unknown_arch])[0].is_open()  # unknown table: never hide a read


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [('"x y"', "x y"), ("(null)", None), ("", None), ("414243", "ABC"), ("abc", "abc"), ("4142G3", "4142G3")],
)
def test_decode_value(raw, decoded):
    assert decode_value(raw) == decoded


def test_decode_proctitle_variants():
    assert decode_proctitle(_hex("a\0b\0")) == ("a", "b")
    assert decode_proctitle('"bash"') == ("bash",)
    assert decode_proctitle("") == ()
    assert decode_proctitle("ABC") == ("ABC",)  # odd-length: not hex, kept as is


def test_bad_input():
    assert parse_line("") is None
    assert parse_line("hello world") is None
    with pytest.raises(AuditParseError, match="without type="):
        parse_line("msg=audit(1700000000.000:1): pid=1")
    no_pid = parse_line("type=SYSCALL msg=audit(1700000000.000:1): arch=c000003e syscall=2")
    assert no_pid is not None
    with pytest.raises(AuditParseError, match="has no pid"):
        syscall_from_event([no_pid])
    cwd_only = parse_line('type=CWD msg=audit(1700000000.000:1): cwd="/"')
    assert cwd_only is not None and syscall_from_event([cwd_only]) is None
    cut = CAPTURED_ENRICHED[0].index("auid=")
    truncated = parse_syscalls([CAPTURED_ENRICHED[0][:cut]])[0]  # fields present still parse
    assert (truncated.pid, truncated.ppid, truncated.uid, truncated.exe, truncated.keys) == (
        6185,
        6122,
        None,
        None,
        (),
    )


def test_netlink_messages_and_eoe_assembly():
    payloads = [
        (1300, CAPTURED_ENRICHED[0].split("msg=", 1)[1].split(GS)[0]),
        (1307, 'audit(1795342436.964:8): cwd="/tmp/c2exp"'),
        (1327, CAPTURED_ENRICHED[3].split("msg=", 1)[1]),
        (1320, "audit(1795342436.964:8): "),
    ]
    data = b""
    for msg_type, text in payloads:
        body = text.encode() + b"\0"
        msg = struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body
        data += msg + b"\0" * (-len(msg) % 4)
    records = netlink_records(data)
    assert [r.type for r in records] == ["SYSCALL", "CWD", "PROCTITLE", "EOE"]
    assembler = EventAssembler()
    done = [ev for r in records for ev in assembler.add(r, now=0.0)]
    assert len(done) == 1 and len(assembler) == 0
    event = syscall_from_event(done[0])
    assert event is not None and event.proctitle == ("head", "-1", "d/credentials")
    assert record_from_netlink(1300, b"not an audit payload") is None
    assert record_from_netlink(1999, b"audit(1.000:2): x=1").type == "UNKNOWN[1999]"  # type: ignore[union-attr]


def test_assembler_flushes_by_age_and_caps_pending():
    assembler = EventAssembler(max_pending=2)
    first, second, third = (
        parse_line(line)
        for line in (REDHAT_EXAMPLE[0], CAPTURED_ENRICHED[0], CAPTURED_ENRICHED[0].replace(":8)", ":9)"))
    )
    assert assembler.add(first, now=0.0) == [] and assembler.add(second, now=5.0) == []
    assert assembler.add(third, now=6.0) == [[first]]  # over max_pending: oldest handed over, not lost
    assert assembler.flush(now=7.5, max_age=2.0) == [[second]]
    assert assembler.flush(now=7.5, max_age=2.0) == [] and len(assembler) == 1
    assert assembler.flush() == [[third]]
