"""This machine's measured speed, saved for the `this-machine` device profile
(`edgetune.cost.device`) in `<cache_dir>/this-machine.json`: the GEMM peak FLOP/s per dtype and
the copy bandwidth (the roofline's figures), and the kernel tables the step-time model reads
(`edgetune.cost.latency.Kernels`): GEMM seconds over a grid of shapes per dtype, and the
seconds of element-wise kernels, a normal draw and a fused AdamW step by size.

Each figure is the median of timed runs after a warm-up (at least `repeats`, more for a short
kernel, up to a tenth of a second of runs). A dtype this machine cannot multiply (an error from
torch) is left out, never estimated.

Element-wise kernels are timed on one tensor over and over: their best case, from cache. Inside
a step the matrix products between them have evicted their operands, and they stream from
memory: the step-time model bounds each below by its bytes over the copy bandwidth measured here
(`edgetune.cost.latency.Kernels.seconds`).
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.activations import NewGELUActivation
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from edgetune.cost.device import measured_path
from edgetune.cost.latency import ELEMENTWISE
from edgetune.io import atomic_write_text
from edgetune.models.quantized import quantize
from edgetune.precision import QUANTIZED, WEIGHT_BYTES

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


SIDES = (16, 64, 256, 1024, 4096)  # the GEMM grid's side lengths
ELEMENTS = tuple(1024 * 4**i for i in range(8))  # 1 Ki .. 16 Mi elements


def _median_time(fn, repeats: int, budget_s: float = 0.0) -> float:
    fn()  # warm-up
    times: list[float] = []
    while len(times) < repeats or sum(times) < budget_s and len(times) < 50:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _linear_time(m: int, k: int, n: int, dt: torch.dtype, repeats: int) -> float:
    """Seconds of x W^T with x (m, k) and W (n, k): a linear layer's product."""
    x, w = torch.randn(m, k).to(dt), torch.randn(n, k).to(dt)
    return _median_time(lambda: torch.nn.functional.linear(x, w), repeats, 0.1)


WIDTH = 512  # the rows' width of the element-wise kernels' tensors


def _elementwise(name: str, width: int):
    """The forward of the ELEMENTWISE kernel `name` on (rows, width) fp32 tensors, as the
    models run it (transformers' Python GELU and RMSNorm modules)."""
    ones, zeros = torch.ones(width), torch.zeros(width)
    return {
        "gelu": F.gelu,
        "gelu_new": NewGELUActivation(),
        "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
        "silu": F.silu,
        "relu": F.relu,
        "tanh": torch.tanh,
        "softmax": partial(F.softmax, dim=-1),
        "layernorm": lambda x: F.layer_norm(x, (width,), ones, zeros),
        "rmsnorm": LlamaRMSNorm(width),
        "log_softmax": partial(F.log_softmax, dim=-1),
    }[name]


