"""agent.credfile on hand-written files: exact expected bytes, refusals, and botocore agreeing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import botocore.configloader
import botocore.exceptions
import pytest

from agent.credfile.edit import (
    CanaryCredential,
    ConflictError,
    DuplicateSectionError,
    ParseError,
    SectionStatus,
    inspect_bytes,
    plant_bytes,
    plant_file,
    unplant_bytes,
    unplant_file,
    validate_profile,
)

OLD = CanaryCredential("AKIAOLDOLDOLDOLD0001", "old/secret+0001")
NEW = CanaryCredential("AKIANEWNEWNEWNEW0002", "new/secret+0002")
TOKENED = CanaryCredential("ASIATOKTOKTOKTOK0003", "tok/secret+0003", "FwoGZXIvYXdzEJr//token==")
OWNED = {OLD.access_key_id, NEW.access_key_id, TOKENED.access_key_id}
BLOCK = b"[canary]\naws_access_key_id = AKIANEWNEWNEWNEW0002\naws_secret_access_key = new/secret+0002\n"


def botocore_parse(data: bytes) -> dict[str, dict[str, str]]:
    """botocore's own reading of these bytes (raises botocore's ConfigParseError)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "credentials")
        path.write_bytes(data)
        return botocore.configloader.raw_config_parse(str(path))


def botocore_refuses(data: bytes) -> bool:
    try:
        botocore_parse(data)
    except botocore.exceptions.ConfigParseError:
        return True
    return False


@pytest.mark.parametrize(
    ("original", "planted"),
    [
        (b"", BLOCK),
        (b"[a]\nx=1\n", b"[a]\nx=1\n" + BLOCK),
        # No final newline: the old last line gets one, the new last line has none.
        (b"[a]\nx=1", b"[a]\nx=1\n" + BLOCK[:-1]),
        (b"[a]\r\nx = 1\r\n", b"[a]\r\nx = 1\r\n" + BLOCK.replace(b"\n", b"\r\n")),
        (b"[a]\r\nx = 1", b"[a]\r\nx = 1\r\n" + BLOCK.replace(b"\n", b"\r\n")[:-2]),
        (b"[a]\rx=1\r", b"[a]\rx=1\r" + BLOCK.replace(b"\n", b"\r")),
        # Mixed: each existing line keeps its ending; new lines take the most common one.
        (b"[a]\r\nx=1\n y\r\n# c\r\n", b"[a]\r\nx=1\n y\r\n# c\r\n" + BLOCK.replace(b"\n", b"\r\n")),
        (b"\xef\xbb\xbf[a]\nx=1\n", b"\xef\xbb\xbf[a]\nx=1\n" + BLOCK),
        (b"\xef\xbb\xbf", b"\xef\xbb\xbf" + BLOCK),
        (b"# only a comment", b"# only a comment\n" + BLOCK[:-1]),
        (b"[a]\nx=1\n\n  \n; tail comment \t\n", b"[a]\nx=1\n\n  \n; tail comment \t\n" + BLOCK),
    ],
)
def test_plant_appends_and_unplant_restores_exact_bytes(original: bytes, planted: bytes) -> None:
    result = plant_bytes(original, "canary", NEW, OWNED)
    assert result == planted
    assert unplant_bytes(result, "canary", OWNED) == original
    if not original.startswith(b"\xef\xbb\xbf"):
        assert botocore_parse(result)["canary"] == {
            "aws_access_key_id": NEW.access_key_id,
            "aws_secret_access_key": NEW.secret_access_key,
        }


def test_replace_keeps_position_and_rewrites_only_our_key_lines() -> None:
    original = (
        b"# my creds\r\n[work]\r\naws_access_key_id=AKIAWORK\r\naws_secret_access_key=w\r\n\r\n"
        b"[canary]\r\n  AWS_Access_Key_ID :AKIAOLDOLDOLDOLD0001   \r\n; note\r\n"
        b"  aws_secret_access_key=   old/secret+0001\r\n  region = eu-west-1\r\n\r\n"
        b"# next\r\n[home]\r\nx = 1"
    )
    expected = original.replace(b":AKIAOLDOLDOLDOLD0001   ", b":AKIANEWNEWNEWNEW0002").replace(
        b"=   old/secret+0001", b"=   new/secret+0002"
    )
    assert plant_bytes(original, "canary", NEW, OWNED) == expected
    parsed = botocore_parse(expected)
    assert parsed["canary"]["aws_access_key_id"] == NEW.access_key_id
    assert parsed["canary"]["region"] == "eu-west-1"
    assert parsed["work"] == botocore_parse(original)["work"]


