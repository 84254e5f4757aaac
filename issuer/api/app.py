"""create_app(settings): the issuer's FastAPI application. Nothing is built at import time.

The lifespan applies migrations, builds the AWS gateway and starts the detection runner; the
session factory, settings and gateway live on app.state and reach routes through issuer.api.deps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from issuer import __version__
from issuer.api.errors import RequestLimitsMiddleware, install_error_handlers
from issuer.api.observe import MetricsMiddleware
from issuer.api.routers import (
    alerts,
    coverage,
    credentials,
    dead_letters,
    devices,
    enroll,
    events,
    health,
    ingest,
)
from issuer.db import Database
from issuer.metrics import Metrics
from issuer.settings import Settings

log = logging.getLogger(__name__)

_DESCRIPTION = (
    "Mints canary AWS credentials for enrolled devices, keeps the registry of where each one lives, "
    "collects read events from agents and raises alerts when a canary is used. See docs/api.md."
)


def _start_detection(settings: Settings, database: Database, gateway: Any, metrics: Metrics) -> Any:
    if not settings.detection_enabled():
        log.info("no detection source or sink configured; detection runner not started")
        return None
    try:
        from issuer.detection.runner import DetectionRunner
    except ImportError as exc:
        # Said loudly: an issuer that silently does not detect would be worse than none.
        log.error("detection is configured but issuer.detection.runner cannot be imported: %s", exc)
        raise
    runner = DetectionRunner(settings, database.sessionmaker, gateway)
    runner.on_events = metrics.observe_aws_events
    runner.start()
    return runner


def _fingerprint_warnings(settings: Settings, gateway: Any, sessionmaker: Any) -> None:
    from issuer.checks import warn_at_start

    try:
        warn_at_start(settings, gateway, sessionmaker)
    except Exception:
        log.exception("the known-canary-accounts check failed")


def create_app(settings: Settings, *, aws_gateway: Any = None, migrate: bool = True) -> FastAPI:
    """Build the app. `aws_gateway`: use this one instead of building it from settings."""
    database = Database(settings.db_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            await run_in_threadpool(database.migrate)
        if app.state.aws_gateway is None:
            from issuer.aws.gateway import AwsGateway

            app.state.aws_gateway = AwsGateway(settings.minting_config())
        runner = await run_in_threadpool(
            _start_detection, settings, database, app.state.aws_gateway, app.state.metrics
        )
        # Fingerprint resistance: warn if the pool is on a public list of canary accounts (in the
        # background: it may call AWS, and an answer that never comes must not hold the start).
        threading.Thread(
            target=_fingerprint_warnings,
            args=(settings, app.state.aws_gateway, database.sessionmaker),
            name="tk-fingerprint-check",
            daemon=True,
        ).start()
        app.state.detection_runner = runner
        log.info("issuer %s ready (database %s)", __version__, database.engine.url.get_backend_name())
        try:
            yield
        finally:
            if runner is not None:
                await run_in_threadpool(runner.stop)
            database.dispose()

    app = FastAPI(
        title="Tripkey issuer",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.sessionmaker = database.sessionmaker
    app.state.aws_gateway = aws_gateway
    app.state.detection_runner = None
    metrics = Metrics()
    metrics.watch(database.sessionmaker, lambda: app.state.detection_runner)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(RequestLimitsMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times everything, 413s too
    for module in (health, enroll, devices, credentials, events, alerts, ingest, coverage, dead_letters):
        app.include_router(module.router)
    return app
