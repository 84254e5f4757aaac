"""Fingerprint resistance: is an account of the pool on a public list of known canary accounts?

An AWS access key id encodes the id of the account it belongs to, and open-source secret scanners
decode it offline to recognise canary accounts from a list (TruffleHog does; the shipped list in
issuer/data/known_canary_accounts.toml names its source and date). A canary in a listed account is
skipped or recognised by every attacker running that scanner, so the issuer warns at start and
`tripkey-issuer check` reports it. The list is data, replaceable by the operator
(`known_canary_accounts_file`).

Decoding (as those scanners do, after Tal Be'ery's note on AWS key ids): drop the four-letter prefix
(AKIA, ASIA, ...), base32-decode the rest, read the first six bytes as a big-endian 48-bit number,
mask 0x7fffffffff80 and shift right by 7. Keys whose fifth character is I or J predate the encoding.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

_KEY_ID = re.compile(r"^(A[A-Z0-9]{3})([A-Z2-7]{16})$")
_ACCOUNT = re.compile(r"^\d{12}$")


class CanaryListError(ValueError):
    """The known-canary-accounts file is missing or malformed; the message says which and why."""


def account_from_key_id(key_id: str) -> str | None:
    """The 12-digit account id encoded in an access key id (AKIA..., ASIA...); None if it has none."""
    match = _KEY_ID.match(key_id or "")
    if not match or key_id[4] in "IJ":
        return None
    try:
        raw = base64.b32decode(match.group(2) + "=" * (-len(match.group(2)) % 8))
    except ValueError:
        return None
    number = int.from_bytes(raw[:6], "big")
    return f"{(number & 0x7FFFFFFFFF80) >> 7:012d}"


@dataclasses.dataclass(frozen=True, slots=True)
class KnownCanaryList:
    accounts: dict[str, str]  # account id -> note
    source: dict[str, str]  # name, url, commit, retrieved
    path: str

    def describe_source(self) -> str:
        parts = [self.source.get("name") or self.path]
        if self.source.get("url"):
            parts.append(self.source["url"])
        if self.source.get("retrieved"):
            parts.append(f"retrieved {self.source['retrieved']}")
        return ", ".join(parts)


def load_list(path: Path | None = None) -> KnownCanaryList:
    """The operator's list at `path`, or the one shipped with the issuer."""
    if path is None:
        text = resources.files("issuer.data").joinpath("known_canary_accounts.toml").read_text("utf-8")
        where = "issuer/data/known_canary_accounts.toml"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CanaryListError(f"known_canary_accounts_file {path}: {exc.strerror or exc}") from None
        where = str(path)
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CanaryListError(f"{where} is not valid TOML: {exc}") from None
    accounts: dict[str, str] = {}
    for index, entry in enumerate(data.get("accounts") or []):
        account = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(account, str) or not _ACCOUNT.match(account):
            raise CanaryListError(f"{where}: accounts[{index}].id must be a 12-digit account id")
        accounts[account] = str(entry.get("note") or "")
    source = data.get("source")
    described = {str(k): str(v) for k, v in source.items()} if isinstance(source, dict) else {}
    return KnownCanaryList(accounts, described, where)


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    account: str  # the pool account's name, or "" for an id seen only in a key
    account_id: str
    note: str
    how: str  # how the id was learned: "sts:GetCallerIdentity", "decoded from AKIA...", "registry"

    def message(self, canaries: KnownCanaryList) -> str:
        name = f"pool account {self.account!r}" if self.account else "an account"
        return (
            f"{name} ({self.account_id}, {self.how}) is on a public list of known canary accounts "
            f"({self.note or 'listed'}; source: {canaries.describe_source()}): secret scanners recognise "
            "its keys as canaries offline, so an attacker using one may never touch them. Mint in an "
            "account that is not listed."
        )


def check_accounts(pool: Iterable[tuple[str, str, str]], canaries: KnownCanaryList) -> list[Finding]:
    """Findings for the (account name, account id, how learned) triples that are listed."""
    found: dict[str, Finding] = {}
    for name, account_id, how in pool:
        note = canaries.accounts.get(account_id)
        if note is not None and account_id not in found:
            found[account_id] = Finding(name, account_id, note, how)
    return list(found.values())


__all__ = [
    "CanaryListError",
    "Finding",
    "KnownCanaryList",
    "account_from_key_id",
    "check_accounts",
    "load_list",
]