def elementwise_tables(sizes: int = 9, repeats: int = 3) -> dict:
    """Per ELEMENTWISE name, (bytes of the output, seconds) of its forward, and under the name +
    ".backward" of its backward through autograd (forward and backward timed together, less
    the forward), over the first `sizes` element counts of ELEMENTS, each on one tensor over
    and over (its best case: from cache; `Kernels.seconds` bounds it below by the bytes it
    streams over the memory bandwidth)."""
    tables: dict[str, list] = {}
    for name in ELEMENTWISE:
        forward, backward = [], []
        for n in ELEMENTS[:sizes]:
            width = min(WIDTH, n)
            f = _elementwise(name, width)
            x = torch.randn(max(1, n // width), width)

            def both(f=f, x=x):
                y = f(x.requires_grad_())
                y.backward(torch.ones_like(y))

            fwd = _median_time(partial(f, x), repeats, 0.1)
            forward.append([4 * x.numel(), fwd])
            backward.append([4 * x.numel(), max(_median_time(both, repeats, 0.1) - fwd, 1e-7)])
        tables[name], tables[name + ".backward"] = forward, backward
    return tables


def dequant_tables(sizes: int = 9, repeats: int = 3) -> dict:
    """Per format a base can be held in (by its bytes a weight), (elements, seconds) of forming
    a (rows, WIDTH) matrix held in it as dense fp32, as a held layer does in each forward and
    backward (`edgetune.models.quantized`), from 1,024 elements up."""
    tables = {}
    for fmt in (*QUANTIZED, "bf16"):
        rows = []
        for n in ELEMENTS[:sizes]:
            packed = quantize(torch.randn(max(2, n // WIDTH), WIDTH), fmt)
            rows.append([packed.rows * WIDTH, _median_time(packed.dense, repeats, 0.1)])
        tables[str(WEIGHT_BYTES[fmt])] = rows
    return tables


def first_touch(mbytes: int = 64, repeats: int = 5) -> float:
    """Bytes/s at which a buffer the allocator has just mapped (`mbytes` MiB: above glibc's
    largest threshold, so mapped afresh at every allocation) is written, counting only what
    the first touch of its pages adds to a write into memory in use."""
    n = mbytes * 2**20 // 4
    buf = torch.empty(n)
    fresh = _median_time(lambda: torch.empty(n).fill_(1.0), repeats)
    reused = _median_time(lambda: buf.fill_(1.0), repeats)
    return 4 * n / max(fresh - reused, 1e-9)


def kernel_tables(sides: tuple[int, ...] = SIDES, repeats: int = 3, sizes: int = 9) -> dict:
    """The step-time model's tables (`edgetune.cost.latency.Kernels.from_json` reads them):
    GEMM seconds per dtype over `sides`^3 shapes; (size, seconds) of out = a + b (by bytes
    read and written) and of the named element-wise kernels (`elementwise_tables`), a normal
    draw into a tensor and a fused AdamW step (by elements), dropout's bernoulli_ draw (by
    bytes of fp32), and a held base's dequantization per format (`dequant_tables`), at the
    first `sizes` sizes of each; the rate of first touches of newly mapped pages."""
    gemm: dict[str, list] = {}
    for name, dt in DTYPES.items():
        try:
            gemm[name] = [[[_linear_time(m, k, n, dt, repeats) for n in sides] for k in sides]
                          for m in sides]  # fmt: skip
        except RuntimeError:
            continue
    stream = []
    for n in ELEMENTS[:sizes]:  # three fp32 tensors of n elements: two read, one written
        a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
        stream.append([3 * 4 * n, _median_time(partial(torch.add, a, b, out=c), repeats, 0.1)])
    normal, adamw, bernoulli = [], [], []
    g = torch.Generator().manual_seed(0)
    for n in ELEMENTS[:sizes]:
        normal.append([n, _median_time(partial(torch.randn, n, generator=g), repeats, 0.1)])
        noise = torch.empty(n)
        bernoulli.append([4 * n, _median_time(partial(noise.bernoulli_, 0.9), repeats, 0.1)])
        p = torch.nn.Parameter(torch.zeros(n))
        p.grad = torch.rand(n)
        opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
        adamw.append([n, _median_time(opt.step, repeats, 0.1)])
    return {"sides": list(sides), "gemm": gemm, "stream": stream, "normal": normal,
            "adamw": adamw, "bernoulli": bernoulli,
            "ops": elementwise_tables(sizes, repeats),
            "dequant": dequant_tables(sizes, repeats), "first_touch": first_touch()}  # fmt: skip


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


def measure_this_machine(
    n: int = 1024,
    repeats: int = 5,
    path: Path | None = None,
    sides: tuple[int, ...] = SIDES,
    sizes: int = 9,
) -> dict:
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
        "kernels": kernel_tables(sides, min(repeats, 3), sizes),
    }
    atomic_write_text(path or measured_path(), json.dumps(data, indent=2))
    return data
