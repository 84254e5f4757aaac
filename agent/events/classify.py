"""Who read the canary file, in one word: aws_tool, indexer_backup_av, secret_scanner, shell_utility,
editor or unknown.

Rules are data (``classify_rules.toml`` beside this module, its header documents the conditions);
the organisation's rules come first and so take precedence. First match wins. Interpreters are
looked through: ``python3 /usr/bin/aws s3 ls`` is the program ``aws``, ``python -m awscli`` the
program ``awscli``; ``python -c ...`` is just ``python`` (unknown unless a rule matches its code).

A name is only a claim: `Classifier.match` also says *what* a rule matched (the executable, argv[0],
the script, the command line or an ancestor), so agent.events.trust can check that part's provenance
before a trusted label holds. A rule may pin what it expects (`sha256`, `package`, `signing_id`,
`team_id`, `signer`). `explain`/`classify` are the name-only view (tests, benchmarks).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any

from agent.events.model import ProcessInfo, ReadEvent
from agent.events.scripts import SCRIPT_SUFFIXES, base_name, is_interpreter, script_argument

UNKNOWN = "unknown"
MASQUERADING = "masquerading"
LABELS = ("aws_tool", "indexer_backup_av", "secret_scanner", "shell_utility", "editor", UNKNOWN)
# Given by the agent itself, never by a rule: a rule could otherwise excuse any reader as the self-test.
RESERVED_LABELS = frozenset({"self_test"})
_LABEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CONDITIONS = ("program", "cmdline_contains", "cmdline_regex", "ancestor")
# Pins: what the matched program must be for the label to hold (agent.events.trust).
PINS = ("sha256", "package", "signing_id", "team_id", "signer")
_ALLOWED_KEYS = frozenset({"name", "label", *_CONDITIONS, *PINS})
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# What a rule's conditions matched: the reader's executable, its argv[0], the script an interpreter
# runs, only its command line, or an ancestor ("ancestor:N", parent = 0). Provenance is checked there.
EXE, ARGV0, SCRIPT, CMDLINE = "exe", "argv0", "script", "cmdline"


class RuleError(ValueError):
    """A classification rule is malformed; the message names the rule and the problem."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    label: str
    name: str
    program: tuple[str, ...] = ()
    cmdline_contains: tuple[str, ...] = ()
    cmdline_regex: re.Pattern[str] | None = None
    ancestor: tuple[str, ...] = ()
    pins: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (pin kind, accepted values), see PINS

    def pinned(self, kind: str) -> tuple[str, ...]:
        return next((values for name, values in self.pins if name == kind), ())

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Rule:
        if not isinstance(raw, dict):
            raise RuleError(f"{where}: a rule must be a table/dict, got {type(raw).__name__}")
        unknown = sorted(set(raw) - _ALLOWED_KEYS)
        if unknown:
            raise RuleError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_ALLOWED_KEYS)}")
        label = raw.get("label")
        if not isinstance(label, str) or not _LABEL_RE.match(label):
            raise RuleError(f"{where}: 'label' must be a lower-case word like 'aws_tool', got {label!r}")
        if label in RESERVED_LABELS:
            raise RuleError(f"{where}: the label {label!r} is reserved for the agent's own self-test reads")
        name = raw.get("name", where)
        if not isinstance(name, str):
            raise RuleError(f"{where}: 'name' must be a string")
        where = f"{where} ({name})" if name != where else where
        if not any(raw.get(c) for c in _CONDITIONS):
            raise RuleError(f"{where}: needs at least one condition of {list(_CONDITIONS)}")
        regex = raw.get("cmdline_regex")
        compiled = None
        if regex is not None:
            if not isinstance(regex, str):
                raise RuleError(f"{where}: 'cmdline_regex' must be a string")
            try:
                compiled = re.compile(regex)
            except re.error as exc:
                raise RuleError(f"{where}: invalid cmdline_regex {regex!r}: {exc}") from None
        pins = []
        for kind in PINS:
            values = _strings(raw, kind, where)
            if kind == "sha256":
                values = tuple(v.lower() for v in values)
                bad = [v for v in values if not _SHA256_RE.match(v)]
                if bad:
                    raise RuleError(f"{where}: 'sha256' pins must be 64 hex digits, got {bad[0]!r}")
            if values:
                pins.append((kind, values))
        return cls(
            label=label,
            name=name,
            program=tuple(p.lower() for p in _strings(raw, "program", where)),
            cmdline_contains=_strings(raw, "cmdline_contains", where),
            cmdline_regex=compiled,
            ancestor=tuple(p.lower() for p in _strings(raw, "ancestor", where)),
            pins=tuple(pins),
        )

    def matches(
        self, programs: ProgramNames, cmdline: str, ancestors: Callable[[], list[frozenset[str]]]
    ) -> str | None:
        """What the rule matched (EXE, ARGV0, SCRIPT, CMDLINE or "ancestor:N"), or None."""
        subject = CMDLINE
        if self.program:
            subject = programs.matched(_globs_regex(self.program))  # type: ignore[assignment]
            if subject is None:
                return None
        if self.cmdline_contains and not any(s in cmdline for s in self.cmdline_contains):
            return None
        if self.cmdline_regex is not None and not self.cmdline_regex.search(cmdline):
            return None
        if self.ancestor:
            for index, names in enumerate(ancestors()):
                if _any_glob(self.ancestor, names):
                    return f"ancestor:{index}" if subject == CMDLINE else subject
            return None
        return subject


