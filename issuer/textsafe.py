"""Attacker-chosen text, made safe to store and to show: the issuer's one implementation.

Much of what reaches the issuer is chosen by someone we do not trust: whoever calls AWS with a
canary picks the user agent and request parameters CloudTrail records; a reader on a laptop picks its
own name and arguments; a user picks the file names in their home. Two different needs:

* **Storing** (`storable`, `storable_json`): the database must accept every event, or the event (and,
  before, its whole batch) is lost. Lone surrogates (``\\ud800``: JSON allows them, UTF-8 does not)
  and NUL (PostgreSQL text cannot hold it) become visible text (``\\ud800``, ``\\x00``); JSON numbers
  PostgreSQL refuses (NaN, Infinity) become strings; nesting is cut. Everything else is kept exactly,
  so `--json` output and sink payloads show what AWS or the agent reported, byte for byte.
* **Showing to a person** (`visible`): a terminal, a mail client or Slack must never interpret what an
  attacker wrote. Control characters (ESC, BEL, CSI, newlines inside a value...), bidirectional
  overrides and line separators are spelled out (``\\x1b``, ``\\u202e``), so a crafted user agent
  cannot clear a responder's screen or reorder what they read.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Bidirectional formatting characters (Unicode TR9): they reorder what follows them on screen.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# C0 and C1 controls, DEL, surrogates, line/paragraph separators and the bidi characters.
_NOT_VISIBLE = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029{_BIDI}]")
_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_JSON_DEPTH = 32  # CloudTrail's own records nest a few levels; deeper is cut, not stored
DEEP_MARKER = "(nested too deeply; cut)"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with control, bidirectional and unpaired-surrogate characters spelled out.

    `keep_newlines` keeps "\\n" for text whose line breaks are ours (a rendered report); every value
    interpolated into it must already have gone through `visible` without it."""
    if keep_newlines:
        return "\n".join(visible(line) for line in text.split("\n"))
    return _NOT_VISIBLE.sub(_escape, text)


def storable(text: str) -> str:
    """`text` with what no database can hold (NUL, unpaired surrogates) spelled out."""
    return _NOT_STORABLE.sub(_escape, text) if _NOT_STORABLE.search(text) else text


def bounded(text: str, limit: int) -> str:
    """`storable(text)` cut to `limit` characters (the column's size), saying that it was cut."""
    text = storable(text)
    if len(text) <= limit:
        return text
    marker = f"...[+{len(text) - limit} chars]"
    return text[: max(limit - len(marker), 0)] + marker


def storable_json(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON value that every backend stores: strings `storable`, numbers finite, nesting cut
    at MAX_JSON_DEPTH (deep nesting overflows the JSON encoder)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # PostgreSQL's json refuses NaN
    if isinstance(value, int):
        return value
    if isinstance(value, dict | list) and depth >= MAX_JSON_DEPTH:
        return DEEP_MARKER
    if isinstance(value, dict):
        return {storable(str(k)): storable_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(v, depth + 1) for v in value]
    return storable(str(value))


__all__ = ["MAX_JSON_DEPTH", "bounded", "storable", "storable_json", "visible"]
