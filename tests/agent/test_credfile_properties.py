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
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.configloader
import botocore.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.credfile import (
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

PROFILE = "canary"
BOM = b"\xef\xbb\xbf"
OLD = CanaryCredential("AKIAOLDOLDOLDOLD0001", "old/secret+0001")
FIRST = CanaryCredential("AKIAFIRSTFIRSTFI0002", "first/secret+0002")
SECOND = CanaryCredential("ASIASECONDSECOND0003", "second/secret+0003", "IQoJb3JpZ2luX2VjE//tok==")
OWNED = {OLD.access_key_id, FIRST.access_key_id, SECOND.access_key_id}
EXAMPLES = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# Text pieces. \u00a0, \u2028, \x0c and \x1c are whitespace to str.strip() but not line breaks.
ODD_SPACE = st.sampled_from(["", " ", "  ", "\t", " \t", "\u00a0", "\x0c"])
VALUE_CHARS = st.characters(
    codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r\n", max_codepoint=0x2100
)
VALUE = st.one_of(
    st.sampled_from(["", "us-east-1", "json", "a=b", "x # not a comment", "; y", "café", "\u2028z"]),
    st.text(VALUE_CHARS, max_size=12),
)
KEY = st.sampled_from(
    [
        "region",
        "output",
        "Region",
        "aws_access_key_id",
        "AWS_SECRET_ACCESS_KEY",
        "aws_session_token",
        "s3",
        "role_arn",
        "x",
        "key with spaces",
        "cli_pager",
    ]
)
DELIM = st.sampled_from(["=", " = ", " =", "= ", ":", " : ", "\t=\t", " ="])
SECTION_NAME = st.sampled_from(
    [
        "default",
        "work",
        "Canary",
        "CANARY",
        " canary",
        "canary ",
        " canary ",
        "profile canary",
        "canary2",
        "x y",
        "a]b",
        "DEFAULT",
        "p:q",
        "prod=1",
    ]
)


@dataclass
class Generated:
    data: bytes
    eol_unterminated: bool
    ours: tuple[int, int] | None  # byte span of our own section, if the file has one
    foreign: bool  # a [canary] section whose key id we do not own
    defective: bool  # we put in something botocore refuses


@st.composite
def comment_or_blank(draw: st.DrawFn) -> str:
    return draw(
        st.one_of(
            st.builds(lambda i, p, t: f"{i}{p}{t}", ODD_SPACE, st.sampled_from(["#", ";"]), VALUE),
            ODD_SPACE,
        )
    )


@st.composite
def option_lines(draw: st.DrawFn, key: str) -> list[str]:
    indent = draw(st.sampled_from(["", "", "", " ", "\t"]))
    lines = [f"{indent}{key}{draw(DELIM)}{draw(VALUE)}{draw(ODD_SPACE)}"]
    for _ in range(draw(st.integers(0, 2))):  # continuation lines: deeper indent (nested k=v mostly)
        if draw(st.booleans()):
            lines.append(draw(comment_or_blank()))
        deeper = indent + draw(st.sampled_from([" ", "  ", "\t"]))
        lines.append(f"{deeper}{draw(st.sampled_from(['a = 1', 'b=2', 'x=y=z', 'c =']))}")
    return lines


@st.composite
def section_lines(draw: st.DrawFn, name: str) -> list[str]:
    lines = [f"[{name}]{draw(st.sampled_from(['', '', ' ', ' # trailing']))}"]
    keys = draw(st.lists(KEY, max_size=4, unique_by=str.lower))
    for key in keys:
        lines += [draw(comment_or_blank()) for _ in range(draw(st.integers(0, 1)))]
        lines += draw(option_lines(key))
    lines += [draw(comment_or_blank()) for _ in range(draw(st.integers(0, 2)))]
    return lines


@st.composite
def own_section_lines(draw: st.DrawFn, key_id: str) -> list[str]:
    """Our section as a user might have reformatted it (still with our key id)."""
    entries = [f"{draw(st.sampled_from(['aws_access_key_id', 'AWS_ACCESS_KEY_ID']))}{draw(DELIM)}{key_id}"]
    if draw(st.booleans()):
        entries.append(f"aws_secret_access_key{draw(DELIM)}{draw(st.sampled_from(['s', '', 'old/x']))}")
    if draw(st.booleans()):
        entries.append(f"{draw(st.sampled_from(['aws_session_token', 'aws_security_token']))} = t")
    if draw(st.booleans()):
        entries.append(f"region{draw(DELIM)}eu-west-1")
    entries = draw(st.permutations(entries))
    indent = draw(st.sampled_from(["", " ", "\t"]))  # one indent: a deeper line would be a continuation
    lines = [f"[{PROFILE}]"]
    for entry in entries:
        lines += [draw(comment_or_blank()) for _ in range(draw(st.integers(0, 1)))]
        lines.append(indent + entry + draw(ODD_SPACE))
    return lines


DEFECTS = {
    "duplicate section": lambda lines: [*lines, "[work]", "[work]"],
    "duplicate key": lambda lines: [*lines, "[dupkey]", "k = 1", "K = 2"],
    "key before header": lambda lines: ["orphan = 1", *lines],
    "garbage line": lambda lines: [*lines, "[g]", "not an option"],
    "nested without =": lambda lines: [*lines, "[n]", "s3 =", "   oops"],
}


@st.composite
def credentials_files(draw: st.DrawFn, defects: bool = True) -> Generated:
    sections = [draw(section_lines(name)) for name in draw(st.lists(SECTION_NAME, max_size=5, unique=True))]
    kind = draw(st.sampled_from(["none", "none", "ours", "foreign"]))
    if kind != "none":
        key_id = OLD.access_key_id if kind == "ours" else "AKIAUSERUSERUSER9999"
        at = draw(st.integers(0, len(sections)))
        sections.insert(at, draw(own_section_lines(key_id)))
    preamble = [draw(comment_or_blank()) for _ in range(draw(st.integers(0, 2)))]
    defect = draw(st.sampled_from([None] * 12 + sorted(DEFECTS))) if defects else None
    style = draw(st.sampled_from(["\n", "\r\n", "\r", "mixed"]))
    unterminated = draw(st.booleans())
    bom = draw(st.integers(0, 9)) == 0

    def end() -> str:
        return draw(st.sampled_from(["\n", "\r\n", "\r"])) if style == "mixed" else style

    chunks: list[str] = [f"{line}{end()}" for line in preamble]
    ours_span: tuple[int, int] | None = None
    for lines in sections:
        start = len("".join(chunks).encode())
        chunks += [f"{line}{end()}" for line in lines]
        if lines[0] == f"[{PROFILE}]" and kind == "ours":
            ours_span = (start, len("".join(chunks).encode()))
    if defect:
        chunks = [f"{line}{end()}" for line in DEFECTS[defect]("".join(chunks).splitlines())]
        ours_span = None
    text = "".join(chunks)
    if unterminated and text:
        text = text.rstrip("\r\n")
        if ours_span:
            ours_span = (ours_span[0], min(ours_span[1], len(text.encode())))
    data = text.encode()
    if defects and defect is None and draw(st.integers(0, 15)) == 0:  # undecodable bytes
        data, defect = data + b"[latin]\nname = caf\xe9\n", "not UTF-8"
    if bom:
        data = BOM + data
        ours_span = (ours_span[0] + 3, ours_span[1] + 3) if ours_span else None
    return Generated(data, unterminated, ours_span, kind == "foreign", defect is not None)


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
