"""Scrub secret values out of a reader's command line before anything stores or sends it.

A reader's argv can carry a credential of its own: ``aws configure set aws_secret_access_key X``,
``--password=X``, ``curl -u user:X``, ``https://user:X@host``, or a bare AWS secret access key. The
read log, the upload spool and the issuer's alerts all keep ``ReadEvent.cmdline``, so ReadEvent
applies :func:`redact_argv` when it is built: no consumer can forget. The argument NAMES stay (a
responder needs to see that someone set a secret key); only the values become ``[REDACTED]``.

Heuristics, deliberately on the side of redacting too much:

* an option or ``NAME=value`` whose name mentions secret/password/passphrase/token/api key/
  private key, except names of a file, path, directory, id, name or ARN (``--secret-id`` is the
  name of a secret, ``--web-identity-token-file`` a path);
* a bare such name after ``set`` (``aws configure set NAME VALUE``, ``gh secret set ...``): the
  next argument; a bare name elsewhere (``grep aws_secret_access_key FILE``) keeps its neighbour;
* ``-u``/``--user``/``--proxy-user`` values with a colon (curl style ``user:password``);
* the password of a URL (``scheme://user:password@host``);
* anything shaped like an AWS secret access key: 40 characters of ``[A-Za-z0-9/+]`` with upper and
  lower case letters and a digit, not starting with ``/`` (a git SHA is lower-case hex: kept).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REDACTED = "[REDACTED]"

_SENSITIVE_WORDS = r"secret|password|passwd|passphrase|token|api[_-]?key|private[_-]?key"
_SENSITIVE = re.compile(_SENSITIVE_WORDS, re.IGNORECASE)
_SENSITIVE_FOLDED = re.compile(_SENSITIVE_WORDS)
_NOT_A_VALUE = re.compile(r"_(?:file|path|dir|id|name|arn)$", re.IGNORECASE)
_USER_OPTIONS = frozenset({"-u", "--user", "--proxy-user", "-U"})
# NAME=value / NAME: value inside any argument (a `sh -c` script, a printf format, a URL query).
# Only names holding a sensitive word match, so `https:` never swallows a `?token=` after it.
_ASSIGNMENT = re.compile(
    rf"""((?<![\w.-])[\w.-]*(?:{_SENSITIVE_WORDS})[\w.-]*)(["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s"',;&|)]+)""",
    re.IGNORECASE,
)
# `... set NAME VALUE` inside one argument (a `sh -c "aws configure set aws_secret_access_key X"`).
_SET_COMMAND = re.compile(
    rf"""(\bset\s+([\w.-]*(?:{_SENSITIVE_WORDS})[\w.-]*)\s+)([^\s;&|)"']+)""", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^/\s:@]*:)([^/\s@]+)(@)")
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])([A-Za-z0-9+][A-Za-z0-9/+]{39})(?![A-Za-z0-9/+=])")


def is_sensitive_name(name: str) -> bool:
    """True for option/key names whose value is a secret (`--db-password`, `aws_session_token`)."""
    normal = name.lstrip("-").replace("-", "_")
    return bool(normal) and bool(_SENSITIVE.search(normal)) and not _NOT_A_VALUE.search(normal)


def _looks_like_aws_secret(token: str) -> bool:
    return (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )


def _may_hold_sensitive_word(text: str) -> bool:
    """True whenever `_SENSITIVE` (case-insensitive) would match, much faster: casefold first.
    Casefolding maps every character that re's IGNORECASE equates with a letter of these words to
    that letter, except two forms of i: dotless (kept) and dotted capital (folded to i + a combining
    dot). Checked over all of Unicode in tests/sensors/test_redact.py."""
    folded = text.casefold().replace("\u0131", "i").replace("i\u0307", "i")
    return bool(_SENSITIVE_FOLDED.search(folded))


def redact_text(text: str) -> str:
    """One argument with every secret-looking value inside it replaced."""

    def assignment(match: re.Match[str]) -> str:
        if not is_sensitive_name(match.group(1)) or match.group(3) == REDACTED:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{REDACTED}"

    # Both patterns need a sensitive word; most arguments have none, and checking for one first is
    # many times cheaper than the full patterns on a long `sh -c` script (bench/bench_bounds.py).
    if _may_hold_sensitive_word(text):
        text = _ASSIGNMENT.sub(assignment, text)
        text = _SET_COMMAND.sub(
            lambda m: m.group(1) + REDACTED if is_sensitive_name(m.group(2)) else m.group(0), text
        )
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(3)}", text)
    return _AWS_SECRET.sub(lambda m: REDACTED if _looks_like_aws_secret(m.group(1)) else m.group(0), text)


def redact_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """argv with secret values replaced by [REDACTED] (equal to argv when nothing looked secret)."""
    out: list[str] = []
    expect: str | None = None  # what the previous argument says this one is: "value" or "user"
    for i, arg in enumerate(argv):
        if expect == "value" and arg and not arg.startswith("-"):
            out.append(REDACTED)
        elif expect == "user" and ":" in arg:
            out.append(arg.partition(":")[0] + ":" + REDACTED)
        else:
            out.append(redact_text(arg))
            if arg.startswith("-") and "=" not in arg and is_sensitive_name(arg):
                expect = "value"  # --password VALUE
            elif arg in _USER_OPTIONS:
                expect = "user"  # curl -u user:password
            elif i > 0 and argv[i - 1] == "set" and is_sensitive_name(arg):
                expect = "value"  # aws configure set aws_secret_access_key VALUE
            else:
                expect = None
            continue
        expect = None
    return tuple(out)
