"""The agent's side of the external deadman: pet whoever kills this process when it stops answering.

The kernel has no timeout for fanotify permission events: a stopped (`kill -STOP`) or wedged agent
would hold every reader of a planted file forever, and an in-process guard cannot help when the whole
process is stopped. So something OUTSIDE the agent kills it when it goes quiet; closing the fanotify
fd (the kernel does that when the process dies) releases every held reader at once. The agent pets:

* under systemd (`WatchdogSec=`, `WatchdogSignal=SIGKILL` in packaging/linux/tripkey-agent.service):
  `WATCHDOG=1` datagrams to $NOTIFY_SOCKET (sd_notify's protocol, a few lines of `socket`);
* otherwise: one byte down a pipe to the supervisor process `tripkey-agent run` starts
  (agent.runtime.supervisor), which SIGKILLs the agent after `deadman_seconds` without one and restarts it.

Who pets matters: a sensor that holds readers pets from the code path that answers them
(`Sensor.attach_deadman`), so a wedged capture path stops the petting, and the deadman's timeout is
then the tight one (1.5 s). Until a sensor takes over, and for sensors that never hold a reader
(audit, eBPF), the service's own petter thread pets (`start`) and the timeout is relaxed to 30 s: a
stopped agent holds nobody then, it is still killed and restarted, and an idle agent wakes up every
10 s instead of twice a second. Pets go out every timeout/3.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from typing import Any

from agent import osflags

log = logging.getLogger(__name__)

PETS_PER_TIMEOUT = 3  # pet every timeout/3: two pets may be late before the deadman fires
# While no sensor holds a reader (before the sensor starts, audit, eBPF, a sensor that stopped), a
# stopped agent harms nobody's tools: the deadman waits this long (killing and restarting a wedged
# agent still), and the agent wakes up every 10 s to pet instead of every 0.5 s.
RELAXED_TIMEOUT = 30.0


class Petter:
    """A handle to pet with; handed to a sensor (it pets from its answering path) or kept by the
    service. `release()` hands petting back to the service (the sensor holds no reader any more)."""

    def __init__(self, deadman: Deadman, owner: str) -> None:
        self._deadman = deadman
        self.owner = owner
        self.released = False

    @property
    def interval(self) -> float:
        return self._deadman.interval

    def pet(self) -> None:
        if not self.released:
            self._deadman.pet()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._deadman._released(self)


class Deadman:
    """Disarmed by default (in-process tests, macOS/Windows, `deadman_seconds = 0`): pets go nowhere.

    `timeout` is the tight one, used while a sensor that holds readers pets (`delegate`); otherwise
    the deadman is told to wait `relaxed` seconds (systemd: WATCHDOG_USEC=; the supervisor: a
    message down its pipe)."""

    kind = "off"

    def __init__(
        self, timeout: float = 0.0, reason: str = "not armed", relaxed: float = RELAXED_TIMEOUT
    ) -> None:
        self.tight = timeout
        self.relaxed = max(relaxed, timeout)
        self.timeout = timeout  # what the deadman was last told
        self.reason = reason
        self._cond = threading.Condition()
        self._delegate: Petter | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.pets = 0
        self.errors = 0

    @property
    def armed(self) -> bool:
        return self.kind != "off"

    @property
    def interval(self) -> float:
        return self.timeout / PETS_PER_TIMEOUT if self.timeout > 0 else 1.0

    # -- transport (subclasses) -------------------------------------------------------------------

    def _send(self, message: bytes) -> None:
        return None

    def _announce(self, timeout: float) -> None:
        """Tell the deadman its new timeout."""
        return None

    def pet(self) -> None:
        """Tell the deadman we are alive. Quick, never blocks, never raises."""
        try:
            self._send(b"WATCHDOG=1")
            self.pets += 1
        except OSError as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.error("deadman (%s): cannot pet: %s (%d failures)", self.kind, exc, self.errors)

    def ready(self) -> None:
        """The service is up (systemd: READY=1, which also starts the watchdog clock)."""
        return None

    def _set_timeout(self, seconds: float) -> None:
        if not self.armed or seconds == self.timeout:
            return
        self.pet()  # a fresh pet first: tightening must not fire on an old one
        try:
            self._announce(seconds)
        except OSError as exc:
            log.error("deadman (%s): cannot change the timeout to %.1f s: %s", self.kind, seconds, exc)
            return
        with self._cond:
            self.timeout = seconds
            self._cond.notify_all()

    # -- who pets -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Pet from a service thread now, and whenever no sensor holds the petting. Nothing holds a
        reader yet: relaxed until a sensor takes over."""
        self.pet()
        if not self.armed:
            return
        self._set_timeout(self.relaxed)
        self._thread = threading.Thread(target=self._run, name="tripkey-deadman", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def delegate(self, owner: str) -> Petter:
        """A Petter for `owner` (e.g. the sensor's answering path), on the tight timeout; the service
        thread stops petting until it is released. A delegate that neither pets nor releases gets
        the agent killed."""
        petter = Petter(self, owner)
        with self._cond:
            if self._delegate is not None:
                self._delegate.released = True
            self._delegate = petter
            self._cond.notify_all()
        self._set_timeout(self.tight)
        petter.pet()
        return petter

    def _released(self, petter: Petter) -> None:
        with self._cond:
            mine = self._delegate is petter
            if mine:
                self._delegate = None
                self._cond.notify_all()
        self.pet()
        if mine:
            self._set_timeout(self.relaxed)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                if self._delegate is not None:
                    self._cond.wait()  # the sensor pets; nothing to do (no wakeups) until released
                    continue
                # start(), _released() and _set_timeout() pet on their own: wait first
                self._cond.wait(self.interval)
                if self._stopping or self._delegate is not None:
                    continue
            self.pet()

    def describe(self) -> dict[str, Any]:
        """For status and the heartbeat: is a stopped agent killed, after how long, who pets."""
        with self._cond:
            owner = self._delegate.owner if self._delegate is not None else "the agent's service thread"
        return {
            "armed": self.armed,
            "kind": self.kind,
            "timeout_ms": round(self.timeout * 1000) if self.armed else None,
            "holds_readers_timeout_ms": round(self.tight * 1000) if self.armed else None,
            "petted_by": owner if self.armed else None,
            "detail": self.reason,
        }


class SystemdWatchdog(Deadman):
    """sd_notify over $NOTIFY_SOCKET; systemd kills us (WatchdogSignal=SIGKILL) when pets stop."""

    kind = "systemd"

    def __init__(self, address: str, timeout: float) -> None:
        super().__init__(timeout, f"systemd watchdog (WatchdogSec={timeout:g}s, SIGKILL, Restart=)")
        self._address = _notify_address(address)  # "@name": an abstract socket (leading NUL)
        self._sock: socket.socket
        if not osflags.POSIX:
            raise OSError("the systemd watchdog exists only where systemd does")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def _send(self, message: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # systemd busy: the next pet (timeout/3) goes through
            self._sock.sendto(message, self._address)

    def ready(self) -> None:
        try:
            self._send(b"READY=1")
        except OSError as exc:
            log.error("systemd notify READY=1 failed: %s", exc)

    def _announce(self, timeout: float) -> None:
        self._send(b"WATCHDOG_USEC=%d" % round(timeout * 1_000_000))


class PipeDeadman(Deadman):
    """One byte down the supervisor's pipe (agent.runtime.supervisor)."""

    kind = "supervisor"

    def __init__(self, fd: int, timeout: float) -> None:
        super().__init__(timeout, f"tripkey-agent supervisor process (SIGKILL after {timeout:g} s, restart)")
        self._fd = fd
        if not osflags.POSIX:
            raise OSError(
                "the supervisor's pipe deadman is POSIX only (Windows: the SCM restarts the service)"
            )
        os.set_blocking(fd, False)

    def _announce(self, timeout: float) -> None:
        os.write(self._fd, b"T%d\n" % round(timeout * 1000))  # < PIPE_BUF: never interleaved

    def _send(self, message: bytes) -> None:
        try:
            os.write(self._fd, b".")
        except BlockingIOError:
            pass  # the supervisor is not reading (stopped itself): pets are not queued forever
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            # The supervisor is gone; PR_SET_PDEATHSIG kills us too. Nothing to pet.


def _notify_address(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address


def notify_systemd(message: bytes, env: dict[str, str] | None = None) -> bool:
    """Send one sd_notify message (e.g. READY=1) if $NOTIFY_SOCKET is set; True if sent."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not address or not osflags.POSIX:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, _notify_address(address))
    except OSError as exc:
        log.error("systemd notify %r failed: %s", message, exc)
        return False
    return True


def systemd_watchdog(env: dict[str, str] | None = None) -> SystemdWatchdog | None:
    """The systemd watchdog this process is under, or None (not under systemd, or no WatchdogSec=)."""
    env = dict(os.environ) if env is None else env
    address, usec, pid = env.get("NOTIFY_SOCKET"), env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not address or not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by the service's main process)
    try:
        timeout = int(usec) / 1_000_000
    except ValueError:
        log.error("ignoring WATCHDOG_USEC=%r: not a number", usec)
        return None
    if timeout <= 0:
        return None
    return SystemdWatchdog(address, timeout)


__all__ = ["Deadman", "Petter", "PipeDeadman", "SystemdWatchdog", "notify_systemd", "systemd_watchdog"]
