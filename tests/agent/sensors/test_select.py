"""Sensor selection: auto picks the strongest available and says why; explicit names never fall back."""

from __future__ import annotations

import json
import logging

import pytest

import agent.sensors as sensors
from agent import osflags
from agent.sensors import SENSOR_NAMES, create_sensor, select_sensor, unavailable_reason
from agent.sensors._ebpf import EbpfSensor
from agent.sensors._fanotify import FanotifyNotifySensor, FanotifySensor
from agent.sensors.base import Sensor, SensorUnavailable
from tests.support.paths import requires_root
from tests.support.sensors import fan_run_unprivileged


def _noop(event: object) -> None:
    return None


@requires_root
def test_auto_on_this_kernel_as_root_is_ebpf_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.sensors")
    sensor = create_sensor("auto", ["/tmp/x/credentials"], _noop)
    assert isinstance(sensor, EbpfSensor)
    assert (sensor.name, sensor.mode) == ("ebpf", "tracepoints")
    selection = sensor.selection  # type: ignore[attr-defined]
    assert selection.requested == "auto" and selection.skipped == ()
    assert "strongest" in selection.reason
    assert any("sensor ebpf (mode tracepoints) selected" in r.getMessage() for r in caplog.records)


@requires_root
def test_auto_without_ebpf_is_permission_fanotify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EbpfSensor, "check_available", classmethod(lambda cls: "no BTF in this kernel"))
    sensor = create_sensor("auto", ["/tmp/x/credentials"], _noop)
    assert isinstance(sensor, FanotifySensor) and not isinstance(sensor, FanotifyNotifySensor)
    assert (sensor.name, sensor.mode) == ("fanotify", "permission")
    assert sensor.selection.skipped == (("ebpf", "no BTF in this kernel"),)  # type: ignore[attr-defined]


@requires_root
def test_explicit_ebpf_that_cannot_load_is_loud_and_never_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        EbpfSensor, "check_available", classmethod(lambda cls: "the BPF object is not built: run make")
    )
    with pytest.raises(SensorUnavailable, match="the BPF object is not built: run make"):
        create_sensor("ebpf", ["/tmp/x/credentials"], _noop)


@requires_root
@pytest.mark.parametrize(
    ("name", "cls", "mode"),
    [("fanotify", FanotifySensor, "permission"), ("fanotify-notify", FanotifyNotifySensor, "notify")],
)
def test_explicit_fanotify_names(name: str, cls: type[Sensor], mode: str) -> None:
    sensor = create_sensor(name, ["/tmp/x/credentials"], _noop, budget=0.5)
    assert type(sensor) is cls and sensor.mode == mode and sensor.budget == 0.5  # type: ignore[attr-defined]
    assert sensor.selection.reason.startswith("configured explicitly")  # type: ignore[attr-defined]
    assert sensor.capabilities.weaker is (name == "fanotify-notify")


@requires_root
def test_explicit_audit_is_lazily_imported_or_says_why() -> None:
    reason = unavailable_reason("audit")
    if reason is None:
        sensor = create_sensor("audit", ["/tmp/x/credentials"], _noop)
        assert type(sensor).__module__ == "agent.sensors._audit" and sensor.name == "audit"
    else:
        with pytest.raises(SensorUnavailable) as info:
            create_sensor("audit", ["/tmp/x/credentials"], _noop)
        assert str(info.value) == reason


@pytest.mark.parametrize(("name", "os_name"), [("eslogger", "macOS"), ("eventlog", "Windows")])
def test_other_os_sensors_refuse_on_linux(name: str, os_name: str) -> None:
    if not osflags.LINUX:
        pytest.skip("checks the Linux answer")
    with pytest.raises(SensorUnavailable, match=f"exists only on {os_name}"):
        create_sensor(name, [], _noop)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown sensor 'fanotfy'.*fanotify-notify"):
        create_sensor("fanotfy", [], _noop)
    assert set(SENSOR_NAMES) == {
        "auto",
        "ebpf",
        "fanotify",
        "fanotify-notify",
        "audit",
        "eslogger",
        "eventlog",
    }


