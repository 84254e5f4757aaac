"""Classification that a name cannot fool: a trusted label holds only when provenance agrees.

A rule (agent.events.classify) says what a reader *claims* to be from its name or command line. For
the labels that excuse a read — an AWS tool, a secret scanner, a backup/indexer/antivirus, an editor
— the claim holds only if what the rule matched is vouched for:

* package-owned (and its content still matches the package database, when it records a checksum),
  not writable by non-root users, and not in a user-writable place; or
* owned by root, nothing above it writable by a non-root user, and not in a user-writable place; or
* signed (macOS: an Apple platform binary or a valid Developer ID signature with a team id; Windows:
  the signer, where the event carries it); on Windows without a signer, an admin-only location
  (Program Files, Windows) is the best the agent can tell, and says so; or
* when the rule pins hashes, packages, signing ids, team ids or signers: exactly what it pins.

An interpreter's claim rests on the interpreter *and* the script it runs; inline code (`python -c`)
has nothing on disk to vouch for it. A name taken from argv[0] must lead to the executable (`exec -a
trufflehog /bin/cat` does not). Otherwise the reader is "masquerading as <label>", which the issuer
names as suspicious with this evidence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from agent.events.classify import ARGV0, CMDLINE, EXE, MASQUERADING, SCRIPT, UNKNOWN, Classifier, Rule
from agent.events.model import ReadEvent
from agent.events.provenance import CodeSigning, FileProvenance, ReaderProvenance, describe_file
from agent.events.scripts import INLINE, MODULE

TRUSTED_LABELS = frozenset({"aws_tool", "secret_scanner", "indexer_backup_av", "editor"})
_WINDOWS_PROTECTED = ("c:\\program files\\", "c:\\program files (x86)\\", "c:\\windows\\")


@dataclasses.dataclass(frozen=True, slots=True)
class Classification:
    """The label of one read; `claimed` is the rule's label when provenance did not support it."""

    label: str
    rule: str | None = None
    claimed: str | None = None
    reason: str | None = None  # the evidence the label rests on (or why the claim failed)


@dataclasses.dataclass(frozen=True, slots=True)
class _Subject:
    role: str  # "executable", "interpreter", "script", "parent process"
    file: FileProvenance | None
    signing: CodeSigning | None = None


def _pinned(rule: Rule, subject: _Subject) -> tuple[bool, str]:
    """Do the rule's pins all match? (Each pinned kind must match one of its values.)"""
    prov, signing = subject.file, subject.signing
    actual = {
        "sha256": prov.sha256 if prov else None,
        "package": prov.package if prov and prov.package_verified is not False else None,
        "signing_id": signing.signing_id if signing else None,
        "team_id": signing.team_id if signing and not signing.adhoc else None,
        "signer": signing.signer if signing else None,
    }
    for kind, values in rule.pins:
        if actual[kind] is None or actual[kind] not in values:
            return False, f"its {kind} {actual[kind] or 'unknown'} is not one the rule {rule.name!r} pins"
    kinds = ", ".join(kind for kind, _ in rule.pins)
    return True, f"matches the {kinds} the rule {rule.name!r} pins"


def _vouched(subject: _Subject) -> tuple[bool, str]:
    """Does the file's provenance vouch for it? (ok, why)"""
    prov, signing = subject.file, subject.signing
    if signing is not None and signing.vouches():
        return True, signing.describe()
    if prov is None:
        return False, "it could not be examined"
    if prov.error:
        return False, prov.error
    if prov.replaced:
        return False, "the file was replaced after the process started"
    if prov.package and prov.package_verified is False:
        return False, f"its content differs from what package {prov.package} installed"
    if prov.user_writable:
        return False, f"a non-root user could have written it ({prov.writable_via})"
    if prov.user_place:
        return False, f"it lies in a user-writable place ({prov.user_place})"
    if prov.package and prov.user_writable is False:
        return True, f"installed by package {prov.package}"
    if prov.root_controlled():
        return True, "owned by root and not writable by non-root users"
    if prov.uid is None and prov.path.lower().startswith(_WINDOWS_PROTECTED):
        return True, "in an admin-only location (default ACLs; the signer is unknown)"
    if signing is not None:
        return False, signing.describe()
    if prov.uid not in (None, 0):
        return False, f"owned by {prov.owner or prov.uid}, not root"
    return False, "nothing vouches for it (no package, owner or signature known)"


def _subjects(
    event: ReadEvent,
    subject: str,
    prov: ReaderProvenance,
    ancestor_file: Callable[[str], FileProvenance] | None,
) -> tuple[list[_Subject], str | None]:
    """What must be vouched for, or a reason the claim fails outright."""
    exe = _Subject("executable", prov.exe, prov.signing)
    if subject == EXE:
        return [exe], None
    if subject == ARGV0:
        if prov.argv0_is_exe is False:
            argv0 = event.cmdline[0] if event.cmdline else "?"
            return [], f"argv[0] {argv0!r} does not lead to the executable {event.exe}"
        return [exe], None
    if subject.startswith("ancestor:"):
        index = int(subject.split(":", 1)[1])
        parent = event.ancestors[index] if index < len(event.ancestors) else None
        if parent is None or not parent.exe or ancestor_file is None:
            return [], "the parent process it names could not be examined"
        return [_Subject(f"parent process (pid {parent.pid})", ancestor_file(parent.exe))], None
    if prov.script_kind is None:  # CMDLINE on a program that runs no script
        return [exe], None
    interpreter = dataclasses.replace(exe, role="interpreter")
    if prov.script_kind == INLINE:
        return [], "inline code on the command line: nothing on disk vouches for it"
    if prov.script is None:
        return [], f"the script {prov.script_name or '?'} could not be found on disk"
    if prov.script_kind == MODULE and prov.script.error:
        return [], f"module {prov.script_name}: {prov.script.error}"
    assert subject in (SCRIPT, CMDLINE)
    return [interpreter, _Subject("script", prov.script)], None


def judge(
    classifier: Classifier,
    event: ReadEvent,
    provenance: ReaderProvenance | None,
    ancestor_file: Callable[[str], FileProvenance] | None = None,
) -> Classification:
    """The label of `event`: the first matching rule's, if provenance supports it."""
    rule, subject = classifier.match(event)
    if rule is None or subject is None:
        return Classification(UNKNOWN)
    if rule.label not in TRUSTED_LABELS and not rule.pins:
        return Classification(rule.label, rule.name)
    claim = f"masquerading as {rule.label}"
    if provenance is None or (provenance.error and provenance.exe is None):
        why = provenance.error if provenance else "no provenance was recorded"
        return Classification(MASQUERADING, rule.name, rule.label, f"{claim}: {why}")
    subjects, failed = _subjects(event, subject, provenance, ancestor_file)
    if failed:
        return Classification(MASQUERADING, rule.name, rule.label, f"{claim}: {failed}")
    evidence = []
    for item in subjects:
        ok, why = _pinned(rule, item) if rule.pins and item.role != "interpreter" else _vouched(item)
        shown = describe_file(item.file)
        if not ok:
            return Classification(
                MASQUERADING, rule.name, rule.label, f"{claim}: the {item.role} {shown}: {why}"
            )
        evidence.append(f"the {item.role} {shown}: {why}")
    return Classification(rule.label, rule.name, None, "provenance agrees: " + "; ".join(evidence))


__all__ = ["TRUSTED_LABELS", "Classification", "judge"]
