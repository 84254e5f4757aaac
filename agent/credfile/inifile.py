"""A byte-exact line model of an AWS shared credentials/config file, read the way botocore reads it.

botocore parses these files with ``configparser.RawConfigParser()`` (strict, ``=``/``:`` delimiters,
``#``/``;`` full-line comments, indented continuation lines, option names lower-cased, section names
case-sensitive and *not* stripped: ``[ prod ]`` is the section `` prod ``) on the text decoded with
the locale encoding (UTF-8 here) and split by universal newlines (``\\n``, ``\\r\\n`` and a lone
``\\r``). It then rejects a value that starts with a newline unless every line of it is ``k = v``.

This module keeps every line with its own terminator so a document renders back to the exact bytes
it was parsed from, classifies lines with the same algorithm as ``RawConfigParser._read``, and
checks a text with the real ``RawConfigParser`` so "we accept it" means "botocore accepts it".
A UTF-8 byte order mark is kept aside and written back unchanged (botocore itself rejects BOM files;
other SDKs accept them, so we neither add nor remove one). No I/O here.
"""

from __future__ import annotations

import configparser
import enum
import io
import re
from dataclasses import dataclass, field

from agent.credfile.errors import DuplicateSectionError, ParseError

BOM = b"\xef\xbb\xbf"
_LINE_RE = re.compile(r"([^\r\n]*)(\r\n|\r|\n)")
_COMMENT_PREFIXES = ("#", ";")
_SECTCRE = configparser.RawConfigParser.SECTCRE
_OPTCRE = configparser.RawConfigParser.OPTCRE
_NONSPACECRE = configparser.RawConfigParser.NONSPACECRE
DEFAULT_SECTION = configparser.DEFAULTSECT  # "DEFAULT": its keys are merged into every section


class Kind(enum.Enum):
    BLANK = "blank"
    COMMENT = "comment"
    HEADER = "header"
    OPTION = "option"
    CONTINUATION = "continuation"


@dataclass
class Line:
    text: str  # without its terminator
    end: str  # "\n", "\r\n", "\r", or "" for a last line without newline
    kind: Kind = Kind.BLANK
    option: str | None = None  # lower-cased option name, for OPTION and CONTINUATION lines


@dataclass
class Entry:
    """One option: its line and its continuation lines (comments/blanks in between included)."""

    name: str
    first: int
    last: int


@dataclass
class Section:
    name: str
    header: int  # line index
    end: int  # exclusive: the next header's index, or len(lines)
    entries: list[Entry] = field(default_factory=list)

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries if e.name == name), None)

    def body_end(self) -> int:
        """Exclusive end of the header and its options; trailing blanks/comments are not included."""
        return max([self.header, *(e.last for e in self.entries)]) + 1


@dataclass
class Document:
    bom: bool
    lines: list[Line]
    sections: list[Section]

    def render(self) -> bytes:
        text = "".join(line.text + line.end for line in self.lines)
        return (BOM if self.bom else b"") + text.encode("utf-8")

    def find(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def line_ending(self) -> str:
        """The file's usual terminator (most frequent; ties go to the later one); LF for none."""
        counts: dict[str, int] = {}
        for line in self.lines:
            if line.end:
                counts[line.end] = counts.get(line.end, 0) + 1
        best = "\n"
        best_count = 0
        for line in self.lines:
            if line.end and counts[line.end] >= best_count:
                best, best_count = line.end, counts[line.end]
        return best


def split_lines(text: str) -> list[Line]:
    """Universal-newline split that keeps each terminator (what Python's text file iteration sees)."""
    lines: list[Line] = []
    pos = 0
    for match in _LINE_RE.finditer(text):
        lines.append(Line(match.group(1), match.group(2)))
        pos = match.end()
    if pos < len(text):
        lines.append(Line(text[pos:], ""))
    return lines


def decode(data: bytes) -> tuple[bool, str]:
    bom = data.startswith(BOM)
    body = data[len(BOM) :] if bom else data
    try:
        return bom, body.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = split_lines(body[: exc.start].decode("utf-8"))
        line = len(before) + 1 if not before or before[-1].end else len(before)
        raise ParseError(f"not valid UTF-8 (byte {exc.start + len(BOM) * bom})", line=line) from None


def parse(data: bytes) -> Document:
    """Parse bytes into a Document; ParseError/ConflictError whenever botocore would refuse the file."""
    bom, text = decode(data)
    check_with_configparser(text)
    lines = split_lines(text)
    sections = _classify(lines)
    return Document(bom, lines, sections)


def load(text: str) -> configparser.RawConfigParser:
    """Exactly botocore's parser, fed the way botocore feeds it (universal newlines)."""
    parser = configparser.RawConfigParser()
    parser.read_file(io.StringIO(text, newline=None), source="<credentials>")
    return parser


def check_with_configparser(text: str) -> configparser.RawConfigParser:
    try:
        parser = load(text)
    except configparser.DuplicateSectionError as exc:
        raise DuplicateSectionError(exc.section, line=exc.lineno) from None
    except configparser.DuplicateOptionError as exc:
        raise ParseError(
            f"option {exc.option!r} appears more than once in section [{exc.section}]", line=exc.lineno
        ) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ParseError("a line comes before any [section] header", line=exc.lineno) from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0] if exc.errors else None
        raise ParseError("a line is neither a [section], a key = value, nor a comment", line=lineno) from None
    except configparser.Error as exc:  # pragma: no cover - any other configparser refusal
        raise ParseError(f"configparser refuses the file: {exc.message}") from None
    _check_nested_values(text, parser)
    return parser


