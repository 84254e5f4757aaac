"""docs/issuer.example.toml documents every issuer setting with its default: keep it loadable and true."""

from __future__ import annotations

import tomllib
from pathlib import Path

from issuer.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "issuer.example.toml"


def test_example_loads_and_states_the_defaults(tmp_path: Path) -> None:
    loaded = load_settings(EXAMPLE, env={})
    defaults = Settings(data_dir=loaded.data_dir)
    assert loaded == defaults


def test_every_setting_is_documented() -> None:
    text = EXAMPLE.read_text()
    commented = [line.lstrip("# ") for line in text.splitlines() if line.startswith("# ")]
    documented = (
        set(tomllib.loads(text))
        | {line.split(" ")[0] for line in commented if " = " in line}
        | {line.strip("[] ") for line in commented if line.startswith("[[")}
    )
    missing = set(Settings.model_fields) - documented
    assert not missing, f"settings missing from {EXAMPLE.name}: {sorted(missing)}"


def test_the_commented_sink_examples_build(tmp_path: Path) -> None:
    """Uncommented, the example [[sinks]] blocks are valid sink configs (the CA file made real)."""
    from issuer.alerts.sinks import build_sinks

    text = EXAMPLE.read_text()
    block = text[text.index("# [[sinks]]") :]
    lines = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    ca = tmp_path / "relay-ca.pem"
    ca.write_text("not read until delivery\n")
    sinks_toml = "\n".join(lines).replace("/etc/ssl/relay-ca.pem", str(ca))
    sinks = build_sinks(tomllib.loads(sinks_toml)["sinks"])
    assert sorted(s.type for s in sinks) == ["jsonl", "pagerduty", "slack", "smtp", "webhook"]
