"""agent.credfile.awsconfig: the optional region in ~/.aws/config, checked with botocore's profile mapping."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import botocore.configloader
import pytest
from hypothesis import HealthCheck, given, settings

from agent.credfile.awsconfig import (
    config_section_name,
    inspect_region_bytes,
    inspect_region_file,
    plant_region_bytes,
    plant_region_file,
    unplant_region_bytes,
    unplant_region_file,
)
from agent.credfile.edit import (
    ConflictError,
    DuplicateSectionError,
    ParseError,
    SectionStatus,
    UnsafePathError,
)
from tests.support.credfiles import BOM, Generated, credentials_files
from tests.support.paths import requires_root

USER, GROUP = 12345, 12346


def profiles(tmp_path: Path, data: bytes) -> dict[str, dict[str, object]]:
    path = tmp_path / "parsed-config"
    path.write_bytes(data)
    return botocore.configloader.load_config(str(path))["profiles"]


@pytest.mark.parametrize(
    ("original", "planted"),
    [
        (b"", b"[profile canary]\nregion = eu-north-1\n"),
        (
            b"[default]\nregion = us-east-1",
            b"[default]\nregion = us-east-1\n[profile canary]\nregion = eu-north-1",
        ),
        (
            b"[profile a]\r\noutput = json\r\n",
            b"[profile a]\r\noutput = json\r\n[profile canary]\r\nregion = eu-north-1\r\n",
        ),
        (BOM + b"# c\n", BOM + b"# c\n[profile canary]\nregion = eu-north-1\n"),
    ],
)
def test_plant_region_appends_a_profile_section_and_unplant_restores(
    tmp_path: Path, original: bytes, planted: bytes
) -> None:
    assert plant_region_bytes(original, "canary", "eu-north-1") == planted
    assert unplant_region_bytes(planted, "canary", "eu-north-1") == original
    if not original.startswith(BOM):
        assert profiles(tmp_path, planted)["canary"] == {"region": "eu-north-1"}
    assert plant_region_bytes(planted, "canary", "eu-north-1") == planted
    assert inspect_region_bytes(planted, "canary", "eu-north-1").status is SectionStatus.OURS


def test_default_is_special_in_the_config_file(tmp_path: Path) -> None:
    assert config_section_name("default") == "default"
    assert config_section_name("canary") == "profile canary"
    with pytest.raises(ValueError, match="hijack"):
        plant_region_bytes(b"", "default", "eu-north-1")
    planted = plant_region_bytes(b"[profile x]\nregion=a\n", "default", "eu-north-1", force_default=True)
    assert planted.endswith(b"[default]\nregion = eu-north-1\n")
    assert profiles(tmp_path, planted)["default"] == {"region": "eu-north-1"}
    with pytest.raises(ConflictError):  # [profile default] is the default profile for botocore too
        plant_region_bytes(b"[profile default]\nregion=a\n", "default", "eu-north-1", force_default=True)


@pytest.mark.parametrize(
    "existing",
    [
        b"[profile canary]\nrole_arn = arn:aws:iam::1:role/x\n",
        b"[profile  canary ]\nregion = eu-north-1\n",  # shlex: same profile, not our exact header
        b'[profile "canary"]\nregion = eu-north-1\n',
        b"[profile canary]\nregion = us-west-2\n",  # not the region we plant
        b"[profile canary]\nregion = eu-north-1\noutput = json\n",
    ],
)
def test_a_config_profile_of_that_name_that_is_not_exactly_ours_is_a_conflict(
    tmp_path: Path, existing: bytes
) -> None:
    assert "canary" in profiles(tmp_path, existing)
    with pytest.raises(ConflictError):
        plant_region_bytes(existing, "canary", "eu-north-1")
    assert unplant_region_bytes(existing, "canary", "eu-north-1") == existing
    assert inspect_region_bytes(existing, "canary", "eu-north-1").status is SectionStatus.FOREIGN


def test_two_sections_naming_the_profile_are_reported_and_refused() -> None:
    data = b"[profile canary]\nregion = a\n[profile  canary]\nregion = b\n"
    assert inspect_region_bytes(data, "canary").status is SectionStatus.DUPLICATE
    with pytest.raises(ConflictError):
        plant_region_bytes(data, "canary", "a")
    assert unplant_region_bytes(data, "canary", "a") == data


def test_unrelated_sections_named_like_the_profile_are_not_ours(tmp_path: Path) -> None:
    data = b"[canary]\nregion = x\n[sso-session canary]\nsso_region = y\n[profile canary extra]\nz=1\n"
    planted = plant_region_bytes(data, "canary", "eu-north-1")
    assert planted == data + b"[profile canary]\nregion = eu-north-1\n"
    assert profiles(tmp_path, planted)["canary"] == {"region": "eu-north-1"}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"[profile canary]\nregion = eu-north-1\n[profile canary]\n", DuplicateSectionError),
        (b"region = x\n", ParseError),
        (b"[a]\nx=1\nx=2\n", ParseError),
        (b"[a]\nx=\xff\n", ParseError),
    ],
)
def test_refusals(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        plant_region_bytes(data, "canary", "eu-north-1")


def test_invalid_region_is_rejected() -> None:
    for region in ("", "eu north", "EU-NORTH-1", "a\nb", "x" * 41):
        with pytest.raises(ValueError):
            plant_region_bytes(b"", "canary", region)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gen=credentials_files())
def test_region_plant_then_unplant_restores_any_accepted_file(gen: Generated) -> None:
    try:
        planted = plant_region_bytes(gen.data, "canary", "eu-north-1")
    except (ConflictError, ParseError):
        return
    assert planted.startswith(gen.data) or planted.startswith(gen.data.rstrip(b"\r\n"))
    assert unplant_region_bytes(planted, "canary", "eu-north-1") == gen.data


@requires_root
def test_region_file_is_written_safely_as_the_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, USER, GROUP)
    path = home / ".aws" / "config"
    assert plant_region_file(path, "canary", "eu-north-1", owner_uid=USER, owner_gid=GROUP)
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, GROUP, 0o600)
    assert inspect_region_file(path, "canary", "eu-north-1", owner_uid=USER).status is SectionStatus.OURS
    assert unplant_region_file(path, "canary", "eu-north-1", owner_uid=USER, owner_gid=GROUP)
    assert path.read_bytes() == b""
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError):
        plant_region_file(path, "canary", "eu-north-1", owner_uid=USER, owner_gid=GROUP)
    assert not (tmp_path / "elsewhere").exists()
