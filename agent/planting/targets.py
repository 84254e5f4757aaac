"""Where canaries go, and the file-level operations on one target (through agent.credfile).

Targets: explicit `[[target]]` placements plus, with `all_users`, every human user's
`~/.aws/credentials` (agent.planting.users). The functions below wrap the credentials-file editor with the
owner's uid/gid, and (when `region` is configured) the optional region in the sibling
`~/.aws/config` (agent.credfile.awsconfig), so the planter deals only in paths and users.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.credfile import awsconfig, inifile, safefs
from agent.credfile import edit as credfile
from agent.planting.users import LocalUser, UnknownUser, discover_human_users, lookup_user

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A resolved placement: where the file is and which local account owns it."""

    path: str
    owner: LocalUser
    source: str  # explicit | all_users


def resolve_targets(config: AgentConfig) -> tuple[list[Target], dict[str, str]]:
    """Explicit targets plus (with all_users) every human user's ~/.aws/credentials.

    Returns the targets and, per explicit path whose owner is unknown, an error sentence.
    An explicit target wins over the all-users entry for the same path.
    """
    targets: dict[str, Target] = {}
    errors: dict[str, str] = {}
    if config.all_users:
        for user in discover_human_users(config.passwd_file, config.login_defs):
            path = os.path.normpath(user.credentials_path)
            targets[path] = Target(path, user, "all_users")
    for spec in config.targets:
        try:
            owner = lookup_user(spec.owner, config.passwd_file)
        except UnknownUser as exc:
            errors[spec.path] = str(exc)
            continue
        targets[spec.path] = Target(spec.path, owner, "explicit")
    return sorted(targets.values(), key=lambda t: t.path), errors


def _owner_ids(path: str, owner: LocalUser | None) -> tuple[int, int]:
    """The uid/gid files of this target must belong to: the owner's, else (user gone) the file's."""
    if owner is not None:
        return owner.uid, owner.gid
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    return st.st_uid, st.st_gid


def inspect_state(path: str, profile: str, owned: Iterable[str], owner: LocalUser | None) -> str:
    """absent | ours | altered | foreign | duplicate | unparseable (CredfileError for unsafe paths)."""
    return inspect_section(path, profile, owned, owner)[0]


def inspect_section(
    path: str, profile: str, owned: Iterable[str], owner: LocalUser | None
) -> tuple[str, str | None, str]:
    """(status, our access key id in the file or None, detail)."""
    uid, _gid = _owner_ids(path, owner)
    state = credfile.inspect_file(Path(path), profile, set(owned), owner_uid=uid)
    return str(state.status.value), state.access_key_id, state.detail


def plant_one(
    path: str,
    profile: str,
    issued: Any,
    owned: Iterable[str],
    owner: LocalUser,
    *,
    force_default: bool = False,
    before_replace: Callable[[int], None] | None = None,
) -> None:
    cred = credfile.CanaryCredential(issued.access_key_id, issued.secret_access_key, issued.session_token)
    credfile.plant_file(
        Path(path),
        profile,
        cred,
        set(owned),
        owner_uid=owner.uid,
        owner_gid=owner.gid,
        force_default=force_default,
        before_replace=before_replace,
    )


def unplant_one(
    path: str,
    profile: str,
    owned: Iterable[str],
    owner: LocalUser | None,
    *,
    before_replace: Callable[[int], None] | None = None,
) -> bool:
    uid, gid = _owner_ids(path, owner)
    return credfile.unplant_file(
        Path(path), profile, set(owned), owner_uid=uid, owner_gid=gid, before_replace=before_replace
    )


def read_target(path: str, owner: LocalUser | None) -> bytes | None:
    """The file's bytes (None: absent), read through agent.credfile.safefs like every access to a user's file.

    A symlinked file or ~/.aws, a FIFO or device, a hard link or a foreign owner is never opened
    (CredfileError): root following a user's symlink could read /etc/shadow, and opening a FIFO
    blocks forever."""
    uid, _gid = _owner_ids(path, owner)
    return safefs.read_file(path, owner_uid=uid)


