"""Per-user tray app (pystray). Never imported by the service process: pystray loads only in `run`."""