def _strings(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RuleError(f"{where}: {key!r} must be a string or a list of non-empty strings")
    return tuple(value)


@functools.lru_cache(maxsize=512)
def _globs_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled alternation per rule: much faster than fnmatch per pattern per name."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _any_glob(patterns: tuple[str, ...], names: frozenset[str]) -> bool:
    regex = _globs_regex(patterns)
    return any(regex.match(name) for name in names)


@dataclasses.dataclass(frozen=True, slots=True)
class ProgramNames:
    """A reader's names by where they came from (lower case, no .exe)."""

    exe: str | None
    argv0: str | None
    script: frozenset[str] = frozenset()

    def all(self) -> frozenset[str]:
        return frozenset(n for n in (self.exe, self.argv0) if n) | self.script

    def matched(self, regex: re.Pattern[str]) -> str | None:
        """Which source a rule's program globs match, preferring the executable itself."""
        if self.exe and regex.match(self.exe):
            return EXE
        if any(regex.match(n) for n in self.script):
            return SCRIPT
        if self.argv0 and regex.match(self.argv0):
            return ARGV0
        return None


def reader_names(exe: str | None, cmdline: Sequence[str]) -> ProgramNames:
    exe_name = base_name(exe)
    argv0 = base_name(cmdline[0] if cmdline else None)
    script: set[str] = set()
    if is_interpreter([exe_name, argv0]):
        _, name = script_argument(cmdline)
        base = base_name(name)
        if base:
            script.add(base)
            stem, ext = os.path.splitext(base)
            if ext in SCRIPT_SUFFIXES:
                script.add(stem)
    return ProgramNames(exe_name, argv0, frozenset(script))


def program_names(exe: str | None, cmdline: Sequence[str]) -> frozenset[str]:
    """Names a rule's `program` globs are matched against (lower case, no .exe)."""
    return reader_names(exe, cmdline).all()


class Classifier:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def default(cls) -> Classifier:
        return cls(_default_rules())

    @classmethod
    def from_config(cls, extra_rules: Sequence[dict[str, Any]] | None) -> Classifier:
        """The organisation's rules (agent config `classification_rules`) first, then the defaults."""
        if extra_rules is not None and not isinstance(extra_rules, list | tuple):
            kind = type(extra_rules).__name__
            raise RuleError(f"classification rules must be a list of tables, got {kind}")
        extra = [Rule.from_dict(raw, f"config rule #{i + 1}") for i, raw in enumerate(extra_rules or [])]
        return cls([*extra, *_default_rules()])

    def match(self, event: ReadEvent) -> tuple[Rule | None, str | None]:
        """(the first rule that matches, what it matched) or (None, None)."""
        programs = reader_names(event.exe, event.cmdline)
        cmdline = " ".join(event.cmdline)
        lineage = event.ancestors

        @functools.cache
        def ancestors() -> list[frozenset[str]]:  # computed only if a rule asks for it
            return [_ancestor_names(a) for a in lineage]

        for rule in self.rules:
            subject = rule.matches(programs, cmdline, ancestors)
            if subject is not None:
                return rule, subject
        return None, None

    def explain(self, event: ReadEvent) -> tuple[str, str | None]:
        """(label, name of the rule that matched, or None), by name alone (no provenance)."""
        rule, _ = self.match(event)
        return (rule.label, rule.name) if rule else (UNKNOWN, None)

    def classify(self, event: ReadEvent) -> str:
        return self.explain(event)[0]


def _ancestor_names(info: ProcessInfo) -> frozenset[str]:
    return program_names(info.exe, info.cmdline)


def load_rules(text: str, source: str) -> list[Rule]:
    """Rules from a TOML document with `[[rule]]` tables."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{source}: not valid TOML: {exc}") from None
    rules = doc.get("rule")
    if not isinstance(rules, list):
        raise RuleError(f"{source}: expected [[rule]] tables")
    return [Rule.from_dict(raw, f"{source} rule #{i + 1}") for i, raw in enumerate(rules)]


@functools.cache
def _default_rules() -> tuple[Rule, ...]:
    text = resources.files("agent.events").joinpath("classify_rules.toml").read_text(encoding="utf-8")
    return tuple(load_rules(text, "classify_rules.toml"))


@functools.cache
def _default_classifier() -> Classifier:
    return Classifier.default()


def classify(event: ReadEvent) -> str:
    """Label of one read with the default rules."""
    return _default_classifier().classify(event)


def labels_in(rules: Iterable[Rule]) -> set[str]:
    return {rule.label for rule in rules}
