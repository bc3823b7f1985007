"""Process memory: peak and current resident set size, the number a device's memory limit is
about."""

import contextlib
import functools
import gc
import resource
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    return psutil.Process().memory_info().rss / 2**20


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


def heap_in_use_mb() -> float | None:
    """MiB the C allocator holds for live allocations: glibc's `mallinfo2`, heap chunks in use
    plus mmapped ones; None where glibc is not the allocator. Unlike the resident set it leaves
    out the freed blocks glibc keeps for reuse, so two programs' live memory compares without
    their allocators' history."""
    info = _mallinfo2()
    return None if info is None else (info.uordblks + info.hblkhd) / 2**20


class HeapPeak:
    """The highest `heap_in_use_mb` at the end of every module's forward while the context is
    open (a global forward hook): where a training step's activations peak, and where a
    backprop step's live memory peaks. `peak_mb` is None without glibc."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._handle: RemovableHandle | None = None

    def sample(self, *_args) -> None:
        now = heap_in_use_mb()
        if now is not None and (self.peak_mb is None or now > self.peak_mb):
            self.peak_mb = now

    def __enter__(self) -> "HeapPeak":
        from torch.nn.modules.module import register_module_forward_hook

        self.sample()
        self._handle = register_module_forward_hook(self.sample)
        return self

    def __exit__(self, *_exc) -> None:
        assert self._handle is not None  # set by __enter__
        self._handle.remove()


@functools.cache
def _mallinfo2_function():
    """glibc's mallinfo2 with its result type, or None (not glibc, or glibc before 2.33)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )  # fmt: skip
        ]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    return fn


def _mallinfo2():
    fn = _mallinfo2_function()
    return None if fn is None else fn()


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim): what a load's
    transients (a tokenizer's output, a GGUF file's parsed metadata) freed stays resident in
    the allocator's arenas otherwise. No-op without glibc."""
    import ctypes

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def lean_allocator() -> bool:
    """Have glibc's malloc serve every buffer of 128 KiB or more by its own mapping, returned
    to the system when freed (M_MMAP_THRESHOLD; by default the threshold grows to 32 MiB as
    large buffers are freed, and freed buffers below it stay resident). Resident memory then
    tracks the live tensors; each large allocation costs fresh pages. False without glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, 128 * 1024))
