"""EventLogSensor on a non-Windows host, and the exact commands it would run on Windows.

wevtutil, auditpol and Set-Acl cannot run on Linux; these tests pin the commands' text (the
documented syntax of `wevtutil qe /q: /f:xml /e: /c: /rd:`, event-log XPath, and
System.Security.AccessControl.FileSystemAuditRule) so a change is deliberate.
"""

from __future__ import annotations

import base64
import codecs
import json
import os
import sys
from pathlib import Path

import pytest

from agent import osflags
from agent.events.model import ReadEvent
from agent.sensors import _eventlog as eventlog
from agent.sensors._eventlog import (
    UNAVAILABLE_OS,
    EventLogSensor,
    EventlogSensor,
    decode_output,
    newest_record,
    powershell,
    query_xpath,
    sacl_script,
    wevtutil_query,
)
from agent.sensors.base import SensorError, SensorUnavailable
from tests.support.eventlog import CMD, EXPLORER, access, event_xml, start
from tests.support.eventlog import CRED as WIN_CRED

pytestmark = pytest.mark.skipif(osflags.WINDOWS, reason="checks the behaviour on a host without Windows")


def test_not_available_here_and_start_says_so() -> None:
    assert EventlogSensor is EventLogSensor
    assert EventLogSensor.check_available() == UNAVAILABLE_OS
    sensor = EventLogSensor([r"C:\Users\alice\.aws\credentials"], lambda e: None)
    with pytest.raises(SensorUnavailable, match="only available on Windows"):
        sensor.start()
    assert not sensor.health().healthy and sensor.health().error == "not started"
    sensor.stop()
    sensor.stop()


def test_query_asks_only_for_new_records_of_the_watched_events() -> None:
    assert query_xpath(None) == "*[System[(EventID=4663 or EventID=4688 or EventID=4689 or EventID=1102)]]"
    assert query_xpath(41, (4688,)) == "*[System[(EventID=4688) and EventRecordID>41]]"
    assert wevtutil_query(41, 500) == [
        "wevtutil",
        "qe",
        "Security",
        "/q:*[System[(EventID=4663 or EventID=4688 or EventID=4689 or EventID=1102) and EventRecordID>41]]",
        "/f:xml",
        "/e:Events",
        "/c:500",
        "/rd:false",
    ]


def test_sacl_script_audits_read_data_for_everyone_on_files_of_the_folder() -> None:
    script = sacl_script(r"C:\Users\o'brien\.aws")
    assert r"$path = 'C:\Users\o''brien\.aws'" in script  # PowerShell single-quote escaping
    assert "SecurityIdentifier('S-1-1-0')" in script  # Everyone by SID: names are localised
    assert "FileSystemAuditRule($everyone, 'ReadData', 'ObjectInherit', 'InheritOnly', 'Success')" in script
    assert "$acl.AddAuditRule($rule)" in script and "Get-Acl -LiteralPath $path -Audit" in script
    assert "$acl.RemoveAuditRuleSpecific($rule)" in sacl_script("C:\\x", remove=True)


def test_powershell_gets_the_script_encoded_not_quoted() -> None:
    script = sacl_script(r"C:\Users\a b\.aws")
    command = powershell(script)
    assert command[:-1] == [
        "powershell",
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-EncodedCommand",
    ]
    assert base64.b64decode(command[-1]).decode("utf-16-le") == script


def test_tool_output_is_decoded_whatever_its_encoding() -> None:
    text = "<Data Name='ObjectName'>C:\\Users\\zoë\\.aws\\credentials</Data>"
    assert decode_output(codecs.BOM_UTF16_LE + text.encode("utf-16-le")) == text
    assert decode_output(codecs.BOM_UTF8 + text.encode()) == text
    assert decode_output(text.encode()) == text
    assert "zo" in decode_output(text.encode("latin-1"))  # not UTF-8: never an exception


def test_newest_record_from_log_info() -> None:
    assert newest_record({"oldestRecordNumber": "5001", "numberOfLogRecords": "120"}) == 5120
    assert newest_record({"oldestRecordNumber": "0", "numberOfLogRecords": "0"}) == 0
    with pytest.raises(SensorError, match="record range"):
        newest_record({})


def test_audit_subcategories_are_the_documented_guids() -> None:
    # auditpol /list /subcategory:* /v — File System, Process Creation, Process Termination.
    assert eventlog.SUBCATEGORY_FILE_SYSTEM == "{0CCE921D-69AE-11D9-BED3-505054503030}"
    assert eventlog.SUBCATEGORY_PROCESS_CREATION == "{0CCE922B-69AE-11D9-BED3-505054503030}"
    assert eventlog.SUBCATEGORY_PROCESS_TERMINATION == "{0CCE922C-69AE-11D9-BED3-505054503030}"


