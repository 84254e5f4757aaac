"""Reader provenance (agent/events/probe.py) on this machine's real files: owner, writability of the
file and every directory above it, user-writable places, the dpkg database, SHA-256 with its cache
and bounds, and the hostile cases (a FIFO planted as the executable, a deleted executable, a file
system that never answers)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.events.model import ReadEvent
from agent.events.packages import DpkgDb, spellings
from agent.events.probe import ProvenanceProbe, argv0_leads_to, user_place
from agent.events.probe_deadline import BoundedProbe
from agent.events.provenance import ReaderProvenance
from tests.support.paths import requires_root

NOBODY = 65534
HAS_DPKG = Path("/var/lib/dpkg/info/coreutils.list").exists()
requires_dpkg = pytest.mark.skipif(not HAS_DPKG, reason="needs a Debian system (dpkg database)")


def read_event(exe: str, *argv: str, pid: int = 1, cwd: str = "/") -> ReadEvent:
    return ReadEvent(
        time=dt.datetime.now(dt.UTC), path="/x", pid=pid, sensor="test", exe=exe, cmdline=argv, cwd=cwd
    )


@pytest.fixture
def probe() -> ProvenanceProbe:
    return ProvenanceProbe(packages=DpkgDb() if HAS_DPKG else None)


@pytest.fixture
def scratch() -> object:
    """A directory under /tmp (pytest's tmp_path lies under root's home, which is not /tmp)."""
    path = Path(f"/tmp/tripkey-prov-{os.getpid()}-{time.monotonic_ns()}")
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@requires_dpkg
def test_a_package_file_is_owned_verified_and_hashed(probe: ProvenanceProbe) -> None:
    prov = probe.file("/usr/bin/cat")
    assert (prov.uid, prov.owner, prov.user_writable, prov.user_place) == (0, "root", False, None)
    assert (prov.package, prov.package_db, prov.package_verified) == ("coreutils", "dpkg", True)
    assert prov.sha256 == hashlib.sha256(Path("/usr/bin/cat").read_bytes()).hexdigest()
    assert prov.root_controlled()


def test_merged_usr_paths_are_looked_up_in_both_spellings() -> None:
    # Debian 12 lists /bin/cat; the executable is /usr/bin/cat (dpkg -S misses it).
    assert spellings("/usr/bin/cat") == ("/usr/bin/cat", "/bin/cat")
    assert spellings("/sbin/ip") == ("/sbin/ip", "/usr/sbin/ip")
    assert spellings("/opt/x/bin/y") == ("/opt/x/bin/y",)


@requires_root
def test_a_copy_under_a_users_directory_in_tmp_is_user_writable(
    probe: ProvenanceProbe, scratch: Path
) -> None:
    home = scratch / "x"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    fake = home / "trufflehog"
    shutil.copy2("/usr/bin/cat", fake)  # root-owned file, but its directory is nobody's
    prov = probe.file(str(fake))
    assert prov.uid == 0 and prov.user_writable is True
    assert prov.writable_via == f"{home}: owner nobody"
    assert prov.user_place == "/tmp" and prov.package is None
    assert prov.sha256 == hashlib.sha256(fake.read_bytes()).hexdigest()  # same bytes as cat...
    if HAS_DPKG:
        assert prov.package_db == "dpkg"  # ...but no package owns this path


def test_a_root_directory_in_sticky_tmp_is_not_writable_but_still_in_tmp(
    probe: ProvenanceProbe, scratch: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root-owned files")
    tool = scratch / "tool"
    shutil.copy2("/usr/bin/true", tool)
    prov = probe.file(str(tool))
    # /tmp is world-writable with the sticky bit: nobody else can replace root's entry there.
    assert prov.user_writable is False and prov.user_place == "/tmp"


def test_a_world_writable_directory_without_sticky_bit_is_writable_by_everyone(
    probe: ProvenanceProbe, scratch: Path
) -> None:
    open_dir = scratch / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    tool = open_dir / "tool"
    shutil.copy2("/usr/bin/true", tool)
    prov = probe.file(str(tool))
    assert prov.user_writable is True
    if os.geteuid() == 0:
        assert prov.writable_via == f"{open_dir}: writable by everyone"


def test_user_places() -> None:
    assert user_place("/home/alice/bin/aws") == "home"
    assert user_place("/srv/u/tool", homes=("/srv/u/",)) == "home"
    assert user_place("/dev/shm/x") == "/dev/shm" and user_place("/var/tmp/x") == "/var/tmp"
    assert user_place("/opt/x/Downloads/trufflehog") == "Downloads"
    assert user_place("/run/user/1000/x") == "/run/user"
    assert user_place("/private/tmp/x") == "/tmp"  # macOS spells /tmp so
    assert user_place("C:\\Users\\bob\\Downloads\\gitleaks.exe") == "Downloads"
    assert user_place("C:\\Users\\bob\\AppData\\Local\\Temp\\x.exe") == "temp"
    assert user_place("C:\\Program Files\\Amazon\\AWSCLIV2\\aws.exe") is None
    assert user_place("/usr/bin/cat") is None and user_place("/root/.pyenv/bin/python") is None


def test_a_hot_reader_is_hashed_once_and_again_after_it_changes(
    probe: ProvenanceProbe, scratch: Path
) -> None:
    tool = scratch / "tool"
    tool.write_bytes(b"#!/bin/sh\necho one\n")
    first = probe.file(str(tool))
    for _ in range(50):
        assert probe.file(str(tool)).sha256 == first.sha256
    assert probe.hashed == 1
    tool.write_bytes(b"#!/bin/sh\necho two\n")  # a new mtime/ctime: a new version of the file
    assert probe.file(str(tool)).sha256 == hashlib.sha256(b"#!/bin/sh\necho two\n").hexdigest()
    assert probe.hashed == 2


def test_big_files_are_not_hashed_and_that_is_said(scratch: Path) -> None:
    big = scratch / "big"
    big.write_bytes(b"x" * (3 * 1024 * 1024))
    probe = ProvenanceProbe(max_hash_bytes=2 * 1024 * 1024)
    prov = probe.file(str(big))
    assert prov.sha256 is None and prov.hash_error == "larger than 2 MiB; not hashed"
    assert probe.hashed == 0


def test_a_slow_hash_is_abandoned_once_and_not_retried(scratch: Path) -> None:
    big = scratch / "big"
    big.write_bytes(b"y" * (4 * 1024 * 1024))
    ticks = iter(range(1_000_000))
    probe = ProvenanceProbe(hash_seconds=1.5, clock=lambda: float(next(ticks)))  # 1 s per chunk
    prov = probe.file(str(big))
    assert prov.sha256 is None and prov.hash_error == "hashing took longer than 1.5 s; not hashed"
    assert probe.file(str(big)).hash_error == prov.hash_error
    assert probe.hashed == 1  # the failure is remembered for this version of the file


def test_a_fifo_planted_as_the_executable_cannot_block_the_probe(
    probe: ProvenanceProbe, scratch: Path
) -> None:
    fifo = scratch / "trufflehog"
    os.mkfifo(fifo)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(probe.file(str(fifo))), daemon=True)
    worker.start()
    worker.join(5)
    assert done, "opening a FIFO blocked the probe"
    assert done[0].error == "not a regular file"  # type: ignore[attr-defined]


def test_a_symlinked_script_is_examined_at_its_target(probe: ProvenanceProbe, scratch: Path) -> None:
    target = scratch / "real-aws"
    target.write_text("print('hi')\n")
    link = scratch / "aws"
    link.symlink_to(target)
    prov = probe.file(str(link))
    assert prov.error is None and prov.path == str(link)
    assert prov.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()


def test_a_planted_file_given_as_a_script_is_never_opened(scratch: Path) -> None:
    planted = scratch / "credentials"
    planted.write_text("[prod-backup]\n")
    probe = ProvenanceProbe(skip_paths=[str(planted)])
    reader = probe.reader(read_event("/usr/bin/python3.11", "python3", str(planted)))
    assert reader.script is not None and reader.script.sha256 is None
    assert reader.script.error == "a planted canary file; never opened by the agent"


def test_a_deleted_executable_is_examined_through_the_running_image(
    probe: ProvenanceProbe, scratch: Path
) -> None:
    tool = scratch / "sleeper"
    shutil.copy2("/usr/bin/sleep", tool)
    proc = subprocess.Popen([str(tool), "30"])
    try:
        time.sleep(0.2)
        tool.unlink()
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        assert exe.endswith(" (deleted)")
        prov = probe.file(exe, pid=proc.pid)
        assert prov.replaced is True and prov.user_place == "/tmp"
        assert prov.sha256 == hashlib.sha256(Path("/usr/bin/sleep").read_bytes()).hexdigest()
    finally:
        proc.kill()
        proc.wait()


def test_interpreters_are_examined_with_their_script(probe: ProvenanceProbe, scratch: Path) -> None:
    script = scratch / "aws"
    script.write_text("import sys\n")
    reader = probe.reader(
        read_event("/usr/bin/python3.11", "python3", "-u", "aws", "s3", "ls", cwd=str(scratch))
    )
    assert reader.script_kind == "file" and reader.script_name == "aws"
    assert reader.script is not None and reader.script.path == str(script)
    inline = probe.reader(read_event("/usr/bin/python3.11", "python3", "-c", "import boto3"))
    assert inline.script_kind == "inline" and inline.script is None
    (scratch / "awscli").mkdir()
    (scratch / "awscli" / "__main__.py").write_text("")
    module = probe.reader(read_event("/usr/bin/python3.11", "python3", "-m", "awscli", cwd=str(scratch)))
    assert module.script is not None and module.script.path == str(scratch / "awscli" / "__main__.py")
    missing = probe.reader(read_event("/usr/bin/python3.11", "python3", "-m", "awscli", cwd="/"))
    assert missing.script is not None and missing.script.error == "module not found on disk"


def test_argv0_must_lead_to_the_executable() -> None:
    assert argv0_leads_to("cat", "/usr/bin/cat", "/") is True  # a PATH lookup
    assert argv0_leads_to("/bin/cat", "/usr/bin/cat", "/") is True  # merged /usr symlink
    assert argv0_leads_to("trufflehog", "/usr/bin/cat", "/") is False  # exec -a trufflehog cat


def test_a_file_system_that_never_answers_costs_one_worker_never_the_read() -> None:
    release = threading.Event()

    class HungProbe(ProvenanceProbe):
        def reader(self, event: ReadEvent) -> ReaderProvenance:
            release.wait(30)  # a read from a FUSE mount whose daemon stopped
            return super().reader(event)

    bounded = BoundedProbe(HungProbe(), timeout=0.3, max_stuck=2)
    started = time.monotonic()
    first = bounded.reader(read_event("/fuse/stuck", "stuck"))
    assert first.error == "provenance not established within 0.3 s"
    second = bounded.reader(read_event("/fuse/stuck", "stuck"))
    assert second.error == "provenance not established within 0.3 s"
    # Two workers hang: further reads skip the probe at once (and say why) instead of waiting.
    third = bounded.reader(read_event("/usr/bin/cat", "cat"))
    assert third.error and "2 probes never returned" in third.error
    assert time.monotonic() - started < 3
    release.set()  # the file system answers again: the abandoned workers come back and exit
    deadline = time.monotonic() + 5
    while bounded.stuck and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bounded.stuck == 0
    assert bounded.reader(read_event("/usr/bin/cat", "cat")).exe is not None
    bounded.close()
