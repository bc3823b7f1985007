"""Where edgetune keeps what it prepares once: converted models and unpacked data sets."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $EDGETUNE_CACHE, else $XDG_CACHE_HOME/edgetune, else ~/.cache/edgetune."""
    if root := os.environ.get("EDGETUNE_CACHE"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edgetune"
