"""Fixtures and helpers shared by the eBPF sensor tests (registered as a plugin by tests/conftest.py).

The BPF object is a build product: `ebpf_object` runs `make -C agent/sensors/bpf` once per session
(a no-op when it is up to date, a rebuild when the C source changed, so a stale object is never
tested). Missing build tools fail the tests with the apt line that installs them.
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.events.model import ReadEvent
from tests.support.paths import REPO_ROOT

BPF_DIR = REPO_ROOT / "agent" / "sensors" / "bpf"
BUILD_TOOLS = "apt-get install -y clang llvm libbpf-dev bpftool"


@pytest.fixture(scope="session")
def ebpf_object() -> Path:
    missing = [tool for tool in ("make", "clang") if shutil.which(tool) is None]
    if shutil.which("bpftool") is None and not Path("/usr/sbin/bpftool").exists():
        missing.append("bpftool")
    if missing:
        pytest.fail(f"cannot build the BPF object: {', '.join(missing)} missing ({BUILD_TOOLS})")
    result = subprocess.run(["make", "-s", "-C", str(BPF_DIR)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"make -C agent/sensors/bpf failed:\n{result.stdout}\n{result.stderr}")
    return BPF_DIR / "tripkey.bpf.o"


@pytest.fixture
def ebpf_sensor_factory(ebpf_object: Path) -> Iterator[Callable[..., object]]:
    """Start EbpfSensors (stopped at teardown, even when a test fails)."""
    from agent.sensors._ebpf import EbpfSensor

    started: list[EbpfSensor] = []
    gc.freeze()  # as the agent's service does: no full collection pauses the poll thread mid-test

    def make(paths: list[Path], callback: Callable[[ReadEvent], None], **options: object) -> EbpfSensor:
        sensor = EbpfSensor([str(p) for p in paths], callback, **options)  # type: ignore[arg-type]
        started.append(sensor)
        sensor.start()
        return sensor

    yield make
    for sensor in started:
        sensor.stop()
    gc.unfreeze()


@pytest.fixture(scope="session")
def iouring_open() -> Iterator[Path]:
    """tests/data/ebpf_iouring_open.c, compiled (opens a file through io_uring)."""
    compiler = shutil.which("cc") or shutil.which("clang")
    if compiler is None:
        pytest.fail("no C compiler to build the io_uring helper (apt-get install -y gcc)")
    workdir = Path(tempfile.mkdtemp(prefix="tripkey-iouring-"))
    binary = workdir / "ebpf_iouring_open"
    source = REPO_ROOT / "tests" / "data" / "ebpf_iouring_open.c"
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    binary.chmod(0o755)
    workdir.chmod(0o755)
    try:
        yield binary
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def read_with(argv: list[str]) -> int:
    """Run a reader to completion (it must succeed); its pid."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return proc.pid
