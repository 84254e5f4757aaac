"""Opening a fanotify group, and saying in one sentence why it could not be opened."""

from __future__ import annotations

import errno
import os

from agent.sensors import _fanotify_abi as abi
from agent.sensors.base import SensorUnavailable


def explain_init_error(name: str, init_class: int, exc: OSError) -> str:
    """What is missing, for status and the log (never a bare errno)."""
    if exc.errno == errno.EPERM:
        return (
            f"{name} needs root (CAP_SYS_ADMIN): fanotify_init was refused (EPERM). Run "
            'tripkey-agent as root, or choose another sensor (sensor = "audit"; it needs root too)'
        )
    if exc.errno == errno.ENOSYS:
        return f'{name}: this kernel or libc has no fanotify (ENOSYS); choose sensor = "audit"'
    if exc.errno == errno.EINVAL and init_class != abi.FAN_CLASS_NOTIF:
        return (
            "fanotify permission events are not available in this kernel "
            '(CONFIG_FANOTIFY_ACCESS_PERMISSIONS); choose sensor = "audit" '
            'or the weaker "fanotify-notify"'
        )
    if exc.errno == errno.EMFILE:
        return f"{name}: too many fanotify groups (fs.fanotify.max_user_groups) or open files: {exc}"
    return f"{name}: fanotify_init failed: {exc}"


def probe(name: str, init_class: int) -> str | None:
    """None if a group of this class can be opened here, else why not."""
    try:
        fd = abi.fanotify_init(init_class | abi.FAN_CLOEXEC | abi.FAN_NONBLOCK, abi.EVENT_F_FLAGS)
    except OSError as exc:
        return explain_init_error(name, init_class, exc)
    os.close(fd)
    return None


def open_group(name: str, init_class: int) -> tuple[int, bool]:
    """(group fd, whether the kernel reports pidfds); SensorUnavailable saying why not."""
    base = init_class | abi.FAN_CLOEXEC | abi.FAN_NONBLOCK
    try:
        return abi.fanotify_init(base | abi.FAN_REPORT_PIDFD, abi.EVENT_F_FLAGS), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise SensorUnavailable(explain_init_error(name, init_class, exc)) from exc
    # Kernel older than 5.15: same sensor, only without pidfds (recorded in health).
    try:
        return abi.fanotify_init(base, abi.EVENT_F_FLAGS), False
    except OSError as exc:
        raise SensorUnavailable(explain_init_error(name, init_class, exc)) from exc
