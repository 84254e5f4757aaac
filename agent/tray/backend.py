"""Which pystray backend to use: pystray's own choice, overridable by TRIPKEY_TRAY_BACKEND.

Kept separate from the GUI code so that choosing a backend is testable without a display, and so
pystray is imported only when the tray actually runs (the service never imports it).
"""

from __future__ import annotations

import os

KNOWN_BACKENDS = ("appindicator", "gtk", "xorg", "darwin", "win32", "dummy")
ENV_OVERRIDE = "TRIPKEY_TRAY_BACKEND"


class TrayBackendError(Exception):
    """The requested tray backend is unknown or cannot run here."""


def select_backend(environ: dict[str, str] | None = None) -> str | None:
    """The backend name to force, or None to let pystray pick. Sets PYSTRAY_BACKEND accordingly."""
    env = os.environ if environ is None else environ
    wanted = env.get(ENV_OVERRIDE, "").strip().lower()
    if not wanted:
        return None
    if wanted not in KNOWN_BACKENDS:
        raise TrayBackendError(
            f"{ENV_OVERRIDE}={wanted!r} is not a tray backend; choose one of {', '.join(KNOWN_BACKENDS)}"
        )
    env["PYSTRAY_BACKEND"] = wanted
    return wanted