def planted_secrets(path: str, profile: str, owner: LocalUser | None) -> list[str]:
    """The secret key and session token in the file's `profile` section (read safely), if any."""
    data = read_target(path, owner)
    if data is None:
        return []
    try:
        section = inifile.semantic_view(inifile.decode(data)[1]).get(profile, {})
    except (credfile.CredfileError, ValueError):
        return []
    return [v for k in (credfile.SECRET, credfile.TOKEN, credfile.LEGACY_TOKEN) if (v := section.get(k))]


def file_digest(path: str, owner: LocalUser | None) -> str | None:
    """SHA-256 of the file's bytes; None when absent or not a file the agent may read."""
    try:
        data = read_target(path, owner)
    except (credfile.CredfileError, OSError):
        return None
    return None if data is None else hashlib.sha256(data).hexdigest()


def inspect_targets(
    paths: Iterable[str], profile: str, owned: Iterable[str], owners: dict[str, LocalUser] | None = None
) -> dict[str, str]:
    """Read-only view (`tripkey-agent check`): the state of each file for our profile."""
    out = {}
    owned_set = set(owned)
    owners = owners or {}
    for path in paths:
        try:
            out[path] = inspect_state(path, profile, owned_set, owners.get(path))
        except credfile.CredfileError as exc:
            out[path] = f"error: {exc}"
    return out


def config_path_for(credentials_path: str) -> str:
    """The AWS config file next to a credentials file (~/.aws/config for ~/.aws/credentials)."""
    return os.path.join(os.path.dirname(credentials_path), "config")


def config_shadow(path: str, profile: str, owner: LocalUser | None) -> str | None:
    """Why AWS tools would NOT use the planted keys because of the sibling ~/.aws/config, or None.

    botocore merges the config file's ``[profile NAME]`` (and its [DEFAULT]) into the profile, and
    a role_arn, web identity or sso_* setting there wins over the credentials file's static keys:
    the canary would never be used. A config file that cannot be read or parsed is not judged here
    (botocore would then fail for every profile, which the user notices)."""
    uid, _gid = _owner_ids(config_path_for(path), owner)
    try:
        data = safefs.read_file(config_path_for(path), owner_uid=uid)
        if data is None:
            return None
        view = inifile.semantic_view(inifile.decode(data)[1])
    except (credfile.CredfileError, OSError, ValueError):
        return None
    section = view.get(awsconfig.config_section_name(profile), view[inifile.DEFAULT_SECTION])
    redirect = sorted(k for k in section if k in credfile.REDIRECT_KEYS or k.startswith("sso_"))
    if not redirect:
        return None
    return f"{config_path_for(path)} gives profile {profile!r} {redirect[0]}, which AWS tools use instead"


def plant_region(
    path: str, profile: str, region: str, owner: LocalUser, *, force_default: bool = False
) -> str | None:
    """Set the canary profile's region in the sibling config file; a sentence if it could not."""
    try:
        awsconfig.plant_region_file(
            Path(config_path_for(path)),
            profile,
            region,
            owner_uid=owner.uid,
            owner_gid=owner.gid,
            force_default=force_default,
        )
    except credfile.CredfileError as exc:
        return f"region not set in {config_path_for(path)}: {exc}"
    return None


def unplant_region(path: str, profile: str, region: str, owner: LocalUser | None) -> None:
    uid, gid = _owner_ids(config_path_for(path), owner)
    try:
        awsconfig.unplant_region_file(
            Path(config_path_for(path)), profile, region, owner_uid=uid, owner_gid=gid
        )
    except credfile.CredfileError as exc:
        log.warning("could not remove the region of %s from %s: %s", profile, config_path_for(path), exc)


__all__ = [
    "Target",
    "config_path_for",
    "config_shadow",
    "file_digest",
    "inspect_section",
    "inspect_state",
    "inspect_targets",
    "plant_one",
    "plant_region",
    "planted_secrets",
    "read_target",
    "resolve_targets",
    "unplant_one",
    "unplant_region",
]
