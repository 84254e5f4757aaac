"""Plant, replace, inspect and remove one canary profile in an AWS shared credentials file.

The editor changes exactly one ``[profile]`` section and keeps every other byte: comments, blank
lines, each line's own terminator (LF, CRLF, CR; added lines use the file's usual one), a UTF-8
BOM, odd spacing, a last line without newline. A new section is appended at the end of the file;
removal deletes the header and its option lines (comments and blank lines after the last option
stay, they usually belong to the next section) and re-applies the file's "no final newline"
convention, so ``unplant(plant(x)) == x`` byte for byte for every file we accept.

Ownership is proven only by the section's ``aws_access_key_id`` being one the caller owns: nothing
in the file marks the profile as a canary. Any file botocore would refuse (duplicate sections or
keys, lines before a header, undecodable bytes...) is refused and left untouched, and every edit is
re-parsed with botocore's parser before it is written: other sections must read exactly as before
and the profile must resolve to the planted key, or nothing is written.

Pure functions (``*_bytes``) do no I/O; the ``*_file`` functions add agent.credfile.safefs's safe atomic
read/write as root (owner, 0600, symlink-proof). Errors: see agent.credfile.errors.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.credfile import inifile
from agent.credfile.errors import (
    ConcurrentChangeError,
    ConflictError,
    CredfileError,
    DuplicateSectionError,
    MissingDirectoryError,
    ParseError,
    UnsafePathError,
)
from agent.credfile.inifile import Document, Entry, Line, Section
from agent.credfile.safefs import read_file, update_file

__all__ = [
    "REDIRECT_KEYS",
    "CanaryCredential",
    "ConcurrentChangeError",
    "ConflictError",
    "CredfileError",
    "DuplicateSectionError",
    "MissingDirectoryError",
    "ParseError",
    "PlantResult",
    "SectionState",
    "SectionStatus",
    "UnsafePathError",
    "inspect_bytes",
    "inspect_file",
    "plant_bytes",
    "plant_file",
    "unplant_bytes",
    "unplant_file",
    "validate_profile",
]

KEY_ID = "aws_access_key_id"
SECRET = "aws_secret_access_key"
TOKEN = "aws_session_token"
LEGACY_TOKEN = "aws_security_token"  # botocore reads it before aws_session_token
CREDENTIAL_KEYS = (KEY_ID, SECRET, TOKEN, LEGACY_TOKEN)
# Keys that make botocore's credential chain pick a provider that comes BEFORE the shared
# credentials file (assume-role, web identity; sso_* too): a profile with one of them never uses
# its static keys, so the canary would be dead.
REDIRECT_KEYS = frozenset({"role_arn", "web_identity_token_file", "credential_source", "source_profile"})
_PROFILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")
_VALUE_RE = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII, no spaces: survives INI parsing


@dataclass(frozen=True)
class CanaryCredential:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for label, value in (("access key id", self.access_key_id), ("secret", self.secret_access_key)):
            if not isinstance(value, str) or not _VALUE_RE.fullmatch(value):
                raise ValueError(f"{label} must be 1-4096 printable ASCII characters without spaces")
        if self.session_token is not None and not _VALUE_RE.fullmatch(self.session_token):
            raise ValueError("session token must be 1-4096 printable ASCII characters without spaces")

    def values(self) -> dict[str, str]:
        found = {KEY_ID: self.access_key_id, SECRET: self.secret_access_key}
        if self.session_token is not None:
            found[TOKEN] = self.session_token
        return found


class SectionStatus(enum.StrEnum):
    ABSENT = "absent"  # no section of that name
    OURS = "ours"  # key id is owned and the credential keys are intact (and match `expected`)
    ALTERED = "altered"  # key id is owned but the secret/token are missing or differ: re-plant
    FOREIGN = "foreign"  # a section of that name whose key id we do not own: never touched
    DUPLICATE = "duplicate"  # the profile's section appears twice (botocore refuses the file)
    UNPARSEABLE = "unparseable"  # botocore would refuse the file for another reason


@dataclass(frozen=True)
class SectionState:
    status: SectionStatus
    access_key_id: str | None = None  # only for OURS/ALTERED (a foreign key id is not reported)
    line: int | None = None  # 1-based line of the section header or of the problem
    detail: str = ""


@dataclass(frozen=True)
class PlantResult:
    action: Literal["added", "replaced", "unchanged"]
    line: int  # 1-based line of the section header in the new file
    replaced_key_id: str | None = None  # the owned key id that was there before, if any


def validate_profile(profile: str, *, force_default: bool = False) -> None:
    """ValueError unless ``profile`` is a plain name we can write as ``[profile]`` unambiguously."""
    if not isinstance(profile, str) or not _PROFILE_RE.fullmatch(profile):
        raise ValueError(f"invalid profile name {profile!r}: use letters, digits and _ . @ + - (max 128)")
    if profile == "DEFAULT":
        raise ValueError("profile name 'DEFAULT' is configparser's defaults section, not a profile")
    if profile == "default" and not force_default:
        raise ValueError(
            "refusing to plant the 'default' profile (it would hijack the user's own "
            "commands); pass force_default=True to do it anyway"
        )


# --- pure functions -------------------------------------------------------------------------------


def plant_bytes(
    data: bytes,
    profile: str,
    cred: CanaryCredential,
    owned_key_ids: Collection[str],
    *,
    force_default: bool = False,
) -> bytes:
    """Add the profile (at the end) or rewrite our own one in place; ConflictError if it is not ours."""
    return _plant(data, profile, cred, owned_key_ids, force_default)[0]


def unplant_bytes(data: bytes, profile: str, owned_key_ids: Collection[str]) -> bytes:
    """Remove the profile if its key id is owned; otherwise return ``data`` unchanged."""
    validate_profile(profile, force_default=True)
    doc = inifile.parse(data)
    section = doc.find(profile)
    if section is None or _owned_key_id(data, section, owned_key_ids) is None:
        return data
    new = inifile.remove_section(doc, section)
    _verify(data, new, profile, None)
    return new


def inspect_bytes(
    data: bytes,
    profile: str,
    owned_key_ids: Collection[str],
    expected: CanaryCredential | None = None,
) -> SectionState:
    """What the file holds under ``profile``; never raises for file content (see SectionStatus)."""
    validate_profile(profile, force_default=True)
    try:
        doc = inifile.parse(data)
    except DuplicateSectionError as exc:
        status = SectionStatus.DUPLICATE if exc.section == profile else SectionStatus.UNPARSEABLE
        return SectionState(status, line=exc.line, detail=exc.reason)
    except ParseError as exc:
        return SectionState(SectionStatus.UNPARSEABLE, line=exc.line, detail=exc.reason)
    section = doc.find(profile)
    if section is None:
        return SectionState(SectionStatus.ABSENT)
    line = section.header + 1
    key_id = _owned_key_id(data, section, owned_key_ids)
    if key_id is None:
        return SectionState(SectionStatus.FOREIGN, line=line, detail="the key id is not one we own")
    values = _view(data)[profile]
    problems = [f"{SECRET} is missing or empty"] if not values.get(SECRET) else []
    if expected is not None:
        wanted = expected.values()
        problems += [
            f"{k} differs from the planted credential"
            for k in (KEY_ID, SECRET, TOKEN)
            if values.get(k) != wanted.get(k)
        ]
    if LEGACY_TOKEN in values:
        problems.append(f"{LEGACY_TOKEN} is set")
    status = SectionStatus.ALTERED if problems else SectionStatus.OURS
    return SectionState(status, access_key_id=key_id, line=line, detail="; ".join(problems))


# --- file functions -------------------------------------------------------------------------------


def plant_file(
    path: Path,
    profile: str,
    cred: CanaryCredential,
    owned_key_ids: Collection[str],
    *,
    owner_uid: int,
    owner_gid: int,
    force_default: bool = False,
    before_replace: Callable[[int], None] | None = None,
) -> PlantResult:
    """plant_bytes on the file, written atomically as ``owner_uid:owner_gid`` mode 0600.

    Creates the file and its directory (0700) if missing; the directory above must exist.
    ``before_replace(fd)``: see safefs.update_file (the new version's fd, just before the rename).
    """
    validate_profile(profile, force_default=force_default)
    results: list[PlantResult] = []

    def edit(old: bytes | None) -> bytes:
        new, result = _plant(old or b"", profile, cred, owned_key_ids, force_default)
        results.append(result)
        return new

    with located(path):
        update_file(
            path,
            edit,
            owner_uid=owner_uid,
            owner_gid=owner_gid,
            create_parent=True,
            before_replace=before_replace,
        )
    return results[-1]


def unplant_file(
    path: Path,
    profile: str,
    owned_key_ids: Collection[str],
    *,
    owner_uid: int,
    owner_gid: int,
    before_replace: Callable[[int], None] | None = None,
) -> bool:
    """unplant_bytes on the file; True if a section was removed. A missing file is not an error."""
    validate_profile(profile, force_default=True)

    def edit(old: bytes | None) -> bytes | None:
        return None if old is None else unplant_bytes(old, profile, owned_key_ids)

    with located(path):
        return update_file(
            path,
            edit,
            owner_uid=owner_uid,
            owner_gid=owner_gid,
            create_parent=False,
            before_replace=before_replace,
        )


def inspect_file(
    path: Path,
    profile: str,
    owned_key_ids: Collection[str],
    *,
    owner_uid: int,
    expected: CanaryCredential | None = None,
) -> SectionState:
    """inspect_bytes on the file (read safely); ABSENT if the file does not exist."""
    with located(path):
        data = read_file(path, owner_uid=owner_uid)
    if data is None:
        return SectionState(SectionStatus.ABSENT)
    return inspect_bytes(data, profile, owned_key_ids, expected)


# --- internals ------------------------------------------------------------------------------------


class located:
    """Attach the path to any CredfileError escaping the block (pure code does not know it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, CredfileError) and exc.path is None:
            exc.at(self.path)


def _unterminated(doc: Document) -> bool:
    return bool(doc.lines) and not doc.lines[-1].end


def _text(data: bytes) -> str:
    return inifile.decode(data)[1]


def _view(data: bytes) -> dict[str, dict[str, str]]:
    return inifile.semantic_view(_text(data))


def _owned_key_id(data: bytes, section: Section, owned: Collection[str]) -> str | None:
    """The section's own aws_access_key_id if we own it (a [DEFAULT] one does not count)."""
    if section.entry(KEY_ID) is None:
        return None
    key_id = _view(data)[section.name].get(KEY_ID)
    return key_id if key_id in owned else None


def _plant(
    data: bytes, profile: str, cred: CanaryCredential, owned: Collection[str], force_default: bool
) -> tuple[bytes, PlantResult]:
    validate_profile(profile, force_default=force_default)
    doc = inifile.parse(data)
    eol = doc.line_ending()
    section = doc.find(profile)
    if section is None:
        new = inifile.append_section(doc, profile, list(cred.values().items()))
        result = PlantResult("added", len(doc.lines) + 1)
    else:
        old_key_id = _owned_key_id(data, section, owned)
        if old_key_id is None:
            raise ConflictError(
                f"a [{profile}] section exists and its key id is not one we own", line=section.header + 1
            )
        new = _rewrite(doc, section, cred, eol).render()
        action: Literal["replaced", "unchanged"] = "unchanged" if new == data else "replaced"
        result = PlantResult(action, section.header + 1, old_key_id)
    _verify(data, new, profile, cred.values())
    return new, result


def _rewrite(doc: Document, section: Section, cred: CanaryCredential, eol: str) -> Document:
    """Our section with its credential lines rewritten in place; everything else as it was."""
    wanted = cred.values()
    rewrite: dict[int, Entry] = {}
    skip: set[int] = set()
    missing: list[str] = []
    kept: list[Entry] = []
    for name in CREDENTIAL_KEYS:
        entry = section.entry(name)
        if name in wanted and entry is not None:
            rewrite[entry.first] = entry
            kept.append(entry)
            skip.update(range(entry.first + 1, entry.last + 1))
        elif name in wanted:
            missing.append(name)
        elif entry is not None:
            skip.update(range(entry.first, entry.last + 1))
    anchor = max(kept, key=lambda e: e.last)  # the key id entry is always there
    indent = inifile.indent(doc.lines[anchor.first].text)
    out: list[Line] = []
    for index, line in enumerate(doc.lines):
        if index in rewrite:
            entry = rewrite[index]
            out.append(Line(inifile.with_value(line.text, wanted[entry.name]), doc.lines[entry.last].end))
        elif index not in skip:
            out.append(Line(line.text, line.end))
        if index == anchor.last:
            out.extend(Line(f"{indent}{name} = {wanted[name]}", eol) for name in missing)
    return Document(doc.bom, inifile.finish(out, _unterminated(doc), eol), [])


def _verify(before: bytes, after: bytes, profile: str, wanted: dict[str, str] | None) -> None:
    """Re-parse the edit the way botocore does; refuse to write anything that reads differently."""
    inifile.check_with_configparser(_text(after))
    changed = inifile.first_changed_section(_text(before), _text(after), profile)
    if changed is not None:
        raise ParseError(f"refusing to edit: section [{changed}] would read differently afterwards")
    old, new = _view(before), _view(after)
    if wanted is None:
        if profile in new:
            raise ParseError(f"refusing to edit: [{profile}] would still be there afterwards")
        return
    resolved = new.get(profile, {})
    for key in CREDENTIAL_KEYS:
        if resolved.get(key) != wanted.get(key):
            raise ConflictError(
                f"[{profile}] would not resolve to the planted credential ({key} "
                "differs; is it set in a [DEFAULT] section?)"
            )
    redirect = sorted(key for key in resolved if key in REDIRECT_KEYS or key.startswith("sso_"))
    if redirect:  # botocore would assume a role / use SSO instead of the planted keys
        raise ConflictError(
            f"[{profile}] would inherit {redirect[0]} (from a [DEFAULT] section?), so AWS tools "
            "would not use the planted credential"
        )
    base = old.get(profile, old[inifile.DEFAULT_SECTION])
    if {k: v for k, v in resolved.items() if k not in CREDENTIAL_KEYS} != {
        k: v for k, v in base.items() if k not in CREDENTIAL_KEYS
    }:
        raise ParseError(f"refusing to edit: the other keys of [{profile}] would change")
