"""This machine's measured peak: GEMM FLOP/s per dtype and copy bandwidth, saved for the
`this-machine` device profile (`edgetune.cost.device`) in `<cache_dir>/this-machine.json`.

Each figure is the median of `repeats` timed runs after a warm-up. A dtype this machine cannot
multiply (an error from torch) is left out, never estimated.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from edgetune.cost.device import measured_path
from edgetune.io import atomic_write_text

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_flops(dtype: str = "fp32", n: int = 1024, repeats: int = 5) -> float:
    """Median FLOP/s of an (n x n) @ (n x n) product in `dtype` (2 n^3 FLOPs each)."""
    dt = DTYPES[dtype]
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    return 2 * n**3 / _median_time(lambda: torch.mm(a, b), repeats)


def copy_bandwidth(mbytes: int = 256, repeats: int = 5) -> float:
    """Median bytes/s of copying a `mbytes` MiB buffer (read + write counted)."""
    src = torch.empty(mbytes * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    return 2 * src.numel() / _median_time(lambda: dst.copy_(src), repeats)


def measure_this_machine(n: int = 1024, repeats: int = 5, path: Path | None = None) -> dict:
    """Measure and save. Returns what was written."""
    peaks = {}
    for name in DTYPES:
        try:
            peaks[name] = gemm_flops(name, n, repeats)
        except RuntimeError:
            continue
    data = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "gemm_n": n,
        "repeats": repeats,
        "peak_flops": peaks,
        "bandwidth": copy_bandwidth(repeats=repeats),
    }
    atomic_write_text(path or measured_path(), json.dumps(data, indent=2))
    return data
