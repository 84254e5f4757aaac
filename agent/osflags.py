"""OS flags, defined once (as psutil does). This is the only agent module that reads sys.platform."""

import sys

LINUX = sys.platform.startswith("linux")
MACOS = sys.platform == "darwin"
WINDOWS = sys.platform == "win32"
POSIX = LINUX or MACOS

__all__ = ["LINUX", "MACOS", "POSIX", "WINDOWS"]
