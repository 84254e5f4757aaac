"""Enrollment: trade the enroll token + host facts for a device id and device token.

The device key (secrets.token_urlsafe(32)) is generated once and kept in the state file before the
first attempt, so retries and re-enrollments after a lost token map to the same device. An
unreachable issuer is retried with capped exponential backoff; a refused token stops with a clear
message (retrying cannot fix a wrong token).

Once enrolled, the enrollment token is removed from the Windows policy key, where every local user
could read it (MdmSource.forget_enroll_token; nothing to do on other OSes).
"""

from __future__ import annotations

import logging
import platform
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agent import __version__
from agent.clock import to_iso, utcnow
from agent.config import AgentConfig, ConfigError
from agent.config.mdm import MdmSource, default_sources
from agent.osflags import LINUX, MACOS, WINDOWS
from agent.reporting.uploader import Backoff
from agent.state import StateStore
from server_api_client import AuthError, IssuerUnreachable, ProtocolError, RejectedError, ServerError

log = logging.getLogger(__name__)


class EnrollmentError(Exception):
    """Enrollment did not succeed: refused (a human must fix the token or URL) or, with
    `unreachable` set, the issuer could not be reached within the allowed attempts."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class EnrollClient(Protocol):
    token: str | None

    def enroll(
        self,
        device_key: str,
        hostname: str,
        os: str,
        *,
        os_version: str | None = ...,
        serial: str | None = ...,
        users: Sequence[str] = ...,
        agent_version: str | None = ...,
    ) -> Any: ...


def _os_name() -> str:
    if LINUX:
        return "linux"
    if MACOS:
        return "macos"
    if WINDOWS:
        return "windows"
    return platform.system().lower() or "unknown"


def _os_version() -> str | None:
    if LINUX:
        try:
            with open("/etc/os-release", encoding="utf-8") as fh:
                fields = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
            pretty = fields.get("PRETTY_NAME", "").strip('"')
            if pretty:
                return pretty
        except OSError:
            pass
    if MACOS:
        return "macOS " + platform.mac_ver()[0]
    return f"{platform.system()} {platform.release()}".strip() or None


def _serial() -> str | None:
    if LINUX:
        try:
            with open("/sys/class/dmi/id/product_serial", encoding="utf-8") as fh:
                value = fh.read().strip()
            # Firmware placeholders are not serials; sending them would make hosts look alike.
            if value and value.lower() not in ("none", "not specified", "to be filled by o.e.m.", "0"):
                return value
        except OSError:
            pass
    return None


def host_facts(users: Sequence[str]) -> dict[str, Any]:
    """hostname, os, os_version, serial, users, agent_version — what the issuer records per device."""
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "os_version": _os_version(),
        "serial": _serial(),
        "users": sorted(set(users)),
        "agent_version": __version__,
    }


def ensure_enrolled(
    store: StateStore,
    client: EnrollClient,
    config: AgentConfig,
    users: Sequence[str],
    *,
    force: bool = False,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int | None = None,
    backoff: Backoff | None = None,
    mdm: Sequence[MdmSource] | None = None,
) -> tuple[str, str]:
    """Return (device_id, device_token), enrolling first when needed (or when `force`).

    Sets `client.token` to the device token. Raises EnrollmentError when the token is refused or
    when stopped/exhausted while the issuer is unreachable. When enrolled (now or before), removes
    the enrollment token from the MDM sources that allow it (`mdm=None`: this OS's sources); the
    token loaded in `config` stays usable for a re-enrollment by this process.
    """
    state = store.state
    issuer_url = config.require_issuer()
    if state.enrolled and state.issuer_url == issuer_url and not force:
        client.token = state.device_token
        # Also here: an admin may have pushed the token again (msiexec with ENROLL_TOKEN).
        _forget_enroll_token(default_sources() if mdm is None else mdm)
        return state.device_id, state.device_token  # type: ignore[return-value]
    if not config.enroll_token:
        raise ConfigError(
            "not enrolled yet and enroll_token is not set (config file or TRIPKEY_ENROLL_TOKEN)"
        )
    with store.mutate() as st:
        device_key = st.ensure_device_key()
    facts = host_facts(users)
    backoff = backoff or Backoff(initial=2.0, cap=300.0)
    attempt = 0
    while True:
        attempt += 1
        client.token = config.enroll_token
        try:
            result = client.enroll(
                device_key,
                facts["hostname"],
                facts["os"],
                os_version=facts["os_version"],
                serial=facts["serial"],
                users=facts["users"],
                agent_version=facts["agent_version"],
            )
            break
        except AuthError as exc:
            raise EnrollmentError(
                f"the issuer refused the enrollment token ({exc.status_code} {exc.code}); "
                "create a new one with `tripkey-issuer token create --role enroll`"
            ) from None
        except RejectedError as exc:
            raise EnrollmentError(f"the issuer rejected the enrollment: {exc}") from None
        except (IssuerUnreachable, ServerError, ProtocolError) as exc:  # e.g. a proxy's error page
            if max_attempts is not None and attempt >= max_attempts:
                raise EnrollmentError(
                    f"could not enroll after {attempt} attempts: {exc}", unreachable=True
                ) from None
            delay = backoff.next_delay()
            log.warning("enrollment failed (%s); retrying in %.0f s", exc, delay)
            if stop is not None:
                if stop.wait(delay):
                    raise EnrollmentError("stopped before enrollment completed", unreachable=True) from None
            else:
                sleep(delay)
    with store.mutate() as st:
        st.device_id = result.device_id
        st.device_token = result.device_token
        st.issuer_url = issuer_url
        st.enrolled_at = to_iso(utcnow())
    client.token = result.device_token
    log.info(
        "enrolled with %s as device %s (%s)",
        issuer_url,
        result.device_id,
        "new" if result.created else "existing",
    )
    _forget_enroll_token(default_sources() if mdm is None else mdm)
    return result.device_id, result.device_token


def _forget_enroll_token(sources: Sequence[MdmSource]) -> None:
    """Enrollment has succeeded; a failure here is reported loudly but does not undo it."""
    for source in sources:
        try:
            if source.forget_enroll_token():
                log.info("removed the enrollment token from %s (no longer needed)", source.description)
        except OSError as exc:
            log.error(
                "could not remove the enrollment token from %s: %s; local users can read it there, "
                "delete the value by hand",
                source.description,
                exc,
            )


__all__ = ["EnrollmentError", "ensure_enrolled", "host_facts"]
