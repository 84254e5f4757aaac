"""Optional: a region for the canary profile in ~/.aws/config (``[profile NAME]``, ``[default]``).

A canary profile that has no region makes some tools fail before they ever call AWS; a region in
the config file lets the attacker's first command go out (and be detected). The config file names
profiles differently from the credentials file: ``[profile NAME]``, except ``[default]``; botocore
maps a section to a profile with ``shlex.split`` (``[profile  "NAME" ]`` is NAME too) and a later
section silently wins over an earlier one for the same profile.

Nothing marks the section as ours, so ownership is its exact shape: the header ``[profile NAME]``
and one option, ``region = <the region we planted>``. Anything else that resolves to NAME is the
user's: plant refuses (ConflictError), unplant leaves it. Same byte-exact editing, same botocore
check and the same safe atomic writes as agent.credfile.

Note for callers: a config-file profile of the same name (``role_arn``, ``credential_process``,
``sso_*``...) would take precedence over the credentials file; ``inspect_region_bytes`` reports
such a section as FOREIGN so the agent can report the placement as shadowed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from agent.credfile import inifile
from agent.credfile.edit import SectionState, SectionStatus, located, validate_profile
from agent.credfile.errors import ConflictError, DuplicateSectionError, ParseError
from agent.credfile.inifile import Document, Section
from agent.credfile.safefs import read_file, update_file

__all__ = [
    "config_section_name",
    "inspect_region_bytes",
    "inspect_region_file",
    "plant_region_bytes",
    "plant_region_file",
    "unplant_region_bytes",
    "unplant_region_file",
]

_REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def config_section_name(profile: str) -> str:
    return "default" if profile == "default" else f"profile {profile}"


def _profile_of(section_name: str) -> str | None:
    """The profile botocore's build_profile_map files this section under, if any."""
    if section_name == "default":
        return "default"
    if not section_name.startswith("profile"):
        return None
    try:
        parts = shlex.split(section_name)
    except ValueError:
        return None
    return parts[1] if len(parts) == 2 else None


def _matching(doc: Document, profile: str) -> list[Section]:
    return [s for s in doc.sections if _profile_of(s.name) == profile]


def _is_ours(data: bytes, section: Section, profile: str, region: str | None) -> bool:
    if section.name != config_section_name(profile) or [e.name for e in section.entries] != ["region"]:
        return False
    value = inifile.semantic_view(inifile.decode(data)[1])[section.name].get("region")
    return value == region if region is not None else bool(value)


def _check_region(region: str) -> None:
    if not _REGION_RE.fullmatch(region):
        raise ValueError(f"invalid region {region!r}")


def inspect_region_bytes(data: bytes, profile: str, region: str | None = None) -> SectionState:
    """ABSENT, OURS (exactly ``region = <region>``; any region if None), FOREIGN, DUPLICATE, UNPARSEABLE."""
    validate_profile(profile, force_default=True)
    try:
        doc = inifile.parse(data)
    except DuplicateSectionError as exc:
        status = SectionStatus.DUPLICATE if _profile_of(exc.section) == profile else SectionStatus.UNPARSEABLE
        return SectionState(status, line=exc.line, detail=exc.reason)
    except ParseError as exc:
        return SectionState(SectionStatus.UNPARSEABLE, line=exc.line, detail=exc.reason)
    sections = _matching(doc, profile)
    if not sections:
        return SectionState(SectionStatus.ABSENT)
    line = sections[-1].header + 1
    if len(sections) > 1:
        return SectionState(SectionStatus.DUPLICATE, line=line, detail="several sections name this profile")
    if _is_ours(data, sections[0], profile, region):
        return SectionState(SectionStatus.OURS, line=line)
    return SectionState(SectionStatus.FOREIGN, line=line, detail="the config file already configures it")


def plant_region_bytes(data: bytes, profile: str, region: str, *, force_default: bool = False) -> bytes:
    """Append ``[profile NAME]`` with ``region``; unchanged if ours already; ConflictError otherwise."""
    validate_profile(profile, force_default=force_default)
    _check_region(region)
    doc = inifile.parse(data)  # ParseError / DuplicateSectionError exactly when botocore refuses
    sections = _matching(doc, profile)
    if len(sections) == 1 and _is_ours(data, sections[0], profile, region):
        return data
    if sections:
        raise ConflictError(
            f"profile {profile!r} is already configured in this file", line=sections[0].header + 1
        )
    name = config_section_name(profile)
    new = inifile.append_section(doc, name, [("region", region)])
    _verify(data, new, name, region)
    return new


def unplant_region_bytes(data: bytes, profile: str, region: str) -> bytes:
    """Remove the section only if it is exactly ours; otherwise return ``data`` unchanged."""
    validate_profile(profile, force_default=True)
    doc = inifile.parse(data)
    sections = _matching(doc, profile)
    if len(sections) != 1 or not _is_ours(data, sections[0], profile, region):
        return data
    new = inifile.remove_section(doc, sections[0])
    _verify(data, new, sections[0].name, None)
    return new


def _verify(before: bytes, after: bytes, name: str, region: str | None) -> None:
    old_text, new_text = inifile.decode(before)[1], inifile.decode(after)[1]
    inifile.check_with_configparser(new_text)
    changed = inifile.first_changed_section(old_text, new_text, name)
    if changed is not None:
        raise ParseError(f"refusing to edit: section [{changed}] would read differently afterwards")
    view = inifile.semantic_view(new_text)
    if (view[name].get("region") if name in view else None) != region:
        raise ParseError(f"refusing to edit: [{name}] would not read as planted")


def plant_region_file(
    path: Path, profile: str, region: str, *, owner_uid: int, owner_gid: int, force_default: bool = False
) -> bool:
    """plant_region_bytes on the file (safe atomic write, 0600, owner); True if it wrote."""
    validate_profile(profile, force_default=force_default)
    _check_region(region)

    def edit(old: bytes | None) -> bytes:
        return plant_region_bytes(old or b"", profile, region, force_default=force_default)

    with located(path):
        return update_file(path, edit, owner_uid=owner_uid, owner_gid=owner_gid, create_parent=True)


def unplant_region_file(path: Path, profile: str, region: str, *, owner_uid: int, owner_gid: int) -> bool:
    """unplant_region_bytes on the file; True if a section was removed."""
    validate_profile(profile, force_default=True)

    def edit(old: bytes | None) -> bytes | None:
        return None if old is None else unplant_region_bytes(old, profile, region)

    with located(path):
        return update_file(path, edit, owner_uid=owner_uid, owner_gid=owner_gid, create_parent=False)


def inspect_region_file(
    path: Path, profile: str, region: str | None = None, *, owner_uid: int
) -> SectionState:
    with located(path):
        data = read_file(path, owner_uid=owner_uid)
    return SectionState(SectionStatus.ABSENT) if data is None else inspect_region_bytes(data, profile, region)
