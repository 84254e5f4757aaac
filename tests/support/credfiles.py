"""Hypothesis strategies for credentials files: the user's sections, comments, odd spacing, and
the defects the editor must refuse."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from agent.credfile.edit import (
    CanaryCredential,
)

PROFILE = "canary"


BOM = b"\xef\xbb\xbf"


OLD = CanaryCredential("AKIAOLDOLDOLDOLD0001", "old/secret+0001")


FIRST = CanaryCredential("AKIAFIRSTFIRSTFI0002", "first/secret+0002")


SECOND = CanaryCredential("ASIASECONDSECOND0003", "second/secret+0003", "IQoJb3JpZ2luX2VjE//tok==")


OWNED = {OLD.access_key_id, FIRST.access_key_id, SECOND.access_key_id}


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