@requires_root
def test_options_explicit_unknown_is_an_error_auto_drops_foreign() -> None:
    with pytest.raises(TypeError):
        create_sensor("fanotify", [], _noop, key="cfgread")  # an audit option
    sensor = create_sensor("auto", [], _noop, key="cfgread", budget=0.3)
    assert sensor.name == "ebpf"  # neither option is the eBPF sensor's: both dropped, no error


def test_auto_falls_back_loudly_in_order(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fallback logic itself, with availability forced: ebpf, fanotify and audit refused."""
    refusals = {"ebpf": "no BTF", "fanotify": "no permission events here", "audit": "no auditctl"}
    real = sensors.unavailable_reason
    monkeypatch.setattr(sensors, "unavailable_reason", lambda n: refusals.get(n) or real(n))
    monkeypatch.setattr(FanotifyNotifySensor, "check_available", classmethod(lambda cls: None))
    caplog.set_level(logging.INFO, logger="agent.sensors")
    sensor = create_sensor("auto", [], _noop)
    assert sensor.name == "fanotify-notify"
    selection = sensor.selection  # type: ignore[attr-defined]
    assert selection.skipped == (
        ("ebpf", refusals["ebpf"]),
        ("fanotify", refusals["fanotify"]),
        ("audit", refusals["audit"]),
    )
    assert "no permission events here" in selection.reason and "no auditctl" in selection.reason
    (record,) = [r for r in caplog.records if "selected" in r.getMessage()]
    assert record.levelno == logging.WARNING  # weaker than the best: loud


def test_auto_with_nothing_available_lists_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensors, "unavailable_reason", lambda n: f"{n} missing")
    with pytest.raises(SensorUnavailable) as info:
        select_sensor("auto")
    for name in sensors.auto_order():
        assert f"{name}: {name} missing" in str(info.value)


def test_auto_on_macos_and_windows_uses_their_sensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the registry's answer under other OS flags (their backends' checks need that OS)."""
    for flags, expected in (({"MACOS": True}, "eslogger"), ({"WINDOWS": True}, "eventlog")):
        monkeypatch.setattr(osflags, "LINUX", False)
        monkeypatch.setattr(osflags, "MACOS", flags.get("MACOS", False))
        monkeypatch.setattr(osflags, "WINDOWS", flags.get("WINDOWS", False))
        assert sensors.auto_order() == (expected,)
        try:
            cls = sensors.sensor_class(expected)
        except SensorUnavailable as exc:  # backend not in this build: said so, by name
            assert f"sensor {expected!r} is not part of this agent build" in str(exc)
        else:
            assert cls.name == expected
        with pytest.raises(SensorUnavailable, match="'fanotify' exists only on Linux"):
            create_sensor("fanotify", [], _noop)
        with pytest.raises(SensorUnavailable, match="'audit' exists only on Linux"):
            create_sensor("audit", [], _noop)


SELECT_AS_NOBODY = """
import json
from agent.sensors import create_sensor
from agent.sensors.base import SensorUnavailable
out = {}
for name in ("fanotify", "fanotify-notify", "auto"):
    try:
        create_sensor(name, ["/tmp/x/credentials"], print)
        out[name] = "created"
    except SensorUnavailable as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


@requires_root
def test_unprivileged_explicit_and_auto_say_what_is_missing() -> None:
    result = fan_run_unprivileged(SELECT_AS_NOBODY)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["fanotify"].startswith("fanotify needs root (CAP_SYS_ADMIN)")
    assert out["fanotify-notify"].startswith("fanotify-notify needs root (CAP_SYS_ADMIN)")
    assert out["auto"].startswith("no sensor can run on this host")
    for name in ("fanotify:", "audit:", "fanotify-notify:"):
        assert name in out["auto"]
