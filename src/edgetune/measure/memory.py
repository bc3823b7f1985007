"""Process memory: peak resident set size, the number a device's memory limit is about."""

import gc
import resource
import sys
from collections.abc import Callable


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(s for s in f if s.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def resident_growth(warm_up: Callable[[], object], measured: Callable[[], object]) -> int:
    """Bytes the resident high-water mark grows by during `measured()`, after `warm_up()` has
    made the weights, optimizer state and library buffers resident. Linux only: the mark is
    reset through /proc/self/clear_refs."""
    warm_up()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    base = _status_bytes("VmRSS")
    measured()
    return _status_bytes("VmHWM") - base
