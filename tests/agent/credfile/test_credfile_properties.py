"""Property tests of agent.credfile over generated credentials files, judged by real botocore/boto3.

The generator writes files the way people and tools do: sections in any order (including names
that only look like ours: ``[Canary]``, ``[ canary ]``, ``[profile canary]``), ``=`` / ``:`` with any
spacing, upper-case keys, indented options and continuation lines, ``#``/``;`` comments, blank and
whitespace-only lines, trailing whitespace, odd Unicode whitespace, LF/CRLF/CR/mixed endings, a BOM,
with or without a final newline; sometimes our own section (reformatted by hand), sometimes a
foreign one, and sometimes a defect botocore refuses (duplicate section/key, key before a header,
garbage line, nested block without '=', bytes that are not UTF-8).
"""

from __future__ import annotations

import configparser
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.configloader
import botocore.exceptions
import pytest
from hypothesis import HealthCheck, given, settings

from agent.credfile.edit import (
    REDIRECT_KEYS,
    CanaryCredential,
    ConflictError,
    CredfileError,
    ParseError,
    SectionStatus,
    inspect_bytes,
    plant_bytes,
    unplant_bytes,
)
from tests.support.credfiles import BOM, FIRST, OWNED, PROFILE, SECOND, Generated, credentials_files

EXAMPLES = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def cf_scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def botocore_parse(scratch: Path, data: bytes) -> dict[str, dict[str, object]] | None:
    """botocore's reading of the bytes; None when botocore refuses them."""
    path = scratch / "credentials"
    path.write_bytes(data)
    try:
        return botocore.configloader.raw_config_parse(str(path))
    except botocore.exceptions.ConfigParseError:
        return None


def default_sets_token(data: bytes) -> bool:
    """A [DEFAULT] token applies to every profile in botocore (configparser merges DEFAULT in)."""
    parser = configparser.RawConfigParser()
    parser.read_file(io.StringIO(strip_bom(data).decode(), newline=None))
    return bool({"aws_session_token", "aws_security_token"} & set(parser.defaults()))


def default_redirects(data: bytes) -> bool:
    """A [DEFAULT] role_arn/web identity/sso_* key would make botocore ignore our profile's keys."""
    parser = configparser.RawConfigParser()
    parser.read_file(io.StringIO(strip_bom(data).decode(), newline=None))
    return any(key in REDIRECT_KEYS or key.startswith("sso_") for key in parser.defaults())


def expected_profile(cred: CanaryCredential) -> dict[str, str]:
    return cred.values()


def strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(BOM) else data


@EXAMPLES
@given(gen=credentials_files())
def test_plant_agrees_with_botocore_and_unplant_restores_bytes(cf_scratch: Path, gen: Generated) -> None:
    original = gen.data
    before = botocore_parse(cf_scratch, strip_bom(original))
    try:
        planted = plant_bytes(original, PROFILE, FIRST, OWNED)
    except CredfileError as exc:
        # We refuse exactly what botocore refuses, plus a [canary] section that is not ours.
        assert isinstance(exc, ConflictError | ParseError)
        if before is not None:
            # botocore reads it: only a [canary] that is not ours, or a [DEFAULT] token or role
            # that would leak into our profile, is a reason to refuse.
            assert isinstance(exc, ConflictError), exc
            assert gen.foreign or default_sets_token(original) or default_redirects(original), exc
        else:
            with pytest.raises(CredfileError):
                unplant_bytes(original, PROFILE, OWNED)
        return
    assert before is not None, "accepted a file botocore refuses"
    assert not gen.defective and not gen.foreign and not default_sets_token(original)
    assert not default_redirects(original)
    assert planted.startswith(BOM) == original.startswith(BOM)

    # (3) botocore reads the planted profile as exactly our key; every other section as before.
    after = botocore_parse(cf_scratch, strip_bom(planted))
    assert after is not None
    creds = {k: v for k, v in after[PROFILE].items() if k.startswith("aws_")}
    assert creds == expected_profile(FIRST)
    assert {k: v for k, v in after.items() if k != PROFILE} == {
        k: v for k, v in before.items() if k != PROFILE
    }
    state = inspect_bytes(planted, PROFILE, OWNED, expected=FIRST)
    assert (state.status, state.access_key_id) == (SectionStatus.OURS, FIRST.access_key_id)

    if gen.ours is None:
        # (2)+(1) appended after the untouched original; removing it gives the original back.
        if gen.eol_unterminated and strip_bom(original):
            assert planted[len(original)] in b"\r\n"
            assert planted.startswith(original)
        else:
            assert planted.startswith(original)
        assert unplant_bytes(planted, PROFILE, OWNED) == original
    else:
        # (2) replaced in place: every byte before and after our section is unchanged.
        start, stop = gen.ours
        assert planted[:start] == original[:start]
        assert planted.endswith(original[stop:])

    # (4) re-plant with a new key whose old id we own: still one section, now the new key.
    replanted = plant_bytes(planted, PROFILE, SECOND, OWNED)
    again = botocore_parse(cf_scratch, strip_bom(replanted))
    assert again is not None  # a duplicate section would make botocore refuse the file
    assert {k: v for k, v in again[PROFILE].items() if k.startswith("aws_")} == expected_profile(SECOND)
    assert unplant_bytes(replanted, PROFILE, OWNED) == unplant_bytes(planted, PROFILE, OWNED)
    assert plant_bytes(replanted, PROFILE, FIRST, OWNED) == planted


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gen=credentials_files(defects=False))
def test_boto3_session_resolves_the_planted_profile(cf_scratch: Path, gen: Generated) -> None:
    original = strip_bom(gen.data)
    try:
        planted = plant_bytes(original, PROFILE, SECOND, OWNED)
    except CredfileError:
        assert gen.foreign or default_redirects(original) or botocore_parse(cf_scratch, original) is None
        return
    path = cf_scratch / "boto3-credentials"
    path.write_bytes(planted)
    with pytest.MonkeyPatch.context() as patch:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            patch.delenv(var, raising=False)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
        patch.setenv("AWS_CONFIG_FILE", str(cf_scratch / "no-config"))
        credentials = boto3.Session(profile_name=PROFILE).get_credentials()
    assert credentials is not None and credentials.method == "shared-credentials-file"
    frozen = credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        SECOND.access_key_id,
        SECOND.secret_access_key,
        SECOND.session_token,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gen=credentials_files())
def test_unplant_never_changes_a_file_without_our_section(cf_scratch: Path, gen: Generated) -> None:
    if gen.ours is not None:
        return
    try:
        assert unplant_bytes(gen.data, PROFILE, OWNED) == gen.data
    except CredfileError:
        assert botocore_parse(cf_scratch, strip_bom(gen.data)) is None


def test_generator_covers_the_interesting_cases() -> None:
    """A guard that the strategy really produces each kind of file (else the properties are weak)."""
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None)
    @given(gen=credentials_files())
    def collect(gen: Generated) -> None:
        data = strip_bom(gen.data)
        seen.update(
            k
            for k, v in {
                "bom": gen.data.startswith(BOM),
                "crlf": b"\r\n" in data,
                "cr-only": b"\r[" in data,
                "unterminated": gen.eol_unterminated and bool(data),
                "ours": gen.ours is not None,
                "foreign": gen.foreign,
                "defective": gen.defective,
                "continuation": b"\n  " in data,
            }.items()
            if v
        )

    collect()
    assert seen >= {"bom", "crlf", "cr-only", "unterminated", "ours", "foreign", "defective", "continuation"}
