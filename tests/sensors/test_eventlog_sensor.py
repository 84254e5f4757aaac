"""EventLogSensor on a non-Windows host, and the exact commands it would run on Windows.

wevtutil, auditpol and Set-Acl cannot run on Linux; these tests pin the commands' text (the
documented syntax of `wevtutil qe /q: /f:xml /e: /c: /rd:`, event-log XPath, and
System.Security.AccessControl.FileSystemAuditRule) so a change is deliberate.
"""

from __future__ import annotations

import pytest

from agent import osflags
from agent.sensors import eventlog
from agent.sensors.base import SensorError, SensorUnavailable
from agent.sensors.eventlog import (
    UNAVAILABLE_OS,
    EventLogSensor,
    EventlogSensor,
    newest_record,
    query_xpath,
    sacl_script,
    wevtutil_query,
)

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
        "wevtutil", "qe", "Security",
        "/q:*[System[(EventID=4663 or EventID=4688 or EventID=4689 or EventID=1102) and EventRecordID>41]]",
        "/f:xml", "/e:Events", "/c:500", "/rd:false",
    ]


def test_sacl_script_audits_read_data_for_everyone_on_files_of_the_folder() -> None:
    script = sacl_script(r"C:\Users\o'brien\.aws")
    assert r"$path = 'C:\Users\o''brien\.aws'" in script  # PowerShell single-quote escaping
    assert "SecurityIdentifier('S-1-1-0')" in script  # Everyone by SID: names are localised
    assert "FileSystemAuditRule($everyone, 'ReadData', 'ObjectInherit', 'InheritOnly', 'Success')" in script
    assert "$acl.AddAuditRule($rule)" in script and "Get-Acl -LiteralPath $path -Audit" in script
    assert "$acl.RemoveAuditRuleSpecific($rule)" in sacl_script("C:\\x", remove=True)


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
