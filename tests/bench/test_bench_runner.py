"""The bench runner (`python -m bench`): discovery, tables, JSON, failures. Never runs a real bench."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import types
from typing import Any

import pytest

from bench import __main__ as runner
from tests.support.paths import REPO_ROOT

REAL_MODULES = [
    "audit",
    "bounds",
    "credfile",
    "eslogger",
    "hostile",
    "issuer",
    "provenance",
    "readlog",
    "sensors",
]
ROWS = [
    {"case": "small", "count": 1, "median_ms": 1.234},
    {"case": "a much longer case", "count": 200, "median_ms": None, "note": "only here"},
]


def _fake_module(name: str, rows: list[dict[str, Any]] | Exception, title: str | None = None) -> Any:
    module = types.ModuleType(f"bench.bench_{name}")

    def run() -> list[dict[str, Any]]:
        if isinstance(rows, Exception):
            raise rows
        return rows

    module.run = run  # type: ignore[attr-defined]
    if title:
        module.TITLE = title  # type: ignore[attr-defined]
    return module


@pytest.fixture
def fake_benches(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Replace discovery with fake bench modules: `fake_benches(name=rows_or_exception, ...)`."""

    def install(**modules: Any) -> None:
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, f"bench.bench_{name}", module)
        monkeypatch.setattr(runner, "discover", lambda: sorted(modules))

    return install


def test_discover_finds_every_bench_module() -> None:
    assert runner.discover() == sorted(runner.discover())
    assert set(REAL_MODULES) <= set(runner.discover())
    assert "__main__" not in runner.discover() and "" not in runner.discover()


@pytest.mark.parametrize("name", REAL_MODULES)
def test_real_bench_module_exposes_run_callable_without_arguments(name: str) -> None:
    module = importlib.import_module(f"bench.bench_{name}")
    assert callable(module.run)
    inspect.signature(module.run).bind()  # every parameter has a default: the runner passes none
    assert isinstance(getattr(module, "TITLE", name), str)
    assert module.__doc__ and module.__doc__.strip(), "a bench says what it measures"


def test_main_prints_a_table_for_a_fake_module(fake_benches: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake_benches(tiny=_fake_module("tiny", ROWS, title="tiny bench"))
    assert runner.main([]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].startswith("== tiny bench (") and lines[0].endswith(" s)")
    header, rule, first, second = lines[1:]
    assert header.split() == ["case", "count", "median_ms", "note"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert first.split() == ["small", "1", "1.23", "-"]  # floats to 2 places, missing cells "-"
    assert second.split() == ["a", "much", "longer", "case", "200", "-", "only", "here"]
    # numbers are right-aligned under their header, text left-aligned
    assert first.index("1.23") + len("1.23") == header.index("median_ms") + len("median_ms")
    assert first.index("small") == header.index("case") == 0


def test_main_runs_only_the_named_modules(fake_benches: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake_benches(one=_fake_module("one", [{"x": 1}]), two=_fake_module("two", [{"y": 2}]))
    assert runner.main(["two"]) == 0
    out = capsys.readouterr().out
    assert "== two (" in out and "== one" not in out


def test_main_json_output(fake_benches: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake_benches(tiny=_fake_module("tiny", ROWS))
    assert runner.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"tiny": ROWS}


def test_a_failing_bench_is_reported_and_does_not_hide_the_others(
    fake_benches: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_benches(
        broken=_fake_module("broken", RuntimeError("moto did not start")),
        good=_fake_module("good", [{"value": 7}]),
    )
    assert runner.main([]) == 1
    captured = capsys.readouterr()
    assert "bench broken failed: RuntimeError: moto did not start" in captured.err
    assert "== good (" in captured.out and "value" in captured.out


def test_unknown_module_name_is_an_error(fake_benches: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake_benches(tiny=_fake_module("tiny", ROWS))
    with pytest.raises(SystemExit) as exc:
        runner.main(["nosuch"])
    assert exc.value.code == 2
    assert "unknown bench module(s) nosuch; available: tiny" in capsys.readouterr().err


def test_format_table_edge_cases() -> None:
    assert runner.format_table([]) == "(no rows)"
    table = runner.format_table([{"a": 1}, {"b": "text"}])
    assert table.splitlines()[0].split() == ["a", "b"]
    assert table.splitlines()[2].split() == ["1", "-"]
    assert table.splitlines()[3].split() == ["-", "text"]


def test_python_dash_m_bench_rejects_unknown_names_without_running_anything() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "no-such-bench"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown bench module(s) no-such-bench" in result.stderr
    assert "available: audit" in result.stderr
    assert result.stdout == ""