def test_replace_adds_and_removes_the_session_token_next_to_our_keys() -> None:
    original = b"[canary]\naws_access_key_id = AKIAOLDOLDOLDOLD0001\naws_secret_access_key = s\nregion = x\n"
    with_token = plant_bytes(original, "canary", TOKENED, OWNED)
    assert with_token == (
        b"[canary]\naws_access_key_id = ASIATOKTOKTOKTOK0003\naws_secret_access_key = tok/secret+0003\n"
        b"aws_session_token = FwoGZXIvYXdzEJr//token==\nregion = x\n"
    )
    back = plant_bytes(with_token, "canary", NEW, OWNED)
    assert back == original.replace(b"AKIAOLDOLDOLDOLD0001", NEW.access_key_id.encode()).replace(
        b"= s\n", b"= new/secret+0002\n"
    )


def test_replace_removes_a_stale_legacy_token_and_keeps_no_final_newline() -> None:
    original = b"[canary]\naws_access_key_id = AKIAOLDOLDOLDOLD0001\naws_security_token = T\n  more"
    planted = plant_bytes(original, "canary", NEW, OWNED)
    assert planted == (
        b"[canary]\naws_access_key_id = AKIANEWNEWNEWNEW0002\naws_secret_access_key = new/secret+0002"
    )
    assert "aws_security_token" not in botocore_parse(planted)["canary"]


def test_replanting_the_same_credential_changes_nothing() -> None:
    once = plant_bytes(b"[a]\nx=1", "canary", NEW, OWNED)
    assert plant_bytes(once, "canary", NEW, OWNED) == once


def test_section_names_are_case_and_space_sensitive_like_botocore() -> None:
    original = b"[Canary]\naws_access_key_id = AKIAUSER\n[ canary ]\nx=1\n[profile canary]\ny=2\n"
    planted = plant_bytes(original, "canary", NEW, OWNED)
    assert planted == original + BLOCK
    parsed = botocore_parse(planted)
    assert parsed["canary"]["aws_access_key_id"] == NEW.access_key_id
    assert parsed["Canary"] == {"aws_access_key_id": "AKIAUSER"}
    assert set(parsed) == {"Canary", " canary ", "profile canary", "canary"}


def test_header_with_trailing_text_is_the_same_section_as_botocore_sees_it() -> None:
    # configparser's header regex is `\[(.+)\]` matched at the start: "[canary] # x" is [canary].
    original = b"[canary] # mine\naws_access_key_id = AKIAUSER\n"
    assert "canary" in botocore_parse(original)
    with pytest.raises(ConflictError):
        plant_bytes(original, "canary", NEW, OWNED)


def test_unplant_keeps_comments_that_introduce_the_next_section() -> None:
    original = b"[a]\nx=1\n"
    planted = plant_bytes(original, "canary", NEW, OWNED)
    edited = planted + b"\n# my work account\n[work]\nk=v\n"
    assert unplant_bytes(edited, "canary", OWNED) == original + b"\n# my work account\n[work]\nk=v\n"


def test_unplant_leaves_foreign_and_absent_sections_alone() -> None:
    foreign = b"[canary]\naws_access_key_id = AKIAUSERUSERUSER\naws_secret_access_key = s\n"
    assert unplant_bytes(foreign, "canary", OWNED) == foreign
    assert unplant_bytes(b"[a]\nx=1", "canary", OWNED) == b"[a]\nx=1"


SECRET = "s3cr3t-never-in-messages"
REFUSALS = pytest.mark.parametrize(
    ("data", "error", "line"),
    [
        (b"[canary]\naws_access_key_id = AKIAUSER\n", ConflictError, 1),
        (b"[a]\nx=1\n[canary]\nregion = x\n", ConflictError, 3),  # ours? no key id: not provably ours
        (b"[a]\nx=1\n[b]\n[a]\ny=2\n", DuplicateSectionError, 4),
        (b"[canary]\naws_access_key_id = AKIAOLDOLDOLDOLD0001\n[canary]\n", DuplicateSectionError, 3),
        (b"[a]\nx=1\nX = 2\n", ParseError, 3),  # option names are case-insensitive in botocore
        (b"x = 1\n[a]\n", ParseError, 1),
        (b"\n\n  key = value\n", ParseError, 3),
        (b"[a]\nthis is not an option\n", ParseError, 2),
        (b"[a]\nx = caf\xe9\n", ParseError, 2),  # latin-1, not UTF-8
        (b"[a]\r\ny = 1\r\nz = \xff\xfe\r\n", ParseError, 3),
        (b"\x00\x01\x02\xff binary", ParseError, 1),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", ParseError, 1),
        (b"[a]\ns3 =\n  no_equals_here\n", ParseError, 2),  # botocore's nested-value rule
        (b"[DEFAULT]\naws_session_token = T\n", ConflictError, None),  # would leak into our profile
        # would make botocore assume a role / use SSO for our profile instead of its keys
        (b"[DEFAULT]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = a\n[a]\nx=1\n", ConflictError, None),
        (b"[DEFAULT]\nrole_arn = r\nweb_identity_token_file = /t\n", ConflictError, None),
        (b"[DEFAULT]\nsso_start_url = https://sso.example\n", ConflictError, None),
    ],
)