def _check_nested_values(text: str, parser: configparser.RawConfigParser) -> None:
    """botocore's raw_config_parse: a value starting with a newline must be lines of ``k = v``."""
    for section in parser.sections():
        for option in parser.options(section):
            value = parser.get(section, option)
            if value.startswith("\n"):
                for part in value.splitlines():
                    if part.strip() and "=" not in part:
                        # Never quote the line: it may be the user's own secret.
                        raise ParseError(
                            f"option {option!r} in section [{section}] is an indented block with "
                            "a line that has no '=' (botocore rejects it)",
                            line=_option_line(text, section, option),
                        )


def _option_line(text: str, section: str, option: str) -> int | None:
    lines = split_lines(text)
    for sect in _classify(lines):
        if sect.name == section and (entry := sect.entry(option)) is not None:
            return entry.first + 1
    return None


def _classify(lines: list[Line]) -> list[Section]:
    """RawConfigParser._read's line logic, recording structure instead of values.

    Only called on text the real configparser accepted, so error branches cannot be reached by
    valid input; they still refuse rather than guess.
    """
    sections: list[Section] = []
    current: Section | None = None
    entry: Entry | None = None
    indent_level = 0
    for index, line in enumerate(lines):
        stripped = line.text.strip()
        if stripped.startswith(_COMMENT_PREFIXES):
            line.kind = Kind.COMMENT
            continue
        if not stripped:
            line.kind = Kind.BLANK
            continue
        first_nonspace = _NONSPACECRE.search(line.text)
        indent = first_nonspace.start() if first_nonspace else 0
        if current is not None and entry is not None and indent > indent_level:
            line.kind, line.option = Kind.CONTINUATION, entry.name
            entry.last = index
            continue
        indent_level = indent
        header = _SECTCRE.match(stripped)
        if header:
            if current is not None:
                current.end = index
            current = Section(header.group("header"), index, len(lines))
            sections.append(current)
            line.kind, entry = Kind.HEADER, None
            continue
        option = _OPTCRE.match(stripped)
        if current is None or not option or not option.group("option"):
            raise ParseError("line not understood", line=index + 1)
        name = option.group("option").rstrip().lower()
        line.kind, line.option = Kind.OPTION, name
        entry = Entry(name, index, index)
        current.entries.append(entry)
    return sections


def semantic_view(text: str) -> dict[str, dict[str, str]]:
    """What botocore sees: every section's resolved options (DEFAULT keys merged in), plus DEFAULT."""
    parser = load(text)
    view = {name: dict(parser.items(name)) for name in parser.sections()}
    view[DEFAULT_SECTION] = dict(parser.defaults())
    return view


def finish(lines: list[Line], was_unterminated: bool, eol: str) -> list[Line]:
    """Restore the end-of-file convention after an edit.

    Every line but the last gets a terminator (an old unterminated last line that now has lines
    after it takes the file's usual one); the last line has none exactly when the original file's
    last line had none. This is what makes insert-then-remove give back the original bytes.
    """
    for line in lines[:-1]:
        if not line.end:
            line.end = eol
    if lines:
        if was_unterminated:
            lines[-1].end = ""
        elif not lines[-1].end:
            lines[-1].end = eol
    return lines


def indent(text: str) -> str:
    """A line's leading whitespace, measured as configparser measures indentation."""
    first = _NONSPACECRE.search(text)
    return text[: first.start()] if first else ""


def with_value(text: str, value: str) -> str:
    """An option line with a new value: same indentation, key spelling and delimiter spacing."""
    stripped = text.strip()
    match = _OPTCRE.match(stripped)
    if match is None:
        raise ParseError("not an option line")
    prefix = stripped[: match.start("value")]
    if not match.group("value") and not prefix[-1:].isspace():
        prefix += " "
    return indent(text) + prefix + value


def append_section(doc: Document, name: str, items: list[tuple[str, str]]) -> bytes:
    """The document with ``[name]`` and its ``key = value`` lines added at the very end."""
    eol = doc.line_ending()
    block = [Line(f"[{name}]", eol)] + [Line(f"{key} = {value}", eol) for key, value in items]
    was_unterminated = bool(doc.lines) and not doc.lines[-1].end
    lines = [Line(line.text, line.end) for line in doc.lines]
    return Document(doc.bom, finish([*lines, *block], was_unterminated, eol), []).render()


def remove_section(doc: Document, section: Section) -> bytes:
    """The document without the section's header and options (the exact inverse of append_section).

    Comments and blank lines after its last option stay: they usually introduce the next section.
    """
    was_unterminated = bool(doc.lines) and not doc.lines[-1].end
    keep = [
        Line(line.text, line.end)
        for index, line in enumerate(doc.lines)
        if not section.header <= index < section.body_end()
    ]
    return Document(doc.bom, finish(keep, was_unterminated, doc.line_ending()), []).render()


def first_changed_section(before: str, after: str, name: str) -> str | None:
    """The first section other than ``name`` that botocore would read differently, or None."""
    old, new = semantic_view(before), semantic_view(after)
    for section in sorted((set(old) | set(new)) - {name}):
        if old.get(section) != new.get(section):
            return section
    return None
