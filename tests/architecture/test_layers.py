"""The layer rules of README's architecture section, checked on the real import graph.

Each rule is also fed a graph that breaks it, so a rule that could never fail would fail here.
"""

from __future__ import annotations

import pytest

from tests.architecture.imports import Rule, build_graph, cycles, within
from tests.support.paths import REPO_ROOT

PACKAGES = ("agent", "issuer", "server_api_client", "demo")
WEB = ("fastapi", "starlette", "uvicorn")
# The issuer's HTTP layer and its entry points; everything else of the issuer is domain code.
ISSUER_HTTP = ("issuer.api", "issuer.cli", "issuer.__main__")
# The agent's layers, lowest first: a module may import its own layer and the ones below.
AGENT_TOP = (
    "agent.__main__",
    "agent.cli",
    "agent.service",
    "agent.status",
    "agent.trigger",
    "agent.selfreport",
    "agent.tray",
    "agent.runtime",
)

RULES = (
    Rule(
        "the agent imports nothing of the issuer or the demo",
        lambda s, d: within(s, "agent") and within(d, "issuer", "demo"),
    ),
    Rule(
        "server_api_client imports neither the agent nor the issuer",
        lambda s, d: within(s, "server_api_client") and within(d, "agent", "issuer"),
    ),
    Rule(
        "the demo is a client: it imports neither the agent nor the issuer",
        lambda s, d: within(s, "demo") and within(d, "agent", "issuer"),
    ),
    Rule(
        "issuer domain code imports no web framework",
        lambda s, d: within(s, "issuer") and not within(s, *ISSUER_HTTP) and within(d, *WEB),
    ),
    Rule(
        "issuer domain code never imports the HTTP layer",
        lambda s, d: within(s, "issuer") and not within(s, *ISSUER_HTTP) and within(d, "issuer.api"),
    ),
    Rule(
        "the credentials-file editor stands alone (it may use agent.osflags only)",
        lambda s, d: (
            within(s, "agent.credfile")
            and within(d, "agent")
            and not within(d, "agent.credfile", "agent.osflags")
        ),
    ),
    Rule(
        "read events depend only on themselves, the clock and the OS flags",
        lambda s, d: (
            within(s, "agent.events")
            and within(d, "agent")
            and not within(d, "agent.events", "agent.clock", "agent.osflags")
        ),
    ),
    Rule(
        "sensors depend only on events, the OS flags and the clock",
        lambda s, d: (
            within(s, "agent.sensors")
            and within(d, "agent")
            and not within(d, "agent.sensors", "agent.events", "agent.osflags", "agent.clock")
        ),
    ),
    Rule(
        "nothing below the entry points imports them",
        lambda s, d: within(s, "agent") and not within(s, *AGENT_TOP) and within(d, *AGENT_TOP),
    ),
)


@pytest.fixture(scope="module")
def graph() -> dict[str, frozenset[str]]:
    return build_graph(REPO_ROOT, PACKAGES)


def test_graph_sees_the_project(graph: dict[str, frozenset[str]]) -> None:
    # A graph that lost its edges would pass every rule: check a few that must be there.
    assert "agent.events.model" in graph["agent.sensors.base"]
    assert "fastapi" in graph["issuer.api.app"]
    assert "server_api_client.client" in graph["demo.run"]
    assert len(graph) > 100


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_holds(rule: Rule, graph: dict[str, frozenset[str]]) -> None:
    assert rule.violations(graph) == []


def test_no_import_cycles(graph: dict[str, frozenset[str]]) -> None:
    assert cycles(graph) == []


BAD_EDGES = {
    "the agent imports nothing of the issuer or the demo": ("agent.planting.planter", "issuer.registry"),
    "server_api_client imports neither the agent nor the issuer": ("server_api_client.cli", "issuer.api.app"),
    "the demo is a client: it imports neither the agent nor the issuer": ("demo.run", "agent.cli"),
    "issuer domain code imports no web framework": ("issuer.registry", "fastapi"),
    "issuer domain code never imports the HTTP layer": (
        "issuer.detection.ingest_secret",
        "issuer.api.routers.ingest",
    ),
    "the credentials-file editor stands alone (it may use agent.osflags only)": (
        "agent.credfile.edit",
        "agent.config",
    ),
    "read events depend only on themselves, the clock and the OS flags": (
        "agent.events.readlog",
        "agent.sensors.base",
    ),
    "sensors depend only on events, the OS flags and the clock": (
        "agent.sensors._fanotify",
        "agent.reporting.spool",
    ),
    "nothing below the entry points imports them": ("agent.planting.planter", "agent.service"),
}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_fails_on_a_violation(rule: Rule) -> None:
    src, dst = BAD_EDGES[rule.name]
    assert rule.violations({src: frozenset({dst})}) == [(src, dst)]
    assert rule.violations({src: frozenset()}) == []


def test_cycle_detection_finds_direct_and_long_cycles() -> None:
    bad = {
        "a": frozenset({"b"}),
        "b": frozenset({"a"}),
        "c": frozenset({"d"}),
        "d": frozenset({"e"}),
        "e": frozenset({"c", "fastapi"}),
        "f": frozenset({"a"}),
    }
    assert cycles(bad) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_graph_builder_resolves_relative_lazy_and_type_checking_imports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import top\n"
        "if TYPE_CHECKING:\n    from pkg import typing_only\n"
        "def f():\n    import fastapi.responses\n"
    )
    (pkg / "top.py").write_text("from pkg.sub.leaf import f\n")
    (pkg / "typing_only.py").write_text("")
    graph = build_graph(tmp_path, ["pkg"])
    assert graph["pkg.sub"] == frozenset({"pkg.sub.leaf"})
    assert graph["pkg.sub.leaf"] == frozenset({"typing", "pkg.top", "fastapi"})
    assert graph["pkg.top"] == frozenset({"pkg.sub.leaf"})
    assert cycles(graph) == [["pkg.sub.leaf", "pkg.top"]]
