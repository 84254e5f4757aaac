"""Where a reader's code came from: the frozen provenance a read carries for triage.

A reader chooses its own name, so a name says nothing about what the program is. What the agent can
establish about the file instead: who owns it, whether a non-root user could have written it or a
directory above it, whether it lies in a user-writable place, which package owns it (and whether its
content still matches the package database), its code signature where the OS reports one, and its
SHA-256. For an interpreter the same is recorded for the script it runs.

This module is data only (built by agent.events.probe on the agent's consumer thread, never in a
sensor's capture path); `to_dict()` is the shape stored in the read log and sent to the issuer
(docs/api.md, "provenance").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent.events.bounds import NAME_BUDGET, printable

# Where a file lies when a non-root user could have put it there.
USER_PLACES = ("home", "/tmp", "/var/tmp", "/dev/shm", "/run/user", "Downloads", "temp")


@dataclasses.dataclass(frozen=True, slots=True)
class CodeSigning:
    """What the sensor's OS said about the reader's code signature (macOS eslogger; Windows where
    the event carries it). Ad-hoc signatures name themselves, so they vouch for nothing."""

    signing_id: str | None = None  # macOS: com.apple.cat, com.trufflesecurity.trufflehog
    team_id: str | None = None  # macOS Developer ID team; None for ad-hoc and Apple's own
    platform_binary: bool | None = None  # macOS: part of the OS (signed by Apple)
    valid: bool | None = None  # the kernel's CS_VALID, when the flags were reported
    adhoc: bool | None = None  # CS_ADHOC: signed by nobody in particular
    signer: str | None = None  # Windows: the publisher, when the event carries it
    source: str = "eslogger"

    def vouches(self) -> bool:
        """Signed by someone: Apple's platform binaries, or a valid non-ad-hoc signature with a team."""
        if self.platform_binary:
            return True
        if self.signer:
            return True
        return bool(self.team_id) and self.valid is not False and not self.adhoc

    def describe(self) -> str:
        if self.platform_binary:
            return f"Apple platform binary {self.signing_id or '?'}"
        if self.signer:
            return f"signed by {self.signer}"
        if self.team_id and not self.adhoc:
            return f"signed by team {self.team_id} ({self.signing_id or '?'})"
        if self.adhoc:
            return f"ad-hoc signature only ({self.signing_id or '?'})"
        return "unsigned"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class FileProvenance:
    """One file (an executable or a script) as the agent found it. Every field but `path` may be
    unknown (None): a file that vanished, a platform without owners, a hash that was too costly."""

    path: str
    error: str | None = None  # why the file could not be examined (gone, not a regular file, ...)
    uid: int | None = None
    owner: str | None = None
    gid: int | None = None
    mode: str | None = None  # "0755"
    size: int | None = None
    user_writable: bool | None = None  # a non-root user could have written it or a directory above
    writable_via: str | None = None  # the first such place and why: "/tmp/x: owner alice"
    user_place: str | None = None  # one of USER_PLACES, or None
    package: str | None = None  # the owning package, None when no package owns it
    package_db: str | None = None  # "dpkg" | "rpm" | None (no package database on this system)
    package_verified: bool | None = None  # content matches the database's checksum (dpkg md5sums)
    sha256: str | None = None
    hash_error: str | None = None  # why there is no hash (too large, too slow, unreadable)
    replaced: bool = False  # the file at this path is no longer the one the process was started from

    def root_controlled(self) -> bool:
        """Owned by root and nothing above it writable by anyone else (POSIX)."""
        return self.error is None and self.uid == 0 and self.user_writable is False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class ReaderProvenance:
    """The reader's executable, the script an interpreter runs, and the code signature."""

    exe: FileProvenance | None = None
    script: FileProvenance | None = None
    # "file" (a script on disk), "module" (python -m NAME, resolved or not), "inline" (-c/-e code)
    script_kind: str | None = None
    script_name: str | None = None  # the script or module as given on the command line
    signing: CodeSigning | None = None
    argv0_is_exe: bool | None = None  # argv[0] leads to the executable (a PATH lookup, a symlink)
    error: str | None = None  # the probe as a whole failed or ran out of time

    def to_dict(self) -> dict[str, Any]:
        return {
            "exe": self.exe.to_dict() if self.exe else None,
            "script": self.script.to_dict() if self.script else None,
            "script_kind": self.script_kind,
            "script_name": self.script_name,
            "signing": self.signing.to_dict() if self.signing else None,
            "argv0_is_exe": self.argv0_is_exe,
            "error": self.error,
        }


def signing_from_flags(
    signing_id: object, team_id: object, platform_binary: object, flags: object
) -> CodeSigning | None:
    """A CodeSigning from eslogger's process fields (es_process_t); None if it reported none."""
    cs_valid, cs_adhoc = 0x1, 0x2  # <kern/cs_blobs.h>
    flag_bits = flags if isinstance(flags, int) and not isinstance(flags, bool) else None
    if signing_id is None and team_id is None and platform_binary is None and flag_bits is None:
        return None
    return CodeSigning(
        signing_id=printable(signing_id)[:NAME_BUDGET] if isinstance(signing_id, str) else None,
        team_id=printable(team_id)[:NAME_BUDGET] if isinstance(team_id, str) and team_id else None,
        platform_binary=platform_binary if isinstance(platform_binary, bool) else None,
        valid=None if flag_bits is None else bool(flag_bits & cs_valid),
        adhoc=None if flag_bits is None else bool(flag_bits & cs_adhoc),
    )


def describe_file(prov: FileProvenance | None) -> str:
    """The evidence in one line: path, owner, writability, place, package or none, hash prefix."""
    if prov is None:
        return "not examined"
    if prov.error:
        return f"{prov.path}: {prov.error}"
    owner = prov.owner or (str(prov.uid) if prov.uid is not None else "?")
    parts = [prov.path, f"owner {owner}"]
    if prov.mode:
        parts.append(f"mode {prov.mode}")
    if prov.user_writable:
        parts.append(f"writable by a non-root user ({prov.writable_via})")
    elif prov.user_writable is False:
        parts.append("not writable by non-root users")
    if prov.user_place:
        parts.append(f"in {prov.user_place}")
    if prov.package_db is not None:
        package = prov.package or "none"
        if prov.package and prov.package_verified is False:
            package += " (CONTENT DIFFERS from the package)"
        parts.append(f"package {package}")
    parts.append(
        f"sha256 {prov.sha256[:12]}…" if prov.sha256 else f"sha256 ? ({prov.hash_error or 'unknown'})"
    )
    if prov.replaced:
        parts.append("replaced since the process started")
    return ", ".join(parts)


__all__ = [
    "USER_PLACES",
    "CodeSigning",
    "FileProvenance",
    "ReaderProvenance",
    "describe_file",
    "signing_from_flags",
]
