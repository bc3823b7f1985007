"""Process memory: peak and current resident set size, the number a device's memory limit is
about."""

import contextlib
import functools
import gc
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from edgetune.cost.latency import MAPPED_LEAN

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from torch.utils.hooks import RemovableHandle


_earlier_peak_mb = 0.0  # the peak before the last `reset_peak`


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB, the peaks before any
    `reset_peak` included. Linux: the address space's high-water mark (VmHWM), which starts
    afresh at exec; getrusage's ru_maxrss (elsewhere) carries a forking parent's peak into the
    child that execs."""
    try:
        peak = _status_bytes("VmHWM") / 2**20
    except (OSError, StopIteration):
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = raw / 2**20 if sys.platform == "darwin" else raw / 1024
    return max(_earlier_peak_mb, peak)


def reset_peak() -> int:
    """Reset the kernel's high-water mark of the resident set to the current resident set
    (Linux: /proc/self/clear_refs), keeping the peak so far for `peak_rss_mb`; then the mark
    is the peak of what runs from here (`peak_since_reset`). Returns the resident bytes now."""
    global _earlier_peak_mb
    _earlier_peak_mb = peak_rss_mb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def peak_since_reset() -> int:
    """Bytes of the resident set's high-water mark since the last `reset_peak`."""
    return _status_bytes("VmHWM")


def rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def anonymous_rss() -> int | None:
    """Bytes of this process's resident memory that no file backs (RssAnon): what it wrote
    itself, without its libraries' code or memory-mapped weights; None where /proc is not."""
    try:
        return _status_bytes("RssAnon")
    except (OSError, StopIteration):
        return None


def anonymous_bytes(tensors: "Iterable[torch.Tensor]") -> int:
    """Bytes of these CPU tensors' storages (each once) that are not views of a memory-mapped
    file (weights loaded from safetensors or GGUF are, until written): what they hold in
    anonymous memory. Linux; elsewhere every storage counts."""
    import bisect

    ranges = _file_mappings()
    starts = [a for a, _ in ranges]
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t.device.type != "cpu":
            continue
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        i = bisect.bisect_right(starts, ptr) - 1
        if i < 0 or ptr >= ranges[i][1]:
            total += storage.nbytes()
    return total


def _file_mappings() -> list[tuple[int, int]]:
    """The address ranges of this process's file-backed mappings, sorted (none without /proc)."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    a, b = fields[0].split("-")
                    out.append((int(a, 16), int(b, 16)))
    except OSError:
        return []
    return sorted(out)


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
    base = reset_peak()
    measured()
    return peak_since_reset() - base


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
    return bool(mallopt(m_mmap_threshold, MAPPED_LEAN))


# -- the limit the system enforces ----------------------------------------------------------
def _cgroup_dir() -> Path | None:
    """This process's memory cgroup folder (v1's memory controller, else v2's unified one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def cgroup_limit() -> int | None:
    """Bytes the kernel lets this process's memory cgroup hold before it reclaims and then
    kills (v1 memory.limit_in_bytes, v2 memory.max; the lowest of the cgroup and those above
    it); None where no limit is set."""
    folder = _cgroup_dir()
    limits = []
    while folder is not None and folder.name not in ("memory", "cgroup"):
        for name in ("memory.limit_in_bytes", "memory.max"):
            if (value := _read_int(folder / name)) is not None:
                limits.append(value)
        folder = folder.parent if folder.parent != folder else None
    # v1 writes a huge number (PAGE_COUNTER_MAX pages) for no limit
    limit = min(limits, default=None)
    return None if limit is None or limit >= 2**60 else limit


def cgroup_working_set() -> int | None:
    """Bytes this process's memory cgroup holds that the kernel cannot simply drop: its usage
    less the inactive file cache (what kubelet calls the working set); None without one."""
    folder = _cgroup_dir()
    if folder is None:
        return None
    usage = _read_int(folder / "memory.usage_in_bytes")
    if usage is None:
        usage = _read_int(folder / "memory.current")
    if usage is None:
        return None
    inactive = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("total_inactive_file", "inactive_file"):
                inactive = int(value)
                break
    except (OSError, ValueError):
        pass
    return max(0, usage - inactive)
