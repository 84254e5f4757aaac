"""The sensor names the `sensor` config key accepts, defined once (config and registry both use it)."""

#: "auto" picks the strongest sensor this host can run; the others name one mechanism.
SENSOR_NAMES: tuple[str, ...] = (
    "auto",
    "ebpf",
    "fanotify",
    "fanotify-notify",
    "audit",
    "eslogger",
    "eventlog",
)

__all__ = ["SENSOR_NAMES"]
