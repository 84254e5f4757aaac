from __future__ import annotations

import pytest

from agent.tray.backend import ENV_OVERRIDE, TrayBackendError, select_backend


def test_no_override_lets_pystray_choose() -> None:
    env: dict[str, str] = {}
    assert select_backend(env) is None
    assert "PYSTRAY_BACKEND" not in env


def test_override_forces_pystray_backend() -> None:
    env = {ENV_OVERRIDE: "XORG"}
    assert select_backend(env) == "xorg"
    assert env["PYSTRAY_BACKEND"] == "xorg"


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(TrayBackendError, match="not a tray backend"):
        select_backend({ENV_OVERRIDE: "qt9"})
