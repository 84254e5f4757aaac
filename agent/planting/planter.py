"""Plant, repair, refresh and retire canary credentials over the agent's targets.

One `Planter` owns every write to a credentials file (through agent.credfile) so that the repair
watcher, the periodic pass and the CLI share one set of rules:

* inspect first; never mint a credential for a file we must not touch (foreign section, duplicate
  sections, unparseable file);
* record a new access key id as owned BEFORE writing it, so a crash between the two still leaves a
  section the agent recognises as its own;
* per-target errors are recorded (status, last_error, heartbeat) and backed off; other targets go on;
* a conflict (a non-Tripkey section with our profile name) is reported once and left untouched;
* a file the agent must not open (replaced by a FIFO, a symlink, a directory, a file too large, a
  second name through a hard link, a symlinked ~/.aws) means the canary is gone or unverifiable: a
  tamper event saying what was found and who owns it (agent.planting.findings), once per situation,
  and status "tampered" ("not planted" in the heartbeat) until the file is usable again;
* a planted section that disappears or changes is a tamper: reported, and re-planted at once the
  first time, then after 1 min, 2 min, ... capped at 24 h if the user keeps removing it
  (the schedules are in agent.planting.schedule);
* every new version of a target file (a write is a temp file renamed over it: a new inode) is handed
  to `on_new_file(path, fd)` before the rename, so a sensor that watches inodes watches it before
  anyone can open it (the service passes the sensor's `watch_new_file`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from agent.clock import from_iso, to_iso, utcnow
from agent.config import AgentConfig
from agent.credfile import edit as credfile
from agent.planting.findings import Finding, examine, unexplained
from agent.planting.schedule import (
    CONFLICT_FIRST_DELAY,
    CONFLICT_MAX_DELAY,
    ERROR_FIRST_DELAY,
    ERROR_MAX_DELAY,
    TAMPER_RESET_AFTER,
    backoff,
    refresh_due,
    tamper_delay,
)
from agent.planting.targets import (
    Target,
    config_shadow,
    file_digest,
    inspect_section,
    plant_one,
    plant_region,
    planted_secrets,
    resolve_targets,
    unplant_one,
    unplant_region,
)
from agent.planting.users import LocalUser, UnknownUser, lookup_user
from agent.reporting.payloads import tamper_payload
from agent.state import StateStore, TargetState
from server_api_client import IssuerUnreachable, NotFound, TripkeyError

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], object]  # the result (e.g. Spool.put's) is ignored


class Planter:
    """Keeps every target planted; thread-safe per target (one write at a time per path)."""

    def __init__(
        self,
        config: AgentConfig,
        store: StateStore,
        client: Any,
        *,
        emit: EventSink | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        on_secret: Callable[[str], None] | None = None,
        on_new_file: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config = config
        self.on_secret = on_secret  # the read log scrubs these from command lines; never stored
        self.on_new_file = on_new_file  # (path, fd of the new version) before it is renamed in
        self.store = store
        self.client = client
        self.emit = emit or (lambda event: None)
        self.clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._writing: set[str] = set()
        self._digests: dict[str, str | None] = {}  # bytes we last wrote or accepted, per path
        self._targets: dict[str, Target] = {}
        self._known_secrets: set[str] = set()  # paths whose planted secret on_secret was told

    # ------------------------------------------------------------------ bookkeeping

    @property
    def device_id(self) -> str:
        device_id = self.store.state.device_id
        if not device_id:
            raise RuntimeError("not enrolled")
        return device_id

    def _lock(self, path: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(path, threading.Lock())

    def is_writing(self, path: str) -> bool:
        return path in self._writing

    def is_own_content(self, path: str) -> bool:
        """True when the file holds exactly the bytes the agent last wrote (our own change event)."""
        if path not in self._digests or self._digests[path] is None:
            return False  # nothing recorded, or the file was unreadable then: judge it
        return self._digests[path] == file_digest(path, self._targets_owner(path))

    def _before_replace(self, path: str) -> Callable[[int], None]:
        def hand_over(fd: int) -> None:
            if self.on_new_file is None:
                return
            try:
                self.on_new_file(path, fd)
            except Exception:  # the sensor's health says what it cannot watch; the plant goes on
                log.exception("%s: the sensor could not watch the new version", path)

        return hand_over

    def target(self, path: str) -> Target | None:
        return self._targets.get(path)

    @property
    def paths(self) -> list[str]:
        return sorted(self._targets)

    # ------------------------------------------------------------------ passes

    def sync(self, targets: Iterable[Target], errors: dict[str, str] | None = None) -> list[TargetState]:
        """Plant/repair/refresh every target; retire targets no longer configured. One pass."""
        targets = list(targets)
        self._targets = {t.path: t for t in targets}
        errors = errors or {}
        now = self.clock()
        with self.store.mutate() as st:
            for path, message in errors.items():
                ts = st.targets.get(path)
                if ts is not None:
                    ts.status, ts.last_error, ts.last_check = "error", message, to_iso(now)
        for path in list(self.store.state.targets):
            if path not in self._targets and path not in errors:
                self.retire(path)
        return [self.ensure(t) for t in targets]

    def run_due(self) -> list[TargetState]:
        """Targets whose backoff has expired (called every few seconds by the service)."""
        now = self.clock()
        due = []
        for path, target in list(self._targets.items()):
            ts = self.store.state.targets.get(path)
            next_at = from_iso(ts.next_attempt_at) if ts else None
            if ts is not None and next_at is not None and next_at <= now:
                due.append(self.ensure(target))
        return due

    def ensure(self, target: Target, *, hint: str | None = None, force: bool = False) -> TargetState:
        """Bring one target to "planted" (or record why not). `hint` is the watcher's event kind."""
        with self._lock(target.path):
            return self._ensure_locked(target, hint, force)

    def _ensure_locked(self, target: Target, hint: str | None, force: bool) -> TargetState:
        now = self.clock()
        ts = self._target_state(target)
        next_at = from_iso(ts.next_attempt_at)
        if next_at is not None and now < next_at and not force:
            return ts
        profile = self.config.profile
        if ts.profile != profile and ts.access_key_id:
            self._unplant_quietly(ts)  # the configured profile name changed: move our section
            with self.store.mutate():
                ts.profile, ts.status = profile, "pending"
        try:
            found, key_id, detail = inspect_section(
                target.path, profile, self.store.state.owned_key_ids, target.owner
            )
        except credfile.UnsafePathError as exc:
            return self._tampered(
                ts, examine(target.path, target.owner) or unexplained(target.path, str(exc)), now
            )
        except credfile.CredfileError as exc:
            return self._failed(ts, f"cannot inspect: {exc}", now)
        if found in ("absent", "altered", "ours"):
            shadow = config_shadow(target.path, profile, target.owner)
            if shadow is not None:  # planting would mint a canary nobody's tools would ever use
                with self.store.mutate():
                    ts.last_check = to_iso(now)
                return self._conflict(ts, "shadowed", shadow, now)
        if found == "ours" and ts.access_key_id and key_id != ts.access_key_id:
            found = "altered"  # an older key of ours was put back (e.g. a restored backup)
        was_planted = ts.status == "planted"
        with self.store.mutate():
            ts.last_check = to_iso(now)
        if ts.finding is not None:  # whatever stood in the canary's place is gone (status was not
            with self.store.mutate():  # "planted", so no second tamper event: a plain re-plant follows)
                ts.finding = None
        if found == "ours":
            self._digests[target.path] = file_digest(target.path, target.owner)
            if target.path not in self._known_secrets:
                self._learn_secrets(target, profile)
            reason = refresh_due(ts, self.config, now)
            if reason is None and ts.credential_id:
                with self.store.mutate():
                    ts.status, ts.last_error, ts.failures, ts.next_attempt_at = "planted", None, 0, None
                return ts
            return self._plant(target, ts, now, renew=reason)
        if found in ("foreign", "duplicate", "unparseable"):
            return self._conflict(ts, found, detail, now)
        # "absent" or "altered": our section is gone or changed.
        if was_planted:
            action = self._tamper_action(target.path, found, hint)
            count = ts.tamper_count + 1
            last = from_iso(ts.last_tamper_at)
            if last is not None and (now - last).total_seconds() > TAMPER_RESET_AFTER:
                count = 1
            delay = tamper_delay(count)
            with self.store.mutate():
                ts.tamper_count, ts.last_tamper_at = count, to_iso(now)
            if delay > 0:
                with self.store.mutate():
                    ts.status = "pending"
                    ts.next_attempt_at = to_iso(now + dt.timedelta(seconds=delay))
                    ts.last_error = f"{action.replace('_', ' ')} {count} times; re-plant in {delay:.0f} s"
                log.warning("%s: %s (again); re-planting in %.0f s", target.path, action, delay)
                self.emit(tamper_payload(target.path, action, ts.last_error, False, now))
                return ts
            ts = self._plant(target, ts, now, renew=None)
            detail = f"our profile {profile!r} was {action.replace('_', ' ')}"
            self.emit(tamper_payload(target.path, action, detail, ts.status == "planted", now))
            return ts
        return self._plant(target, ts, now, renew=None)

    def _learn_secrets(self, target: Target, profile: str) -> None:
        """Tell `on_secret` the secret (and token) already planted, e.g. after a restart: the read
        log and the spool scrub them. Kept in memory only; never logged or stored."""
        if self.on_secret is None:
            return
        try:
            secrets = planted_secrets(target.path, profile, target.owner)
        except (credfile.CredfileError, OSError):
            return
        for secret in secrets:
            self.on_secret(secret)
        self._known_secrets.add(target.path)

    @staticmethod
    def _tamper_action(path: str, found: str, hint: str | None) -> str:
        if found == "altered":
            return "section_altered"
        if not os.path.lexists(path):  # lexists: never follow a user's symlink, even to stat
            return "file_moved" if hint == "moved" else "file_deleted"
        return "section_removed"

    def _target_state(self, target: Target) -> TargetState:
        with self.store.mutate() as st:
            ts = st.targets.get(target.path)
            if ts is None:
                ts = TargetState(
                    path=target.path,
                    owner=target.owner.name,
                    profile=self.config.profile,
                    source=target.source,
                )
                st.targets[target.path] = ts
            ts.owner, ts.source = target.owner.name, target.source
        return ts

    def _conflict(self, ts: TargetState, found: str, detail: str, now: dt.datetime) -> TargetState:
        first_time = ts.status != "conflict"
        profile = self.config.profile
        what = {
            "foreign": f"the file already has a profile named {profile!r} that is not Tripkey's",
            "duplicate": f"the file has more than one [{profile}] section",
            "unparseable": f"the AWS tools cannot parse the file ({detail})",
            "refused": f"the profile cannot be planted safely ({detail})",
            "shadowed": f"the canary would never be used: {detail}",
        }[found]
        message = f"conflict: {what}; left untouched"
        with self.store.mutate():
            ts.failures = ts.failures + 1 if not first_time else 1
            ts.status, ts.last_error = "conflict", message
            delay = backoff(CONFLICT_FIRST_DELAY, CONFLICT_MAX_DELAY, ts.failures)
            ts.next_attempt_at = to_iso(now + dt.timedelta(seconds=delay))
        if first_time:
            log.error("%s: %s", ts.path, message)
            self.emit(tamper_payload(ts.path, "conflict", message, False, now))
        return ts

    def _tampered(self, ts: TargetState, finding: Finding, now: dt.datetime) -> TargetState:
        """The file cannot be opened safely: the canary is gone (or cannot be verified) from there."""
        first_time = ts.finding != finding.signature
        with self.store.mutate():
            ts.failures += 1
            ts.status, ts.last_error = "tampered", f"not planted: {finding.sentence}"
            ts.finding = finding.signature
            delay = backoff(ERROR_FIRST_DELAY, ERROR_MAX_DELAY, ts.failures)
            ts.next_attempt_at = to_iso(now + dt.timedelta(seconds=delay))
            if first_time:
                ts.tamper_count, ts.last_tamper_at = ts.tamper_count + 1, to_iso(now)
        if first_time:
            log.error("%s: %s", ts.path, finding.sentence)
            self.emit(
                tamper_payload(ts.path, finding.action, finding.sentence, False, now, found=finding.found)
            )
        return ts

    def _failed(
        self, ts: TargetState, message: str, now: dt.datetime, *, keep_status: bool = False
    ) -> TargetState:
        """Record a failure and back off. `keep_status`: a renewal failed, but the current canary is
        still in the file (and still planted) until it expires."""
        with self.store.mutate():
            ts.failures += 1
            ts.status, ts.last_error = (ts.status if keep_status else "error"), message
            delay = backoff(ERROR_FIRST_DELAY, ERROR_MAX_DELAY, ts.failures)
            ts.next_attempt_at = to_iso(now + dt.timedelta(seconds=delay))
        log.error("%s: %s (next attempt in %.0f s)", ts.path, message, delay)
        return ts

    # ------------------------------------------------------------------ writing

    def _plant(self, target: Target, ts: TargetState, now: dt.datetime, *, renew: str | None) -> TargetState:
        try:
            if renew and ts.credential_id:
                try:
                    issued = self.client.rotate_credential(self.device_id, ts.credential_id)
                except NotFound:
                    issued = self._mint(target)
            else:
                issued = self._mint(target)
        except IssuerUnreachable as exc:
            return self._failed(ts, f"issuer unreachable: {exc.reason}", now, keep_status=bool(renew))
        except TripkeyError as exc:
            return self._failed(ts, f"issuer refused the credential: {exc}", now, keep_status=bool(renew))
        with self.store.mutate() as st:
            st.owned_key_ids.add(issued.access_key_id)  # owned before it exists on disk
        self._writing.add(target.path)
        try:
            plant_one(
                target.path,
                self.config.profile,
                issued,
                self.store.state.owned_key_ids,
                target.owner,
                force_default=self.config.force_default_profile,
                before_replace=self._before_replace(target.path),
            )
            self._digests[target.path] = file_digest(target.path, target.owner)
            if self.on_secret is not None:
                self.on_secret(issued.secret_access_key)
                if issued.session_token:
                    self.on_secret(issued.session_token)
                self._known_secrets.add(target.path)
        except credfile.ConflictError as exc:  # e.g. a [DEFAULT] role, or changed since inspection
            self._revoke_quietly(issued.credential_id)
            return self._conflict(ts, "refused", exc.reason, now)
        except (credfile.CredfileError, OSError, ValueError) as exc:
            self._revoke_quietly(issued.credential_id)
            return self._failed(ts, f"cannot write the credentials file: {exc}", now)
        finally:
            self._writing.discard(target.path)
        with self.store.mutate():
            ts.credential_id = issued.credential_id
            ts.access_key_id = issued.access_key_id
            ts.backend = issued.backend
            ts.expires_at = to_iso(issued.expires_at)
            ts.created_at = to_iso(now)
            ts.profile = self.config.profile
            ts.status, ts.last_error, ts.failures, ts.next_attempt_at = "planted", None, 0, None
        if self.config.region:  # a region lets the attacker's first command go out (and be seen)
            problem = plant_region(
                target.path,
                self.config.profile,
                self.config.region,
                target.owner,
                force_default=self.config.force_default_profile,
            )
            if problem:
                log.warning("%s: %s", target.path, problem)
                with self.store.mutate():
                    ts.last_error = problem
        log.info(
            "%s: planted %s (%s) for %s%s",
            target.path,
            issued.access_key_id,
            issued.backend,
            target.owner.name,
            f", {renew}" if renew else "",
        )
        return ts

    def _mint(self, target: Target) -> Any:
        return self.client.mint_credential(
            self.device_id, target.owner.name, target.path, self.config.profile
        )

    def _revoke_quietly(self, credential_id: str | None) -> str | None:
        if not credential_id:
            return None
        if self.client is None:
            return "no issuer configured or not enrolled"
        try:
            self.client.revoke_credential(self.device_id, credential_id)
            return None
        except TripkeyError as exc:
            log.warning("could not revoke %s on the issuer: %s", credential_id, exc)
            return str(exc)

    def _unplant_quietly(self, ts: TargetState) -> bool:
        self._writing.add(ts.path)
        try:
            owner = self._owner_of(ts)
            removed = unplant_one(
                ts.path,
                ts.profile,
                self.store.state.owned_key_ids,
                owner,
                before_replace=self._before_replace(ts.path),
            )
            self._digests[ts.path] = file_digest(ts.path, owner)
            if self.config.region:
                unplant_region(ts.path, ts.profile, self.config.region, owner)
            return removed
        except (credfile.CredfileError, OSError) as exc:
            log.error("%s: could not remove our profile: %s", ts.path, exc)
            return False
        finally:
            self._writing.discard(ts.path)

    # ------------------------------------------------------------------ removal

    def _owner_of(self, ts: TargetState) -> LocalUser | None:
        target = self._targets.get(ts.path)
        if target is not None:
            return target.owner
        try:
            return lookup_user(ts.owner, self.config.passwd_file)
        except UnknownUser:
            return None

    def _targets_owner(self, path: str) -> LocalUser | None:
        target = self._targets.get(path)
        return target.owner if target else None

    def retire(self, path: str) -> None:
        """A target left the configuration (user deleted, explicit path removed): unplant + revoke."""
        ts = self.store.state.targets.get(path)
        if ts is None:
            return
        with self._lock(path):
            self._unplant_quietly(ts)
            self._revoke_quietly(ts.credential_id)
            with self.store.mutate() as st:
                st.targets.pop(path, None)
            self._digests.pop(path, None)
        log.info("%s: no longer a target; removed and revoked", path)

    def unplant_all(self, extra_paths: Iterable[str] = (), *, revoke: bool = True) -> list[dict[str, Any]]:
        """Remove Tripkey's sections everywhere (byte-exact otherwise) and revoke on the issuer."""
        results = []
        paths = sorted(set(self.store.state.targets) | set(extra_paths))
        for path in paths:
            ts = self.store.state.targets.get(path)
            profile = ts.profile if ts else self.config.profile
            result: dict[str, Any] = {
                "path": path,
                "profile": profile,
                "access_key_id": ts.access_key_id if ts else None,
                "removed": False,
                "revoked": None,
                "error": None,
            }
            with self._lock(path):
                self._writing.add(path)
                try:
                    owner = self._owner_of(ts) if ts else self._targets_owner(path)
                    result["removed"] = unplant_one(path, profile, self.store.state.owned_key_ids, owner)
                    if self.config.region:
                        unplant_region(path, profile, self.config.region, owner)
                except (credfile.CredfileError, OSError) as exc:
                    result["error"] = f"could not remove: {exc}"
                finally:
                    self._writing.discard(path)
                if ts is not None and ts.credential_id and revoke and result["error"] is None:
                    problem = self._revoke_quietly(ts.credential_id)
                    result["revoked"] = problem is None
                    if problem:
                        result["error"] = f"removed locally; NOT revoked on the issuer: {problem}"
                with self.store.mutate() as st:
                    if result["error"] is None:
                        st.targets.pop(path, None)
                    elif ts is not None:
                        ts.status, ts.last_error = (
                            "removed" if result["removed"] else ts.status,
                            result["error"],
                        )
            results.append(result)
        return results


__all__ = [
    "Planter",
    "Target",
    "refresh_due",
    "resolve_targets",
    "tamper_delay",
]
