"""eslogger message builders for tests, in the format `eslogger <events> --format json` prints on macOS 13+.

Format source (documented, not guessed): eslogger(1) prints one serialised `es_message_t`
(EndpointSecurity/ESMessage.h) per line as JSON. Top level: "version", "time" (ISO 8601 UTC with
nanoseconds), "mach_time", "event_type" (the es_event_type_t number: NOTIFY_EXEC 9,
NOTIFY_OPEN 10, NOTIFY_FORK 11, NOTIFY_EXIT 15 per ESTypes.h), "global_seq_num", "seq_num",
"action_type", "thread", "process" (es_process_t: "audit_token" {"pid", "pidversion", "euid",
"ruid", "egid", "rgid", "auid", "asid"}, "ppid", "original_ppid", "group_id", "session_id",
"start_time", "executable" {"path", "path_truncated", "stat"}, "signing_id", "team_id", ...)
and "event" with one key named after the event: "open" {"fflag", "file"}, "exec" {"target",
"args", "cwd", "env", ...}, "fork" {"child"}, "exit" {"stat"}. Field names as in the published
eslogger schemas (e.g. the eslog/ESLogger Go and Swift type definitions of the same output).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

_seq = itertools.count(1)
T0 = "2024-05-02T10:11:12.123456789Z"


def proc(
    pid: int,
    exe: str,
    *,
    ppid: int = 1,
    uid: int = 501,
    start: str = "2024-05-02T10:11:11.500000Z",
    pidversion: int = 1,
) -> dict[str, Any]:
    return {
        "audit_token": {
            "asid": 100001,
            "auid": uid,
            "egid": 20,
            "euid": uid,
            "pid": pid,
            "pidversion": pidversion,
            "rgid": 20,
            "ruid": uid,
        },
        "cdhash": "0123456789abcdef0123456789abcdef01234567",
        "codesigning_flags": 570522385,
        "executable": {"path": exe, "path_truncated": False, "stat": {"st_uid": 0, "st_mode": 33261}},
        "group_id": pid,
        "is_es_client": False,
        "is_platform_binary": True,
        "original_ppid": ppid,
        "ppid": ppid,
        "session_id": 100001,
        "signing_id": "com.apple." + exe.rsplit("/", 1)[-1],
        "start_time": start,
        "team_id": None,
        "tty": None,
    }


def message(
    event_type: int, process: dict[str, Any], event: dict[str, Any], *, time: str = T0, seq: int | None = None
) -> dict[str, Any]:
    return {
        "action": {"result": {"result": {"auth": 0}, "result_type": 0}},
        "action_type": 1,
        "event": event,
        "event_type": event_type,
        "global_seq_num": next(_seq) if seq is None else seq,
        "mach_time": 123456789012,
        "process": process,
        "schema_version": 1,
        "seq_num": 1,
        "thread": {"thread_id": 4242},
        "time": time,
        "version": 7,
    }


def exec_msg(
    before: dict[str, Any], target: dict[str, Any], args: list[str], cwd: str = "/", **kw: Any
) -> dict[str, Any]:
    return message(
        9,
        before,
        {
            "exec": {
                "args": args,
                "cwd": {"path": cwd, "path_truncated": False},
                "dyld_exec_path": target["executable"]["path"],
                "env": ["PATH=/usr/bin:/bin", "HOME=/Users/alice"],
                "fds": [{"fd": 0, "fdtype": 1}],
                "image_cpusubtype": -2147483646,
                "image_cputype": 16777228,
                "last_fd": 2,
                "script": None,
                "target": target,
            }
        },
        **kw,
    )


def fork_msg(parent: dict[str, Any], child: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return message(11, parent, {"fork": {"child": child}}, **kw)


def exit_msg(process: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return message(15, process, {"exit": {"stat": 0}}, **kw)


def open_msg(process: dict[str, Any], path: str, fflag: int = 1, **kw: Any) -> dict[str, Any]:
    return message(
        10,
        process,
        {
            "open": {
                "fflag": fflag,
                "file": {"path": path, "path_truncated": False, "stat": {"st_size": 116, "st_uid": 501}},
            }
        },
        **kw,
    )


def line(msg: dict[str, Any]) -> bytes:
    # eslogger writes compact JSON, one message per line.
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


# ---- recorded output -----------------------------------------------------------------------------
# Real eslogger lines, recorded on macOS and published in mullvad/mullvadvpn-app
# (talpid-core/src/split_tunnel/macos/process.rs, test_deserialize_esmessage, at commit
# 9380a8076bc0511937477989a80ebca89cb334d9): exit and exec from macOS 15 (schema version 9),
# fork from macOS 26 (version 10: audit tokens as lists), exec from macOS 27 beta (version 11).
# Only the data lines are stored (tests/data/eslogger/), one message per file, byte for byte.
RECORDED_SOURCE = (
    "mullvad/mullvadvpn-app talpid-core/src/split_tunnel/macos/process.rs "
    "@ 9380a8076bc0511937477989a80ebca89cb334d9"
)
RECORDED = {
    "exit-v9": "mullvad-macos15-v9-exit.json",
    "exec-v9": "mullvad-macos15-v9-exec.json",
    "fork-v10": "mullvad-macos26-v10-fork.json",
    "exec-v11": "mullvad-macos27beta-v11-exec.json",
}


def recorded(name: str) -> bytes:
    """One recorded line (with its newline), as eslogger wrote it."""
    from tests.support.paths import REPO_ROOT

    data = (REPO_ROOT / "tests" / "data" / "eslogger" / RECORDED[name]).read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    return data


def recorded_message(name: str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(recorded(name))
    return message


def as_eslogger_writes(message: dict[str, Any]) -> bytes:
    """Compact JSON with `/` escaped as `\\/`, as the recorded lines show NSJSONSerialization does
    (a `/` occurs only inside strings in JSON text, so escaping every one is exact)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/").encode() + b"\n"


def recorded_open(process: dict[str, Any], path: str, *, seq: int, fflag: int = 1) -> bytes:
    """An open message around a recorded process object. No public recording of an open event
    was found; its body follows es_event_open_t ({"fflag", "file": es_file_t}) and the envelope is
    the recorded exit message's (same keys, same order), so only the event differs."""
    message = recorded_message("exit-v9")
    message["process"] = process
    message["event_type"] = 10
    message["global_seq_num"] = seq
    message["event"] = {
        "open": {"fflag": fflag, "file": {"path_truncated": False, "path": path, "stat": {"st_mode": 33152}}}
    }
    return as_eslogger_writes(message)