# ---- polling, against a stand-in wevtutil ------------------------------------------------------
# wevtutil cannot run here. The stand-in below answers `qe Security /q:XPATH ... /c:N /rd:BOOL`
# and `gli Security` from a JSON file the way wevtutil does (documented output: concatenated
# <Event> elements wrapped by /e:Events; `name: value` lines for gli), so the sensor's bookmark,
# wrap detection and delivery run for real. Only the OS gate is bypassed (no start()).

STAND_IN = r"""
import json, os, re, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
state = json.load(open(os.path.join(here, "log.json")))
verb, channel = sys.argv[1], sys.argv[2]
assert channel == "Security", channel
if verb == "gli":
    print("creationTime: 2024-01-01T00:00:00.000Z")
    print("numberOfLogRecords: %d" % state["count"])
    print("oldestRecordNumber: %d" % state["oldest"])
    sys.exit(0)
opts = dict(a[1:].split(":", 1) for a in sys.argv[3:])
query = opts["q"]
after = int((re.search(r"EventRecordID>(\d+)", query) or [None, -1])[1])
ids = {int(i) for i in re.findall(r"EventID=(\d+)", query)}
rows = [r for r in state["records"] if r[0] > after and r[1] in ids]
rows.sort(key=lambda r: r[0], reverse=opts.get("rd") == "true")
sys.stdout.write("<Events>" + "".join(r[2] for r in rows[: int(opts["c"])]) + "</Events>")
"""


class StandInLog:
    """The Security log the stand-in wevtutil serves, and the command lines it was run with."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir

    def serve(self, records: list[tuple[int, int, str]], oldest: int = 1) -> None:
        state = {"records": records, "oldest": oldest, "count": len(records)}
        (self.bindir / "log.json").write_text(json.dumps(state))

    def calls(self) -> list[list[str]]:
        return [json.loads(x) for x in (self.bindir / "calls.log").read_text().splitlines()]


@pytest.fixture
def wevtutil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInLog:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "wevtutil"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return StandInLog(bindir)


def test_poll_delivers_reads_advances_the_bookmark_and_reports_a_cleared_log(wevtutil: StandInLog) -> None:
    wevtutil.serve(
        [
            (10, 4688, start(10, 0x44, CMD, 0x4, "cmd /c type credentials", EXPLORER)),
            (11, 4663, access(11, 0x44, CMD)),
            (12, 4624, event_xml(4624, 12, {"TargetUserName": "alice"})),  # not asked for
            (13, 1102, event_xml(1102, 13, {})),
            (14, 4663, access(14, 0x44, CMD, path=r"C:\Users\alice\.aws\config")),
        ]
    )
    got: list[ReadEvent] = []
    sensor = EventLogSensor([WIN_CRED], got.append, batch=100)
    sensor._bookmark = 9
    assert sensor._poll_once() == 4
    assert [(e.pid, e.cmdline) for e in got] == [(0x44, ("cmd", "/c", "type", "credentials"))]
    assert sensor._bookmark == 14
    assert "cleared" in (sensor._error or "")
    assert sensor._poll_once() == 0 and len(got) == 1  # nothing new: nothing twice
    [last] = wevtutil.calls()[-1:]
    assert (
        last[2]
        == "/q:*[System[(EventID=4663 or EventID=4688 or EventID=4689 or EventID=1102) and EventRecordID>14]]"
    )


def test_log_wrap_is_counted_as_lost_and_start_bookmark_is_the_newest_record(wevtutil: StandInLog) -> None:
    wevtutil.serve(
        [(n, 4688, start(n, 0x100 + n, CMD, 0x4, f"cmd /c job{n}", EXPLORER)) for n in range(30, 40)],
        oldest=30,
    )
    sensor = EventLogSensor([WIN_CRED], lambda e: None, seed_processes=5)
    assert sensor._newest_record() == 39
    sensor._seed_process_table()  # the 5 newest process starts, oldest first
    assert sorted(sensor.correlator.processes) == [0x100 + n for n in range(35, 40)]
    sensor._bookmark = 20
    sensor._check_wrap()  # records 21..29 were overwritten before we read them
    assert sensor.health().lost_events == 9 and sensor._bookmark == 29
    assert "wrapped" in (sensor._error or "")
