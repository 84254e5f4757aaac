"""The agent's persistent state: one JSON file (0600) in the state directory (0700).

It holds the device identity (device key, id, token) and, per target, what was planted: path,
owner, profile, credential id, access key id, expiry, last check and last error. It NEVER holds a
secret access key or session token: the secret lives only in the planted credentials file.
`owned_key_ids` is every access key id Tripkey ever planted on this host (rotated ones included),
so the credentials-file editor recognises our sections even after a rotation or a crash.

Writes are atomic (temp file in the same directory, fsync, rename) and serialised by a lock, so
the service's threads and a concurrent `tripkey-agent status` never see a torn file.

Windows: the state directory gets a protected DACL (SYSTEM and Administrators only, owner SYSTEM)
instead of mode 0700, files inherit it instead of being chmod'ed 0600, os.replace is the rename
(there is no directory to fsync), and the one-agent lock is msvcrt.locking on a byte of agent.lock
instead of flock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import osflags
from agent.clock import from_iso, to_iso, utcnow

if osflags.POSIX:
    import fcntl
if osflags.WINDOWS:
    import msvcrt

STATE_FILE = "state.json"
LOCK_FILE = "agent.lock"
SPOOL_FILE = "spool.db"
READLOG_FILE = "reads.db"
SCHEMA_VERSION = 1


class StateError(Exception):
    """The state directory or file is unusable (permissions, corrupt JSON)."""


class AgentBusy(StateError):
    """Another tripkey-agent process (the service) holds the state directory."""


@dataclasses.dataclass
class TargetState:
    """What the agent knows about one placement. Times are ISO 8601 UTC strings."""

    path: str
    owner: str
    profile: str
    source: str = "explicit"  # explicit | all_users
    status: str = "pending"  # pending | planted | conflict | error | tampered | removed
    credential_id: str | None = None
    access_key_id: str | None = None
    backend: str | None = None
    expires_at: str | None = None
    created_at: str | None = None  # when the current credential was minted
    last_check: str | None = None
    last_error: str | None = None
    next_attempt_at: str | None = None  # backoff after errors, conflicts and repeated tampering
    failures: int = 0
    tamper_count: int = 0
    last_tamper_at: str | None = None
    finding: str | None = None  # what stands where the file should be (agent.planting.findings)

    @property
    def planted(self) -> bool:
        return self.status == "planted"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass
class AgentState:
    device_key: str | None = None
    device_id: str | None = None
    device_token: str | None = None
    issuer_url: str | None = None
    enrolled_at: str | None = None
    targets: dict[str, TargetState] = dataclasses.field(default_factory=dict)
    owned_key_ids: set[str] = dataclasses.field(default_factory=set)
    sensor_health: dict[str, Any] | None = None  # as last recorded by `run`
    selfreport_health: dict[str, Any] | None = None  # the self-report socket, as last recorded by `run`
    service_pid: int | None = None
    service_started_at: str | None = None
    last_event_at: str | None = None
    last_heartbeat_at: str | None = None
    last_heartbeat_error: str | None = None
    last_upload_error: str | None = None
    updated_at: str | None = None

    @property
    def enrolled(self) -> bool:
        return bool(self.device_id and self.device_token)

    def ensure_device_key(self) -> str:
        if not self.device_key:
            self.device_key = secrets.token_urlsafe(32)
        return self.device_key

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["owned_key_ids"] = sorted(self.owned_key_ids)
        data["targets"] = {path: dataclasses.asdict(t) for path, t in sorted(self.targets.items())}
        data["schema"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["targets"] = {p: TargetState.from_dict(t) for p, t in (data.get("targets") or {}).items()}
        values["owned_key_ids"] = set(data.get("owned_key_ids") or ())
        return cls(**values)


def ensure_private_dir(path: Path) -> None:
    """Create the state directory 0700; tighten it if it exists with looser permissions.

    A directory owned by anyone but us is refused untouched: its owner could chmod it back at any
    time and read the device key and token (e.g. a /var/lib/tripkey pre-created by a user)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise StateError(f"state directory {path} exists and is not a directory") from None
    except PermissionError:
        raise StateError(f"cannot create the state directory {path}: permission denied") from None
    if osflags.WINDOWS:
        from agent.credfile import winacl

        try:
            winacl.protect_private_dir(path)
        except Exception as exc:  # pywintypes.error: refuse rather than keep secrets readable
            raise StateError(f"cannot make the state directory {path} private: {exc}") from None
        return
    st = path.stat()
    euid = os.geteuid() if hasattr(os, "geteuid") else st.st_uid
    if st.st_uid != euid:
        raise StateError(
            f"state directory {path} is owned by uid {st.st_uid}, not by this agent (uid {euid}); "
            "it would expose the device key and token: remove it or chown it"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def atomic_write_private(path: Path, data: bytes) -> None:
    """Write 0600 via temp file + fsync + rename in the same directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if osflags.POSIX:  # Windows: the file inherits the state directory's private DACL
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not osflags.POSIX:
        return  # a directory cannot be opened for fsync on Windows; NTFS journals the rename
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """The state file of one state directory; `mutate()` changes it under a lock and saves."""

    def __init__(self, state_dir: str | os.PathLike[str], *, create: bool = True) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE
        self._lock = threading.RLock()
        if create:
            ensure_private_dir(self.dir)
        self._state = self._load()

    def _load(self) -> AgentState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except PermissionError:
            raise StateError(f"cannot read {self.path}: permission denied (run as root)") from None
        try:
            return AgentState.from_json(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise StateError(f"{self.path} is corrupt ({exc}); move it away to re-enroll") from None

    def reload(self) -> AgentState:
        with self._lock:
            self._state = self._load()
            return self._state

    @property
    def state(self) -> AgentState:
        """The live state object; read it freely, change it only inside `mutate()`."""
        return self._state

    @contextlib.contextmanager
    def mutate(self) -> Iterator[AgentState]:
        with self._lock:
            yield self._state
            self.save()

    def save(self) -> None:
        with self._lock:
            self._state.updated_at = to_iso(utcnow())
            body = json.dumps(self._state.to_json(), indent=2, sort_keys=True).encode()
            atomic_write_private(self.path, body)


class DirLock:
    """An exclusive lock on <state_dir>/agent.lock: one resident agent (or one-shot pass) at a time.

    POSIX: flock on the file. Windows: msvcrt.locking on one byte far past the end (locking beyond
    the end is allowed there), so the pid written at the start stays readable by the next comer.
    """

    WINDOWS_LOCK_OFFSET = 1 << 20

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._lock(fd)
        except (BlockingIOError, PermissionError):  # flock / msvcrt.locking: someone holds it
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentBusy(
                f"another tripkey-agent (pid {holder}) is using {self.path.parent}; "
                "stop the service first (systemctl stop tripkey-agent)"
            ) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def _lock(self, fd: int) -> None:
        if osflags.WINDOWS:
            os.lseek(fd, self.WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            if osflags.WINDOWS:
                os.lseek(self._fd, self.WINDOWS_LOCK_OFFSET, os.SEEK_SET)
                msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
            else:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = [
    "LOCK_FILE",
    "READLOG_FILE",
    "SPOOL_FILE",
    "STATE_FILE",
    "AgentBusy",
    "AgentState",
    "DirLock",
    "StateError",
    "StateStore",
    "TargetState",
    "atomic_write_private",
    "ensure_private_dir",
    "from_iso",
    "to_iso",
    "utcnow",
]
