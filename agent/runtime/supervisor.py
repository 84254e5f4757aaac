"""The deadman for agents not under a systemd watchdog: `tripkey-agent run`'s supervisor process.

`tripkey-agent run` forks: the child is the agent (enroll, plant, sense, ...), the parent stays a
small loop that holds nothing — it forked before any sensor existed, so it has no fanotify fd and
can never hold a reader. The agent pets it through a pipe (agent.runtime.deadman.PipeDeadman) from the code
path that answers permission events. When no pet arrives for `timeout` seconds (the agent was
stopped with SIGSTOP, or is wedged) the supervisor SIGKILLs it: the kernel closes its fanotify fd,
which releases every reader it held at once. Then it restarts the agent, after 1 s, 2 s, 4 s, ...
at most 60 s (back to 1 s once an agent ran for a minute).

* SIGTERM/SIGINT to the supervisor are passed to the agent, which shuts down cleanly; the supervisor
  then exits with the agent's exit code. The deadman keeps running meanwhile (a stopped agent does
  not react to SIGTERM).
* The agent dies with the supervisor (PR_SET_PDEATHSIG = SIGKILL): killing the supervisor, even with
  SIGKILL, never leaves an unsupervised agent behind.
* An agent that exits by itself (a configuration error, enrollment refused) is not restarted: its
  exit code is the supervisor's, and the init system decides. An agent killed by a signal the
  supervisor did not send (the OOM killer, a crash) is restarted like a deadman kill.
* Under systemd with `NOTIFY_SOCKET`, the supervisor (the unit's main process) sends READY=1.

Linux only (fork, pidfd, prctl). The supervisor's comm is "tripkey-deadman" (`ps -o comm`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from agent.runtime.deadman import Deadman, PipeDeadman, notify_systemd

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
FIRST_DELAY, MAX_DELAY, HEALTHY_AFTER = 1.0, 60.0, 60.0
MIN_TIMEOUT, MAX_TIMEOUT = 0.3, 600.0  # what the agent may ask for ("T<ms>\n" down the pipe)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

AgentMain = Callable[[Deadman], int]


def _prctl(option: int, value: Any) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


class Supervisor:
    def __init__(
        self,
        agent_main: AgentMain,
        timeout: float,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        if timeout <= 0:
            raise ValueError("the deadman timeout must be > 0 seconds")
        self.agent_main = agent_main
        self.timeout = timeout
        self.first_delay, self.max_delay, self.healthy_after = first_delay, max_delay, healthy_after
        self.stopping = False
        self.kills = 0  # agents killed for not petting
        self.restarts = 0
        self._sig_r, self._sig_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._comm = b""  # our name before we called ourselves tripkey-deadman (the agent's)
        self._buffer = b""  # an incomplete message from the agent
        self.initial_timeout = timeout

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        with contextlib.suppress(OSError):
            with open("/proc/self/comm", "rb") as comm:
                self._comm = comm.read().strip()
            _prctl(PR_SET_NAME, b"tripkey-deadman")
        failures = 0
        try:
            while True:
                started = time.monotonic()
                status, killed = self._run_one(announce=self.restarts == 0)
                if self.stopping:
                    return _exit_code(status)
                if not killed and os.WIFEXITED(status):
                    code = os.WEXITSTATUS(status)
                    log.log(logging.ERROR if code else logging.INFO, "agent exited with code %d", code)
                    return code
                failures = 1 if time.monotonic() - started >= self.healthy_after else failures + 1
                delay = min(self.max_delay, self.first_delay * 2 ** (failures - 1))
                why = "killed by the deadman" if killed else f"died of signal {os.WTERMSIG(status)}"
                log.error("agent %s; restarting it in %.0f s", why, delay)
                if self._wait_for_stop(delay):
                    return 0
                self.restarts += 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._sig_r, self._sig_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self._sig_w, b"s")

    def _wait_for_stop(self, seconds: float) -> bool:
        """Sleep `seconds` unless a stop signal comes first (True)."""
        if self.stopping:
            return True
        select.select([self._sig_r], [], [], seconds)
        return self.stopping

    def _run_one(self, *, announce: bool) -> tuple[int, bool]:
        """Fork one agent and watch it until it exits; (wait status, killed by the deadman)."""
        pet_r, pet_w = os.pipe2(os.O_CLOEXEC)
        self.timeout, self._buffer = self.initial_timeout, b""  # a new agent starts tight
        me = os.getpid()
        pid = os.fork()
        if pid == 0:  # the agent
            os.close(pet_r)
            self._become_agent(me, pet_w)  # never returns
        os.close(pet_w)
        pidfd = os.pidfd_open(pid)
        if announce:
            notify_systemd(b"READY=1")
        log.info("supervising agent pid %d (deadman: SIGKILL after %.1f s without a pet)", pid, self.timeout)
        try:
            return self._watch(pid, pidfd, pet_r)
        finally:
            os.close(pidfd)
            os.close(pet_r)

    def _watch(self, pid: int, pidfd: int, pet_r: int) -> tuple[int, bool]:
        poller = select.poll()
        for fd in (pet_r, pidfd, self._sig_r):
            poller.register(fd, select.POLLIN)
        last_pet = time.monotonic()
        killed = forwarded = False
        while True:
            if self.stopping and not forwarded:
                forwarded = True
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            remaining = last_pet + self.timeout - time.monotonic()
            if remaining <= 0 and not killed:
                killed = True
                self.kills += 1
                log.critical(
                    "agent pid %d did not answer for %.1f s (stopped or wedged): killing it, which "
                    "releases every reader it held", pid, self.timeout,
                )  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            timeout_ms = None if killed else max(1, int(remaining * 1000) + 1)
            for fd, _mask in poller.poll(timeout_ms):
                if fd == pidfd:
                    _, status = os.waitpid(pid, 0)
                    return status, killed
                if fd == pet_r:
                    data = os.read(pet_r, 4096)
                    if not data:
                        poller.unregister(pet_r)  # the agent closed it: it is exiting
                    elif self._heard(data):
                        last_pet = time.monotonic()
                elif fd == self._sig_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._sig_r, 64)

    def _heard(self, data: bytes) -> bool:
        """Parse what the agent wrote: "." is a pet, "T<ms>\n" sets the timeout (and counts as a
        pet). True if anything was heard."""
        buf, heard = self._buffer + data, False
        while buf:
            if buf.startswith(b"T"):
                end = buf.find(b"\n")
                if end < 0:
                    break  # the rest of the message is on its way
                try:
                    self.timeout = min(MAX_TIMEOUT, max(MIN_TIMEOUT, int(buf[1:end]) / 1000))
                except ValueError:
                    log.error("ignoring a malformed deadman message %r", buf[:end])
                buf, heard = buf[end + 1 :], True
            else:
                cut = buf.find(b"T")
                heard = heard or b"." in (buf if cut < 0 else buf[:cut])
                buf = b"" if cut < 0 else buf[cut:]
        self._buffer = buf
        return heard

    def _become_agent(self, supervisor: int, pet_w: int) -> NoReturn:
        """In the forked child: die with the supervisor, forget its signal handling, run the agent."""
        code = 1
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != supervisor:  # the supervisor died before prctl took effect
                os._exit(1)
            if self._comm:
                _prctl(PR_SET_NAME, self._comm)
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            for fd in (self._sig_r, self._sig_w):
                os.close(fd)
            code = self.agent_main(PipeDeadman(pet_w, self.timeout))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("the agent failed")
            code = 1
        finally:
            # What a normal interpreter exit does (e.g. the audit sensor's rule clean-up), then
            # leave without running the supervisor's own exit path a second time.
            with contextlib.suppress(Exception):
                atexit._run_exitfuncs()
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def supervise(agent_main: AgentMain, timeout: float, **options: float) -> int:
    """Run `agent_main(deadman)` in a supervised child until it exits or we are told to stop."""
    return Supervisor(agent_main, timeout, **options).run()


__all__ = ["Supervisor", "supervise"]
