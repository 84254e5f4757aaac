"""`tripkey-agent run`: enroll → plant → sense → log → spool → upload, with refresh and heartbeat.

Threads:
  main      enrollment, the periodic pass (user rescan, plant/repair/refresh every target,
            sensor and watcher paths), due re-plants after backoff, state/health persistence
  consumer  sensor events from a bounded queue: establish the reader's provenance (on a worker with
            a deadline, agent.events.probe), classify, record in the read log, spool
  uploader  flushes the spool in batches and sends the heartbeat (its own issuer client)
  repair    the tamper watcher (agent.planting.repair) and watchdog's observer
  sensor    whatever the chosen sensor runs; a sensor that holds readers pets the deadman
  deadman   pets the external deadman (agent.runtime.deadman) while no sensor does it (every 10 s)

Every new version of a planted file goes to the sensor before it is renamed into place
(`Sensor.watch_new_file`, through the planter's `on_new_file`), and every change the repair watcher
sees makes the sensor look again at what is at the path (`Sensor.refresh`): sensors keyed by inode
stay on the file. A read the read log or the spool cannot take is counted (agent.reporting.losses).

A sensor that cannot start is reported LOUDLY (error log, status, heartbeat healthy=false with the
reason) and the agent keeps planting and reporting; it never silently switches to a weaker sensor.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.clock import to_iso, utcnow
from agent.config import AgentConfig
from agent.events.bounds import bound_event
from agent.events.probe import ProvenanceProbe, with_provenance
from agent.events.probe_deadline import BoundedProbe
from agent.events.secrets import KnownSecrets
from agent.events.trust import Classification, judge
from agent.planting.planter import Planter, resolve_targets
from agent.planting.repair import RepairWatcher
from agent.reporting.enroll import EnrollmentError, ensure_enrolled
from agent.reporting.losses import LossCounters
from agent.reporting.payloads import (
    read_event_payload,
    self_report_payload,
    target_reports,
    unavailable_health,
)
from agent.reporting.spool import Spool
from agent.reporting.uploader import UploadWorker
from agent.runtime.deadman import Deadman
from agent.selftest_mark import SELF_TEST, MarkReader
from agent.state import READLOG_FILE, SPOOL_FILE, DirLock, StateStore
from server_api_client import IssuerClient, TripkeyError

log = logging.getLogger(__name__)

EVENT_QUEUE_SIZE = 10_000
SELF_REPORT_MIN_INTERVAL = 10.0
TICK_SECONDS = 1.0


def make_client(config: AgentConfig, token: str | None = None) -> IssuerClient:
    return IssuerClient(
        config.require_issuer(), token, timeout=config.issuer_timeout, ca_bundle=config.ca_bundle, retries=2
    )


def sensor_options(config: AgentConfig) -> dict[str, Any]:
    """Constructor options for the configured sensor. The fail-open budget only means something to
    fanotify (auto drops what its pick does not take; an explicit other sensor would reject it)."""
    if config.sensor in ("auto", "fanotify", "fanotify-notify"):
        return {"budget": config.fail_open_ms / 1000.0}
    return {}


class AgentService:
    """The resident agent: `run()` blocks until `stop()` (SIGTERM via run_service); returns an exit code."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        sensor_factory: Callable[..., Any] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        deadman: Deadman | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        # Kills this process from outside when it stops answering (agent.runtime.deadman); off in-process.
        self.deadman = deadman or Deadman(reason="not armed: the agent runs inside another program")
        self._sensor_factory = sensor_factory
        self.stop_event = threading.Event()
        self._events: queue.Queue[Any] = queue.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._queue_lost = 0
        # In memory only: what the read log and the spool must never store. Replaced, never mutated,
        # so the consumer thread can read it while the planter adds a secret.
        self._secrets = KnownSecrets()
        self._upload_wake = threading.Event()
        self._reenroll = threading.Event()
        self.sensor: Any = None
        self.sensor_error: str | None = None
        self.store: StateStore | None = None
        self.spool: Spool | None = None
        self.readlog: Any = None
        self.losses: LossCounters | None = None
        self.classifier: Any = None
        self.selftest_mark: MarkReader | None = None
        self.provenance: BoundedProbe | None = None
        self.planter: Planter | None = None
        self.watcher: RepairWatcher | None = None
        self.ready = threading.Event()  # set once planted and sensing (tests wait on it)
        self.selfreport: Any = None
        self.selfreport_error: str | None = None
        self._last_report: dict[int, float] = {}

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        config = self.config
        lock = DirLock(config.state_dir)
        lock.acquire()
        threads: list[threading.Thread] = []
        self.deadman.start()
        self.deadman.ready()
        try:
            self.store = store = StateStore(config.state_dir)
            with store.mutate() as st:
                st.service_pid, st.service_started_at = os.getpid(), to_iso(self.clock())
            self.losses = LossCounters(store.dir)
            self.spool = Spool(store.dir / SPOOL_FILE, config.spool_max_events)
            self.readlog, self.classifier = _open_readlog(config, store.dir / READLOG_FILE)
            self.selftest_mark = MarkReader(store.dir)
            self.provenance = _provenance_probe(config)
            client = make_client(config)
            targets, errors = resolve_targets(config)
            try:
                ensure_enrolled(store, client, config, [t.owner.name for t in targets], stop=self.stop_event)
            except EnrollmentError as exc:
                if self.stop_event.is_set():
                    return 0
                log.error("cannot enroll: %s", exc)
                return 1
            self.planter = Planter(
                config,
                store,
                client,
                emit=self._spool_put,
                clock=self.clock,
                on_secret=self._scrub_secret,
                on_new_file=self._watch_new_file,
            )
            self.planter.sync(targets, errors)
            self._skip_planted()
            self._start_sensor()
            self.watcher = RepairWatcher(self.planter, on_change=self._target_changed)
            self.watcher.start(self.planter.paths)
            self._start_selfreport()
            for name, target in (
                ("tripkey-consumer", self._consume),
                ("tripkey-uploader", self._upload_loop),
            ):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                threads.append(thread)
            self._persist_health()
            self.ready.set()
            log.info(
                "tripkey-agent %s running: %d target(s), sensor %s",
                __version__,
                len(self.planter.paths),
                self._health().get("name"),
            )
            self._main_loop(client)
            return 0
        finally:
            self._shutdown(threads)
            lock.release()

    def stop(self) -> None:
        self.stop_event.set()
        self._upload_wake.set()

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        self.stop_event.set()
        self._upload_wake.set()
        if self.watcher is not None:
            self.watcher.stop()
        if self.selfreport is not None:
            self.selfreport.stop()
        if self.sensor is not None:
            try:
                self.sensor.stop()
            except Exception:
                log.exception("sensor stop failed")
        self._events.put(None)  # wakes the consumer, which drains what is left first
        for thread in threads:
            thread.join(timeout=15)
        if self.store is not None:
            try:
                with self.store.mutate() as st:
                    st.sensor_health = dict(self._health(), running=False)
                    st.selfreport_health = dict(self.selfreport_health(), running=False)
                    st.service_pid = None
            except OSError:
                log.exception("could not save state at shutdown")
        if self.spool is not None:
            self.spool.close()
        if self.readlog is not None and hasattr(self.readlog, "close"):
            self.readlog.close()
        if self.provenance is not None:
            self.provenance.close()
        if self.losses is not None:
            self.losses.close()
        self.deadman.stop()
        log.info("tripkey-agent stopped")

    # ------------------------------------------------------------------ sensor

    def _start_sensor(self) -> None:
        assert self.planter is not None
        factory = self._sensor_factory or _default_sensor_factory
        paths = self.planter.paths
        try:
            self.sensor = factory(self.config.sensor, paths, self._on_read, **sensor_options(self.config))
            self.sensor.start()
            self.sensor_error = None
            # A sensor that holds readers pets the deadman from the path that answers them.
            petter = self.deadman.delegate(f"the {self.sensor.name} sensor's event path")
            if not self.sensor.attach_deadman(petter):
                petter.release()
        except Exception as exc:  # SensorUnavailable or anything else: loud, never a silent fallback
            self.sensor = None
            self.sensor_error = f"sensor {self.config.sensor!r} could not start: {exc}"
            log.error(
                "!!! %s — reads of the planted files are NOT being recorded; planting and "
                "reporting continue. Fix the cause or choose another sensor explicitly.",
                self.sensor_error,
            )

    def _health(self) -> dict[str, Any]:
        if self.sensor is None:
            health = unavailable_health(self.config.sensor, self.sensor_error or "sensor not started")
        else:
            try:
                health = dict(self.sensor.health().to_dict())
            except Exception as exc:
                health = unavailable_health(self.config.sensor, f"health check failed: {exc}")
        health["lost_events"] = int(health.get("lost_events") or 0) + self._queue_lost
        health["deadman"] = self.deadman.describe()
        if self.losses is not None:
            health.update(self.losses.counts())  # readlog_failed, spool_failed
        return health

    def _watch_new_file(self, path: str, fd: int) -> None:
        """The planter's hook: a new version of `path` is about to be renamed into place."""
        sensor = self.sensor
        if sensor is not None:
            sensor.watch_new_file(path, fd)

    def _target_changed(self, path: str) -> None:
        """The repair watcher saw `path` change: someone may have put a new inode there."""
        sensor = self.sensor
        if sensor is not None:
            sensor.refresh([path])

    def _on_read(self, event: Any) -> None:
        """Sensor callback: must return at once; storage happens on the consumer thread."""
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self._queue_lost += 1  # reported as lost_events in the heartbeat

    def _consume(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                self._record(event)
            except Exception:  # a bug, not a full disk: never silent, the read is counted as lost
                log.exception("could not record a read of %s", getattr(event, "path", "?"))
                self._lost("readlog_failed", None)

    def _record(self, event: Any) -> None:
        """Read log first (the host's record of truth), then the spool. A read the read log cannot
        take (disk full, database error) is counted and still spooled for the issuer."""
        label: Classification | None
        if self.selftest_mark is not None and self.selftest_mark.is_selftest(event):
            # `tripkey-agent trigger` reading its own canary: the agent knows it, no rule decides it.
            label = Classification(SELF_TEST, reason="the agent's own self-test (tripkey-agent trigger)")
        else:
            event, label = self._triage(event)
        # Scrub the planted secrets, then bound every string so the event fits the read
        # log's budget and the issuer's API limits (agent.events.bounds).
        event = bound_event(event, self._secrets)
        try:
            event_id = self.readlog.record(event, label)
        except Exception as exc:
            self._lost("readlog_failed", exc)
            event_id = str(uuid.uuid4())
        self._spool_put(read_event_payload(event, event_id, label, secrets=self._secrets))
        if self.store is not None:
            self.store.state.last_event_at = to_iso(event.time)

    def _lost(self, counter: str, exc: BaseException | None) -> None:
        if self.losses is not None:
            self.losses.lose(counter, exc)
        else:
            log.error("could not keep an event (%s): %s", counter, exc)

    def _triage(self, event: Any) -> tuple[Any, Classification | None]:
        """The reader's provenance (bounded in time) and the label it supports."""
        if self.classifier is None:
            return event, None
        if self.provenance is None:
            label, rule = self.classifier.explain(event)
            return event, Classification(label, rule, reason="by name only: provenance recording is off")
        provenance = self.provenance.reader(event)
        if provenance.error:
            log.warning("provenance of pid %s (%s): %s", event.pid, event.exe, provenance.error)
        event = with_provenance(event, provenance)
        return event, judge(self.classifier, event, provenance, self.provenance.file)

    def _skip_planted(self) -> None:
        if self.provenance is not None and self.planter is not None:
            self.provenance.probe.set_skip_paths(self.planter.paths)

    # ------------------------------------------------------------------ self-reports

    def _start_selfreport(self) -> None:
        if not self.config.selfreport:
            return
        from pathlib import Path

        from agent.selfreport.server import SelfReportServer

        try:
            server = SelfReportServer(Path(self.config.selfreport_socket), self._on_self_report)
            server.start()
            self.selfreport = server
        except OSError as exc:
            # Expected when not root (demo, tests): /run/tripkey belongs to the root service.
            self.selfreport_error = f"cannot listen on {self.config.selfreport_socket}: {exc}"
            level = logging.ERROR if getattr(os, "geteuid", lambda: 0)() == 0 else logging.WARNING
            log.log(level, "self-reports from the tray are disabled: %s", self.selfreport_error)

    def _own_targets(self, uid: int) -> list[str]:
        """The planted files of the local user with this uid (the only ones they may report on)."""
        if self.planter is None:
            return []
        return [
            path
            for path in self.planter.paths
            if (target := self.planter.target(path)) is not None and target.owner.uid == uid
        ]

    def _on_self_report(self, report: Any) -> None:
        """A local user says they opened their file (uid from SO_PEERCRED); at most one per uid per 10 s.

        A report binds only to files planted for the sender's own uid: user B can never mark user A's
        alert as "likely benign". Anything else is refused with a ValueError the sender reads."""
        own = self._own_targets(report.uid)
        if report.path is not None and report.path not in own:
            raise ValueError(
                f"{report.path} is not a canary file planted for you ({report.user}, uid {report.uid}); "
                "a report can only be about your own file"
            )
        if not own:
            raise ValueError(
                f"no canary file is planted for you ({report.user}, uid {report.uid}) on this device; "
                "there is nothing to report"
            )
        now = time.monotonic()
        if now - self._last_report.get(report.uid, -1e9) < SELF_REPORT_MIN_INTERVAL:
            raise ValueError("a report from this user was just received; try again in a few seconds")
        self._last_report[report.uid] = now
        for path in [report.path] if report.path is not None else own:
            target = self.planter.target(path) if self.planter is not None else None
            user = target.owner.name if target is not None else report.user  # the planter's user database
            self._spool_put(self_report_payload(path, user, report.note, report.time, secrets=self._secrets))
            log.info("self-report from %s (uid %d) about %s", user, report.uid, path)

    def selfreport_health(self) -> dict[str, Any]:
        """The self-report socket's state for status and the heartbeat."""
        if not self.config.selfreport:
            return {"enabled": False, "running": False, "socket": None, "error": None}
        if self.selfreport is None:
            return {
                "enabled": True,
                "running": False,
                "socket": self.config.selfreport_socket,
                "error": self.selfreport_error or "not started",
            }
        return dict(self.selfreport.health())

    def _scrub_secret(self, secret: str) -> None:
        self._secrets = self._secrets.with_secret(secret)
        if self.readlog is not None:
            self.readlog.set_secrets(self._secrets)

    def _spool_put(self, event: dict[str, Any]) -> None:
        if self.spool is None:
            return
        try:
            self.spool.put(event)
        except Exception as exc:  # disk full, database error: counted, never silent
            self._lost("spool_failed", exc)
            return
        self._upload_wake.set()

    # ------------------------------------------------------------------ upload + heartbeat

    def _upload_loop(self) -> None:
        assert self.store is not None and self.spool is not None
        worker = UploadWorker(
            make_client(self.config, self.store.state.device_token),
            self.spool,
            self.store,
            upload_interval=self.config.upload_interval,
            heartbeat_interval=self.config.heartbeat_interval,
            health=self._health,
            targets=lambda: target_reports(self.store),  # type: ignore[arg-type]
            selfreport=self.selfreport_health,
            stop=self.stop_event,
            wake=self._upload_wake,
            reenroll=self._reenroll,
            clock=self.clock,
        )
        worker.run()

    # ------------------------------------------------------------------ main loop

    def _main_loop(self, client: IssuerClient) -> None:
        assert self.planter is not None and self.store is not None
        next_check = time.monotonic() + self.config.check_interval
        next_persist = time.monotonic() + 10.0
        while not self.stop_event.wait(TICK_SECONDS):
            # One failing pass (an unreadable passwd file, a full disk) must not end the service:
            # it is logged and tried again on the next tick / check.
            try:
                if self._reenroll.is_set():
                    self._try_reenroll(client)
                self.planter.run_due()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + self.config.check_interval
                    self.periodic_pass()
                if now >= next_persist:
                    next_persist = now + 10.0
                    if self.selfreport is not None:
                        self.selfreport.ensure_running()  # a stopped socket is said, then restarted
                    self._persist_health()
            except Exception:
                log.exception("agent main loop pass failed; continuing")

    def periodic_pass(self) -> None:
        """Rescan users, plant/repair/refresh everything, update what the sensor and watcher watch."""
        assert self.planter is not None
        targets, errors = resolve_targets(self.config)
        self.planter.sync(targets, errors)
        self._skip_planted()
        paths = self.planter.paths
        if self.sensor is not None:
            try:
                self.sensor.set_paths(paths)
            except Exception:
                log.exception("could not update the sensor's paths")
        if self.watcher is not None:
            self.watcher.set_paths(paths)
        self._persist_health()

    def _try_reenroll(self, client: IssuerClient) -> None:
        assert self.store is not None
        if not self.config.enroll_token:
            log.error("device token refused and no enroll_token configured: uploads are stalled")
            return
        try:
            owners = sorted({ts.owner for ts in self.store.state.targets.values()})
            ensure_enrolled(self.store, client, self.config, owners, force=True, max_attempts=1)
        except (EnrollmentError, TripkeyError) as exc:
            log.error("re-enrollment failed: %s", exc)
            return
        self._reenroll.clear()
        self._upload_wake.set()

    def _persist_health(self) -> None:
        if self.losses is not None:
            self.losses.flush()
        if self.store is None:
            return
        health = dict(self._health(), running=True, recorded_at=to_iso(self.clock()))
        with self.store.mutate() as st:
            st.sensor_health = health
            st.selfreport_health = self.selfreport_health()


def _default_sensor_factory(
    name: str, paths: list[str], callback: Callable[[Any], None], **options: Any
) -> Any:
    from agent.sensors import create_sensor

    return create_sensor(name, paths, callback, **options)


def _open_readlog(config: AgentConfig, path: Path) -> tuple[Any, Any]:
    from agent.events.classify import Classifier
    from agent.events.readlog import ReadLog

    readlog = ReadLog(path, retention_days=config.readlog_retention_days, max_mb=config.readlog_max_mb)
    classifier = Classifier.from_config(list(config.classification_rules))
    return readlog, classifier


def _provenance_probe(config: AgentConfig) -> BoundedProbe | None:
    if not config.provenance:
        log.warning("provenance = false: readers are classified by name alone, which a name can fool")
        return None
    from agent.events.packages import detect

    probe = ProvenanceProbe(
        packages=detect(),
        max_hash_bytes=config.provenance_hash_max_mb * 1024 * 1024,
        hash_seconds=config.provenance_hash_seconds,
    )
    return BoundedProbe(probe, timeout=config.provenance_timeout)


def run_service(
    config: AgentConfig,
    *,
    sensor_factory: Callable[..., Any] | None = None,
    deadman: Deadman | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; installs the signal handlers (main thread only)."""
    service = AgentService(config, sensor_factory=sensor_factory, deadman=deadman)

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        service.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Everything imported by now lives as long as the agent. Freezing it keeps each full garbage
    # collection short: a collection pauses every thread, including the capture worker that must
    # answer a held reader within the fail-open budget.
    gc.collect()
    gc.freeze()
    try:
        return service.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = [
    "AgentService",
    "make_client",
    "run_service",
]
