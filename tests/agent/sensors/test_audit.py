"""The audit backend against the real kernel and a real auditd (started by `audit_daemon`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agent.sensors._audit import AuditSensor
from agent.sensors._audit_parse import parse_syscalls
from agent.sensors.base import SensorUnavailable
from tests.support.paths import REPO_ROOT, requires_root

pytestmark = [requires_root, pytest.mark.root]

NOBODY = 65534
CAT = os.path.realpath(shutil.which("cat") or "/bin/cat")
HEAD = os.path.realpath(shutil.which("head") or "/usr/bin/head")
PYTHON = os.path.realpath(sys.executable)
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
AS_NOBODY = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _rules() -> str:
    return subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=True).stdout


def _run(argv: list[str], cwd: Path | None = None) -> int:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    proc.wait(timeout=30)
    return proc.pid


def _atomic_replace(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tripkey-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def test_acceptance_short_lived_readers_recorded_with_context(
    audit_sensor_factory, audit_collector, audit_home
):
    target = audit_home / ".aws" / "credentials"
    sensor = audit_sensor_factory([target], audit_collector)
    path = str(target)
    # (argv as executed, expected exe, expected cmdline, expected uid); 1,000 readers, as for fanotify.
    plans: list[tuple[list[str], str, list[str], int]] = []
    code = "import sys; open(sys.argv[1]).read()"
    for i in range(1000):
        kind = i % 5
        if kind == 0:
            plans.append(([CAT, path], CAT, [CAT, path], 0))
        elif kind == 1:
            plans.append((["head", "-c", "5", path], HEAD, ["head", "-c", "5", path], 0))
        elif kind == 2:
            plans.append(([sys.executable, "-c", code, path], PYTHON, [sys.executable, "-c", code, path], 0))
        elif kind == 3:  # setpriv execs cat: same pid, cat's exe and argv, nobody's uid
            plans.append(([*AS_NOBODY, "cat", path], CAT, ["cat", path], NOBODY))
        else:
            plans.append(([*AS_NOBODY, "head", "-n1", path], HEAD, ["head", "-n1", path], NOBODY))
    expected: dict[int, tuple[str, list[str], int]] = {}
    for start in range(0, len(plans), 20):  # a few at a time, as short-lived bursts
        batch = [
            (subprocess.Popen(argv, stdout=subprocess.DEVNULL), exe, cmd, uid)
            for argv, exe, cmd, uid in plans[start : start + 20]
        ]
        for proc, exe, cmd, uid in batch:
            assert proc.wait(timeout=30) == 0
            expected[proc.pid] = (exe, cmd, uid)

    missing = audit_collector.wait_for_pids(set(expected), timeout=60)
    assert not missing, f"{len(missing)} of {len(expected)} reads not recorded, e.g. {sorted(missing)[:5]}"
    for pid, (exe, cmd, uid) in expected.items():
        events = audit_collector.for_pid(pid)
        assert len(events) == 1, events
        event = events[0]
        assert (event.path, event.exe, list(event.cmdline), event.uid) == (path, exe, cmd, uid)
        assert event.ppid == os.getpid() and event.cwd == os.getcwd()
        assert event.sensor == "audit" and event.access == "open"
        assert event.user == ("root" if uid == 0 else "nobody")
        assert event.time.tzinfo is not None
        assert event.ancestors and event.ancestors[0].pid == os.getpid()
        assert event.ancestors[0].exe == PYTHON  # the parent (this test) is alive: enriched from /proc
        assert event.ancestors[-1].pid == 1
    assert sensor.health().healthy and sensor.health().lost_events == 0


def test_reads_recorded_after_rename_replace(audit_sensor_factory, audit_collector, audit_home):
    target = audit_home / ".aws" / "credentials"
    audit_sensor_factory([target], audit_collector)
    pids = []
    for round_ in range(3):
        before = os.stat(target).st_ino
        _atomic_replace(target, f"[prod-backup]\nround = {round_}\n")
        assert os.stat(target).st_ino != before
        pids.append(_run([CAT, str(target)]))
        pids.append(_run(["head", "-c1", "credentials"], cwd=target.parent))  # relative name
    assert not audit_collector.wait_for_pids(set(pids))
    assert {e.path for pid in pids for e in audit_collector.for_pid(pid)} == {str(target)}


def test_own_pid_skipped_and_metadata_or_denied_access_not_reported(
    audit_sensor_factory, audit_collector, audit_home
):
    target = audit_home / ".aws" / "credentials"
    private = audit_home / ".aws" / "private"
    private.write_text("x")
    private.chmod(0o600)
    audit_sensor_factory([target, private], audit_collector)
    target.read_text()  # the agent's own read
    lister = _run(["ls", "-l", "--", str(target.parent)])  # lgetxattr/getxattr match perm=r: not reads
    denied = _run([*AS_NOBODY, "cat", str(private)])  # EACCES: no content was read
    marker = _run([CAT, str(target)])
    assert not audit_collector.wait_for_pids({marker})
    time.sleep(0.5)  # events are delivered in order; give stragglers a moment anyway
    seen = {e.pid for e in audit_collector.events}
    assert os.getpid() not in seen
    assert lister not in seen
    assert denied not in seen


def test_failed_opens_reported_when_asked(audit_sensor_factory, audit_collector, audit_home):
    private = audit_home / ".aws" / "credentials"
    private.chmod(0o600)
    audit_sensor_factory([private], audit_collector, include_failed=True)
    denied = _run([*AS_NOBODY, "cat", str(private)])
    assert not audit_collector.wait_for_pids({denied})
    assert audit_collector.for_pid(denied)[0].uid == NOBODY


def test_stop_removes_exactly_its_own_rules(audit_daemon, audit_collector, audit_home):
    foreign = audit_home / "foreign"
    foreign.write_text("not ours")
    foreign_rule = ["always,exit", "-F", f"path={foreign}", "-F", "perm=r", "-F", "key=tk-foreign-test"]
    subprocess.run(["auditctl", "-a", *foreign_rule], check=True, capture_output=True)
    try:
        target = audit_home / ".aws" / "credentials"
        sensor = AuditSensor([str(target)], audit_collector, key="cfgread-test")
        sensor.start()
        assert f"-w {target} -p r -k cfgread-test" in _rules()
        sensor.stop()
        sensor.stop()  # twice is safe
        rules = _rules()
        assert "cfgread-test" not in rules
        assert f"-w {foreign} -p r -k tk-foreign-test" in rules
        assert not sensor.health().healthy
    finally:
        subprocess.run(["auditctl", "-d", *foreign_rule], check=False, capture_output=True)


def test_rule_deleted_by_someone_else_is_put_back(audit_sensor_factory, audit_collector, audit_home):
    target = audit_home / ".aws" / "credentials"
    sensor = audit_sensor_factory([target], audit_collector, key="cfgread-del")
    rule = ["always,exit", "-F", f"path={target}", "-F", "perm=r", "-F", "key=cfgread-del"]
    subprocess.run(["auditctl", "-d", *rule], check=True, capture_output=True)
    deadline = time.monotonic() + 20
    while sensor.rules_restored < 1:  # counted right after the rule is back in the kernel
        assert time.monotonic() < deadline, "the deleted rule was not restored"
        time.sleep(0.1)
    assert f"-w {target} -p r -k cfgread-del" in _rules()
    pid = _run([CAT, str(target)])
    assert not audit_collector.wait_for_pids({pid})


def test_set_paths_adds_and_removes_rules(audit_sensor_factory, audit_collector, audit_home):
    first = audit_home / ".aws" / "credentials"
    second = audit_home / "second"
    second.write_text("y")
    sensor = audit_sensor_factory([first], audit_collector, key="cfgread-set")
    sensor.set_paths([str(second)])
    rules = _rules()
    assert f"-w {second} -p r -k cfgread-set" in rules and str(first) not in rules
    assert sensor.installed_rules() == [str(second)]
    ignored, seen = _run([CAT, str(first)]), _run([CAT, str(second)])
    assert not audit_collector.wait_for_pids({seen})
    assert audit_collector.for_pid(seen)[0].path == str(second)
    assert not audit_collector.for_pid(ignored)


def test_coexists_with_auditd_which_logs_the_same_read(
    audit_daemon, audit_sensor_factory, audit_collector, audit_home
):
    if audit_daemon.log_path is None:
        pytest.skip("an auditd we did not start owns the log; its location is unknown")
    target = audit_home / ".aws" / "credentials"
    audit_sensor_factory([target], audit_collector, key="cfgread-coexist")
    pid = _run([CAT, str(target)])
    assert not audit_collector.wait_for_pids({pid})
    deadline = time.monotonic() + 15
    while True:
        logged = [s for s in parse_syscalls(audit_daemon.log_lines(), key="cfgread-coexist") if s.pid == pid]
        # auditd writes an event record by record: wait for its last one (PROCTITLE) too.
        if (logged and logged[0].proctitle) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logged, "auditd did not log the read the sensor saw"
    assert logged[0].exe == CAT and logged[0].proctitle == (CAT, str(target))
    assert audit_collector.for_pid(pid)[0].time == logged[0].time


def test_without_audit_capabilities_start_says_what_is_missing(audit_home):
    code = (
        "from agent.sensors._audit import AuditSensor\n"
        "from agent.sensors.base import SensorUnavailable\n"
        "import sys\n"
        f"s = AuditSensor([{str(audit_home / '.aws' / 'credentials')!r}], print)\n"
        "try:\n    s.start()\nexcept SensorUnavailable as e:\n    print('UNAVAILABLE:', e); sys.exit(3)\n"
    )
    drop = "-audit_control,-audit_read"
    result = subprocess.run(
        [SETPRIV, f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert (
        "UNAVAILABLE: the audit sensor needs root (CAP_AUDIT_CONTROL and CAP_AUDIT_READ missing"
        in result.stdout
    )


def test_missing_or_failing_auditctl_is_a_clear_error(tmp_path, audit_home):
    missing = str(tmp_path / "no-such-auditctl")
    assert "not found on PATH: install the audit userspace tools" in (
        AuditSensor.check_available(auditctl=missing) or ""
    )
    failing = tmp_path / "auditctl"
    failing.write_text(
        "#!/bin/sh\necho 'Error sending status request (Operation not permitted)' >&2\nexit 1\n"
    )
    failing.chmod(0o755)
    sensor = AuditSensor([str(audit_home / ".aws" / "credentials")], print, auditctl=str(failing))
    expected = r"kernel audit subsystem unavailable: .*Operation not permitted"
    with pytest.raises(SensorUnavailable, match=expected):
        sensor.start()


def test_stale_rules_of_a_crashed_agent_are_cleaned_at_start(
    audit_sensor_factory, audit_collector, audit_home
):
    gone = audit_home / "no-longer-planted"
    gone.write_text("z")
    stale = ["always,exit", "-F", f"path={gone}", "-F", "perm=r", "-F", "key=cfgread-stale"]
    subprocess.run(["auditctl", "-a", *stale], check=True, capture_output=True)
    try:
        target = audit_home / ".aws" / "credentials"
        audit_sensor_factory([target], audit_collector, key="cfgread-stale")
        rules = _rules()
        assert str(gone) not in rules and f"-w {target} -p r -k cfgread-stale" in rules
    finally:
        subprocess.run(["auditctl", "-d", *stale], check=False, capture_output=True)


def test_rules_are_removed_when_the_agent_dies_of_an_exception(audit_daemon, audit_home):
    """A Python-level crash (unhandled exception, sys.exit) leaves no rule behind; SIGKILL is
    covered by the stale-rule cleanup at the next start (above)."""
    target = audit_home / ".aws" / "credentials"
    code = (
        "from agent.sensors._audit import AuditSensor\n"
        f"AuditSensor([{str(target)!r}], print, key='cfgread-crash').start()\n"
        "raise RuntimeError('agent crashed')\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1 and "agent crashed" in result.stderr
        assert "cfgread-crash" not in _rules()
    finally:
        rule = ["always,exit", "-F", f"path={target}", "-F", "perm=r", "-F", "key=cfgread-crash"]
        subprocess.run(["auditctl", "-d", *rule], check=False, capture_output=True)


def test_sensor_to_classifier_to_read_log(audit_sensor_factory, audit_collector, audit_home, tmp_path):
    from agent.events.classify import classify
    from agent.events.readlog import ReadLog

    target = audit_home / ".aws" / "credentials"
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    target.write_text(f"[prod-backup]\naws_secret_access_key = {secret}\n")
    with ReadLog(tmp_path / "reads.db", secrets=[secret]) as log:

        def consume(event):
            log.record(event, classify(event))
            audit_collector(event)  # last: the test waits on the collector, then queries the log

        audit_sensor_factory([target], consume)
        cat = _run([CAT, str(target)])
        grep = _run(["grep", "-c", "prod", str(target)])
        python = _run([sys.executable, "-c", f"open({str(target)!r}).read()"])
        assert not audit_collector.wait_for_pids({cat, grep, python})
        rows = {r["pid"]: r for r in log.query(path=str(target))}
        assert rows[cat]["classification"] == rows[grep]["classification"] == "shell_utility"
        assert rows[python]["classification"] == "unknown"
        assert rows[python]["exe"] == PYTHON
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("reads.db*"))
        assert str(target).encode() in stored and secret.encode() not in stored


def test_disabled_auditing_is_enabled_for_the_sensor(audit_sensor_factory, audit_collector, audit_home):
    subprocess.run(["auditctl", "-e", "0"], check=True, capture_output=True)
    try:
        target = audit_home / ".aws" / "credentials"
        sensor = audit_sensor_factory([target], audit_collector)
        assert "enabled 1" in subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        pid = _run([CAT, str(target)])
        assert not audit_collector.wait_for_pids({pid})
        assert sensor.health().healthy
    finally:
        subprocess.run(["auditctl", "-e", "1"], check=False, capture_output=True)  # as auditd had it


def test_directory_with_space_deleted_and_replanted(audit_sensor_factory, audit_collector, audit_home):
    folder = audit_home / "CI runner" / ".aws"  # the kernel hex-encodes names with spaces
    folder.mkdir(parents=True, mode=0o755)
    target = folder / "credentials"
    target.write_text("[prod-backup]\n")
    sensor = audit_sensor_factory([target], audit_collector, key="cfgread-space", rule_check_interval=0.5)
    first = _run([CAT, str(target)])
    assert not audit_collector.wait_for_pids({first})
    assert audit_collector.for_pid(first)[0].path == str(target)
    assert f"-w {target} -p r -k cfgread-space" in _rules()
    shutil.rmtree(folder)  # the kernel drops a watch whose directory goes away
    deadline = time.monotonic() + 10
    while str(target) in _rules():
        assert time.monotonic() < deadline, "kernel kept the watch of a deleted directory"
        time.sleep(0.1)
    folder.mkdir(mode=0o755)
    target.write_text("[prod-backup]\n")
    sensor.set_paths([str(target)])  # what the agent does after re-planting
    deadline = time.monotonic() + 10
    while f"-w {target} -p r -k cfgread-space" not in _rules():
        assert time.monotonic() < deadline, "watch not restored after re-planting"
        time.sleep(0.1)
    second = _run(["head", "-c1", "credentials"], cwd=folder)
    assert not audit_collector.wait_for_pids({second})
    assert audit_collector.for_pid(second)[0].path == str(target)
    assert audit_collector.for_pid(second)[0].cwd == str(folder)
    deadline = time.monotonic() + 10
    while not sensor.health().healthy:  # the failed re-adds while the folder was gone are cleared
        assert time.monotonic() < deadline, sensor.health()
        time.sleep(0.1)
