"""The one scrubber of known secrets: the planted canary secret keys (and tokens) the agent holds.

Redaction (agent.events.redact) is a heuristic over command lines; these values are known exactly,
so wherever one appears — in a reader's argv, a path, a payload for the issuer — it is replaced by
[REDACTED] before the text is stored or sent. Longest first, so a secret containing a shorter one
is replaced whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from agent.events.redact import REDACTED


class KnownSecrets:
    """An immutable set of secrets, ordered longest first for replacement."""

    __slots__ = ("_ordered",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._ordered: tuple[str, ...] = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._ordered)

    def __iter__(self) -> Any:
        return iter(self._ordered)

    def with_secret(self, secret: str) -> KnownSecrets:
        return KnownSecrets((*self._ordered, secret))

    def scrub(self, text: str) -> str:
        """`text` with every known secret replaced by [REDACTED]."""
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def scrub_optional(self, text: str | None) -> str | None:
        return None if text is None else self.scrub(text)

    def scrub_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`payload` (JSON-able) with every secret replaced in any string, keys included."""
        if not self._ordered:
            return payload
        text = json.dumps(payload)
        for secret in self._ordered:
            text = text.replace(json.dumps(secret)[1:-1], REDACTED)
        return dict(json.loads(text))


def known(secrets: Iterable[str] | KnownSecrets) -> KnownSecrets:
    """`secrets` as KnownSecrets (already-built sets are passed through)."""
    return secrets if isinstance(secrets, KnownSecrets) else KnownSecrets(secrets)


__all__ = ["KnownSecrets", "known"]
