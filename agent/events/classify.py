"""Who read the canary file, in one word: aws_tool, indexer_backup_av, secret_scanner, shell_utility,
editor or unknown.

Rules are data (``classify_rules.toml`` beside this module, its header documents the conditions);
the organisation's rules come first and so take precedence. First match wins. Interpreters are
looked through: ``python3 /usr/bin/aws s3 ls`` is the program ``aws``, ``python -m awscli`` the
program ``awscli``; ``python -c ...`` is just ``python`` (unknown unless a rule matches its code).
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

UNKNOWN = "unknown"
LABELS = ("aws_tool", "indexer_backup_av", "secret_scanner", "shell_utility", "editor", UNKNOWN)
# Given by the agent itself, never by a rule: a rule could otherwise excuse any reader as the self-test.
RESERVED_LABELS = frozenset({"self_test"})
_LABEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CONDITIONS = ("program", "cmdline_contains", "cmdline_regex", "ancestor")
_ALLOWED_KEYS = frozenset({"name", "label", *_CONDITIONS})

# Interpreters whose first non-option argument is the program that actually runs.
_INTERPRETERS = (
    "python*",
    "pypy*",
    "node",
    "nodejs",
    "deno",
    "bun",
    "ruby",
    "perl",
    "perl5*",
    "php*",
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "java",
    "osascript",
    "pwsh",
    "powershell",
)
# Python's -E/-I/-O are switches (no value), so they are deliberately absent from both sets.
_CODE_FLAGS = frozenset({"-c", "-e", "--eval", "-p", "--print", "-command", "-Command"})
_VALUE_FLAGS = frozenset(
    {"-W", "-X", "-Q", "-r", "--require", "-cp", "-classpath", "--class-path", "--import", "--loader", "-o"}
)


_SCRIPT_SUFFIXES = frozenset(
    {".py", ".pyw", ".js", ".mjs", ".cjs", ".ts", ".jar", ".sh", ".bash", ".rb", ".pl", ".php", ".ps1"}
)


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
        return cls(
            label=label,
            name=name,
            program=tuple(p.lower() for p in _strings(raw, "program", where)),
            cmdline_contains=_strings(raw, "cmdline_contains", where),
            cmdline_regex=compiled,
            ancestor=tuple(p.lower() for p in _strings(raw, "ancestor", where)),
        )

    def matches(
        self, programs: frozenset[str], cmdline: str, ancestors: Callable[[], list[frozenset[str]]]
    ) -> bool:
        if self.program and not _any_glob(self.program, programs):
            return False
        if self.cmdline_contains and not any(s in cmdline for s in self.cmdline_contains):
            return False
        if self.cmdline_regex is not None and not self.cmdline_regex.search(cmdline):
            return False
        return not self.ancestor or any(_any_glob(self.ancestor, names) for names in ancestors())


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


def _base(path: str | None) -> str | None:
    if not path:
        return None
    path = path.removesuffix(" (deleted)")
    name = re.split(r"[\\/]", path)[-1].lower()
    return name.removesuffix(".exe") or None


def _script_of(argv: Sequence[str]) -> str | None:
    """The script or module an interpreter runs: first non-option argument, or `-m MODULE`."""
    args = iter(argv[1:])
    for arg in args:
        if arg in _CODE_FLAGS:
            return None
        if arg in ("-m", "-jar", "-File", "-file"):
            return next(args, None)
        if arg in _VALUE_FLAGS:
            next(args, None)
            continue
        if arg.startswith("-") and arg != "-":
            if arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):  # python -mawscli
                return arg[2:]
            continue
        return arg
    return None


def program_names(exe: str | None, cmdline: Sequence[str]) -> frozenset[str]:
    """Names a rule's `program` globs are matched against (lower case, no .exe)."""
    names = {n for n in (_base(exe), _base(cmdline[0] if cmdline else None)) if n}
    if any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in _INTERPRETERS):
        script = _script_of(cmdline)
        if script:
            base = _base(script)
            if base:
                names.add(base)
                stem, ext = os.path.splitext(base)
                if ext in _SCRIPT_SUFFIXES:
                    names.add(stem)
    return frozenset(names)


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

    def explain(self, event: ReadEvent) -> tuple[str, str | None]:
        """(label, name of the rule that matched, or None)."""
        programs = program_names(event.exe, event.cmdline)
        cmdline = " ".join(event.cmdline)
        lineage = event.ancestors

        @functools.cache
        def ancestors() -> list[frozenset[str]]:  # computed only if a rule asks for it
            return [_ancestor_names(a) for a in lineage]

        for rule in self.rules:
            if rule.matches(programs, cmdline, ancestors):
                return rule.label, rule.name
        return UNKNOWN, None

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
