"""deb/rpm build scripts (real dpkg-deb on a stand-in payload) and the PyInstaller spec."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.packaging import LINUX, shell_syntax_ok
from tests.support.paths import REPO_ROOT, is_root

SPEC = LINUX / "tripkey-agent.spec"


def fake_bundle(tmp_path: Path) -> Path:
    """What PyInstaller's one-directory build looks like: an executable and its _internal dir."""
    bundle = tmp_path / "dist" / "tripkey-agent"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "_internal" / "base_library.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    exe = bundle / "tripkey-agent"
    exe.write_text("#!/bin/sh\necho 'tripkey-agent 9.9.9'\n")
    exe.chmod(0o755)
    return bundle


@pytest.mark.parametrize("script", ["build-deb.sh", "build-rpm.sh"])
def test_build_scripts_parse(script: str) -> None:
    result = shell_syntax_ok(LINUX / script)
    assert result.returncode == 0, result.stderr
    assert os.access(LINUX / script, os.X_OK)


def test_build_deb_refuses_a_missing_bundle(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(LINUX / "build-deb.sh"), str(tmp_path / "nothing"), "1.0", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "run pyinstaller" in result.stderr


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_build_deb_packages_the_bundle_unit_and_scripts(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [str(LINUX / "build-deb.sh"), str(bundle), "1.2.3", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DEB_ARCH": "amd64"},
    )
    assert result.returncode == 0, result.stderr
    deb = Path(result.stdout.strip())
    assert deb == out / "tripkey-agent_1.2.3_amd64.deb" and deb.exists()

    def field(name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert (field("Package"), field("Version"), field("Architecture")) == ("tripkey-agent", "1.2.3", "amd64")
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./opt/tripkey-agent/_internal/base_library.zip" in listing
    assert "./usr/bin/tripkey-agent -> /opt/tripkey-agent/tripkey-agent" in listing
    assert "./lib/systemd/system/tripkey-agent.service" in listing
    assert "./etc/xdg/autostart/tripkey-tray.desktop" in listing
    assert "./usr/share/doc/tripkey-agent/agent.toml.example" in listing
    assert "./etc/tripkey/agent.toml" not in listing  # the config (with its token) is never shipped
    for line in listing.splitlines():
        assert " root/root " in line, line  # --root-owner-group: no build user's ids leak in

    unpacked = tmp_path / "unpacked"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(unpacked)], check=True)
    assert (unpacked / "lib/systemd/system/tripkey-agent.service").read_bytes() == (
        LINUX / "tripkey-agent.service"
    ).read_bytes()
    assert (
        subprocess.run(
            [str(unpacked / "opt/tripkey-agent/tripkey-agent")], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "tripkey-agent 9.9.9"
    )
    for script in ("postinst", "prerm", "postrm"):
        path = unpacked / "DEBIAN" / script
        assert os.access(path, os.X_OK), script
        assert shell_syntax_ok(path).returncode == 0, script
    postrm = (unpacked / "DEBIAN" / "postrm").read_text()
    assert "rm -rf /var/lib/tripkey" in postrm and 'if [ "$1" = purge ]' in postrm


@pytest.mark.skipif(
    shutil.which("rpmbuild") is None, reason="rpmbuild not installed (Debian: apt-get install rpm)"
)
def test_build_rpm(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [str(LINUX / "build-rpm.sh"), str(bundle), "1.2.3", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [rpm] = list(out.glob("tripkey-agent-1.2.3-1.*.rpm"))
    listing = subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True, check=True).stdout
    assert "/usr/lib/systemd/system/tripkey-agent.service" in listing
    assert "/etc/xdg/autostart/tripkey-tray.desktop" in listing
    assert "/opt/tripkey-agent/tripkey-agent" in listing


def test_spec_builds_the_agent_entry_point_without_the_issuer_stack() -> None:
    text = SPEC.read_text()
    tree = ast.parse(text)  # a spec is Python: it must at least parse
    calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    analysis = calls["Analysis"]
    script = ast.unparse(analysis.args[0])
    assert "'agent', '__main__.py'" in script
    assert (REPO_ROOT / "agent" / "__main__.py").exists()
    excludes = ast.literal_eval(next(k.value for k in analysis.keywords if k.arg == "excludes"))
    assert {"issuer", "fastapi", "sqlalchemy", "boto3"} <= set(excludes)
    assert 'collect_submodules("agent")' in text  # lazily imported sensors must be bundled
    assert 'name="tripkey-agent"' in text


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("PyInstaller") is None,
    reason="PyInstaller not installed (pip install -e '.[package]')",
)
def test_pyinstaller_builds_a_working_agent_and_a_deb(tmp_path: Path) -> None:
    dist, work = tmp_path / "dist", tmp_path / "build"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(dist),
            "--workpath",
            str(work),
            str(SPEC),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    exe = dist / "tripkey-agent" / "tripkey-agent"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip().startswith("tripkey-agent ")
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "pyi-archive_viewer"), "-r", "-b", str(exe)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    modules = {line.strip() for line in listing.splitlines()}
    assert {
        "agent.sensors._ebpf",
        "agent.sensors._libbpf",
        "agent.sensors._fanotify",
        "agent.sensors._audit",
        "agent.sensors._eslogger",
        "agent.sensors._eventlog",
        "agent.cli",
    } <= modules
    assert not {"fastapi", "sqlalchemy", "boto3", "issuer"} & modules
    # The eBPF sensor travels with its object and its own libbpf, and the bundled agent loads it.
    bundled_bpf = next(dist.glob("tripkey-agent/**/agent/sensors/bpf"))
    assert (bundled_bpf / "tripkey.bpf.o").is_file() and (bundled_bpf / "libbpf.so.1").is_file()
    if is_root():
        config = tmp_path / "agent.toml"
        config.write_text(
            f'state_dir = "{tmp_path / "state"}"\nall_users = false\nsensor = "ebpf"\n'
            f'[[target]]\npath = "{tmp_path / "t" / "credentials"}"\nowner = "root"\n'
        )
        live = subprocess.run(
            [str(exe), "sensors", "--live", "--json", "--config", str(config)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert live.returncode == 0, live.stdout + live.stderr
        report = json.loads(live.stdout)
        assert report["pick"] == "ebpf" and report["live"]["ok"] and report["live"]["sensor"] == "ebpf"
    if shutil.which("dpkg-deb"):
        command = [str(LINUX / "build-deb.sh"), str(dist / "tripkey-agent"), "0.0.1", str(tmp_path)]
        deb = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout.strip()
        assert Path(deb).stat().st_size > 1_000_000
        contents = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
        assert "agent/sensors/bpf/tripkey.bpf.o" in contents and "agent/sensors/bpf/libbpf.so.1" in contents