@REFUSALS
def test_refusals_raise_the_right_error_and_botocore_agrees(
    data: bytes, error: type[Exception], line: int | None
) -> None:
    cred = CanaryCredential("AKIANEWNEWNEWNEW0002", SECRET)
    with pytest.raises(error) as info:
        plant_bytes(data, "canary", cred, OWNED)
    assert info.value.line == line
    assert SECRET not in str(info.value)
    if error is not ConflictError:
        assert botocore_refuses(data)
        with pytest.raises(error):
            unplant_bytes(data, "canary", OWNED)


def test_a_bom_file_is_read_as_its_text_and_the_bom_kept() -> None:
    original = b"\xef\xbb\xbf[canary]\naws_access_key_id = AKIAOLDOLDOLDOLD0001\n"
    planted = plant_bytes(original, "canary", NEW, OWNED)
    assert planted.startswith(b"\xef\xbb\xbf[canary]\naws_access_key_id = AKIANEWNEWNEWNEW0002\n")
    # botocore itself rejects every BOM file; without the BOM ours parses.
    assert botocore_refuses(planted)
    assert botocore_parse(planted[3:])["canary"]["aws_access_key_id"] == NEW.access_key_id


@pytest.mark.parametrize(
    "name", ["", "a b", "a]b", "[a", "a\nb", "DEFAULT", "#x", ";x", " x", "x ", "ä", "a" * 129, "x\r"]
)
def test_invalid_profile_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        plant_bytes(b"", name, NEW, OWNED)


def test_default_profile_needs_force_default() -> None:
    with pytest.raises(ValueError, match="hijack"):
        plant_bytes(b"", "default", NEW, OWNED)
    planted = plant_bytes(b"", "default", NEW, OWNED, force_default=True)
    assert botocore_parse(planted)["default"]["aws_access_key_id"] == NEW.access_key_id
    assert unplant_bytes(planted, "default", OWNED) == b""
    validate_profile("prod-backup.2@x+y_z")


def test_credential_values_are_validated_and_the_secret_never_shown() -> None:
    cred = CanaryCredential("AKIA1", "top-secret", "tok-secret")
    assert "top-secret" not in repr(cred) and "tok-secret" not in repr(cred)
    for bad in ("", "a b", "a\nb", "é"):
        with pytest.raises(ValueError) as info:
            CanaryCredential("AKIA1", bad)
        assert bad not in str(info.value) or not bad
    with pytest.raises(ValueError):
        CanaryCredential("AKIA1", "s", "tok en")


def test_inspect_reports_each_state() -> None:
    planted = plant_bytes(b"[a]\nx=1\n", "canary", OLD, OWNED)
    state = inspect_bytes(planted, "canary", OWNED, expected=OLD)
    assert (state.status, state.access_key_id, state.line) == (SectionStatus.OURS, OLD.access_key_id, 3)
    assert inspect_bytes(planted, "canary", OWNED, expected=NEW).status is SectionStatus.ALTERED
    no_secret = planted.replace(b"aws_secret_access_key = old/secret+0001\n", b"")
    altered = inspect_bytes(no_secret, "canary", OWNED)
    assert altered.status is SectionStatus.ALTERED and "aws_secret_access_key" in altered.detail
    assert inspect_bytes(b"[a]\nx=1\n", "canary", OWNED).status is SectionStatus.ABSENT
    assert inspect_bytes(planted, "canary", {"AKIAOTHER"}).status is SectionStatus.FOREIGN
    assert inspect_bytes(planted, "canary", {"AKIAOTHER"}).access_key_id is None
    dup = inspect_bytes(planted + b"[canary]\n", "canary", OWNED)
    assert (dup.status, dup.line) == (SectionStatus.DUPLICATE, 6)
    other_dup = inspect_bytes(b"[a]\n[a]\n" + planted, "canary", OWNED)
    assert other_dup.status is SectionStatus.UNPARSEABLE
    bad = inspect_bytes(planted + b"garbage\n", "canary", OWNED)
    assert (bad.status, bad.line) == (SectionStatus.UNPARSEABLE, 6)


@REFUSALS
def test_refused_files_are_left_byte_identical_with_path_and_line_in_the_error(
    tmp_path: Path, data: bytes, error: type[Exception], line: int | None
) -> None:
    path = tmp_path / "credentials"
    path.write_bytes(data)
    path.chmod(0o600)
    cred = CanaryCredential("AKIANEWNEWNEWNEW0002", SECRET)
    with pytest.raises(error) as info:
        plant_file(path, "canary", cred, OWNED, owner_uid=os.getuid(), owner_gid=os.getgid())
    assert path.read_bytes() == data
    where = f"{path}:line {line}: " if line is not None else f"{path}: "
    assert str(info.value).startswith(where)
    assert SECRET not in str(info.value)
    if error is not ConflictError:
        with pytest.raises(error):
            unplant_file(path, "canary", OWNED, owner_uid=os.getuid(), owner_gid=os.getgid())
        assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials"]
