"""Text from the issuer made safe for a terminal: the client's one implementation.

Much of what a responder reads was written by someone else: a reader's command line, a CloudTrail
user agent, an enrolled hostname, a user or file name. Printed raw, ESC/CSI sequences could clear
the screen or recolour it and print "ALL CLEAR", BEL rings, and bidirectional overrides reorder
what follows. `visible` spells every such character out (``\\x1b``, ``\\u202e``); `--json` output is
never passed through it and stays exact.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, unpaired surrogates, line/paragraph separators and the bidirectional
# formatting characters of Unicode TR9 (they reorder the text that follows them on screen).
_NOT_VISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with control, bidirectional and unpaired-surrogate characters spelled out.

    `keep_newlines` keeps "\\n" (and nothing else) for whole rendered reports whose line breaks are
    ours; the values in them must have been escaped already."""
    if keep_newlines:
        return "\n".join(_NOT_VISIBLE.sub(_escape, line) for line in text.split("\n"))
    return _NOT_VISIBLE.sub(_escape, text)


__all__ = ["visible"]
