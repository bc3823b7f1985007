"""Step time from the kernels a step runs, each timed on this machine.

A step's `Work` lists what its kernels do, device-independent, from the analytic tape
(`edgetune.cost.graph`): its matrix products by shape (the forward's, the input and weight
gradients', LoRA's small products, the local updates of a forward-only rule), its element-wise
kernels by the bytes each streams (norms, activations, softmax, residual sums, the loss, and
their backward), the normal draws of a zeroth-order or forward-mode rule, and the tensors its
optimizer updates.

`edgetune bench hardware` times each kind of kernel on this machine (`Kernels`, saved beside
the GEMM peak in `this-machine.json`): GEMMs over a grid of (m, k, n) from 16 to 4,096 a side,
an element-wise kernel (out = a + b) over sizes from 4 KiB to 256 MiB, normal draws and the
fused AdamW step over tensor sizes. A step's time is the sum, over its work, of each kernel's
time read from those tables: log-log interpolation between measured points, linear scaling
past the largest (a product with a 49,152-wide vocabulary costs its width over 4,096 times the
widest measured). The tables carry the per-kernel overhead (a 16 x 16 x 16 product's time is
almost all of it) and the cache effects a single peak figure hides. Devices known by their
published peaks (the profiles in `edgetune/cost/devices/`) keep the roofline.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgetune.cost.forward_only import CHUNK
from edgetune.cost.graph import Event
from edgetune.errors import EdgetuneError


@dataclass(frozen=True)
class Work:
    """What one step's kernels do. `gemms`: (batch, m, k, n) -> how many times; `streams`:
    bytes an element-wise kernel reads and writes -> how many times; `normals`: elements drawn
    from a normal distribution (tensor sizes -> times); `adamw`: tensor sizes -> fused AdamW
    steps over them."""

    gemms: Counter = field(default_factory=Counter)
    streams: Counter = field(default_factory=Counter)
    normals: Counter = field(default_factory=Counter)
    adamw: Counter = field(default_factory=Counter)
    bernoulli: Counter = field(default_factory=Counter)  # dropout's noise draws, by bytes
    # element-wise kernels with a table of their own: (ELEMENTWISE name, or the name +
    # ".backward"; bytes of its output; bytes it streams, for a machine without that table)
    ops: Counter = field(default_factory=Counter)
    # a frozen matrix formed from a base held low: (bytes per held weight, elements) -> times
    dequant: Counter = field(default_factory=Counter)
    # buffers the step allocates (bytes -> times): operands' outputs, gradient buffers, the
    # trained tensors' gradients; those the allocator maps afresh cost their pages' first touch
    allocs: Counter = field(default_factory=Counter)
    mapped_from: float = math.inf  # the allocator maps buffers of this many bytes and more

    def __add__(self, other: Work) -> Work:
        return Work(self.gemms + other.gemms, self.streams + other.streams,
                    self.normals + other.normals, self.adamw + other.adamw,
                    self.bernoulli + other.bernoulli, self.ops + other.ops,
                    self.dequant + other.dequant, self.allocs + other.allocs,
                    min(self.mapped_from, other.mapped_from))  # fmt: skip

    def times(self, k: float) -> Work:
        """This work `k` times over."""

        def scale(c: Counter) -> Counter:
            return Counter({key: v * k for key, v in c.items()})

        return Work(scale(self.gemms), scale(self.streams), scale(self.normals),
                    scale(self.adamw), scale(self.bernoulli), scale(self.ops),
                    scale(self.dequant), scale(self.allocs), self.mapped_from)  # fmt: skip

    @property
    def macs(self) -> float:
        return sum(b * m * k * n * c for (b, m, k, n), c in self.gemms.items())


# glibc's malloc maps a buffer of this many bytes or more afresh (and unmaps it when freed): by
# default its threshold grows with the buffers freed up to 32 MiB on 64-bit systems; the lean
# allocator (`train.lean_allocator`) pins it at 128 KiB
MAPPED_DEFAULT = 32 * 2**20
MAPPED_LEAN = 128 * 2**10

# the element-wise kernels `edgetune bench hardware` times by name, forward and backward: the
# activations, softmax, the norms (RMSNorm as transformers' Python runs it) and the loss's
# log-softmax; the tape names them in `Event.kernel`
ELEMENTWISE = ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "relu", "tanh", "softmax",
               "layernorm", "rmsnorm", "log_softmax")  # fmt: skip


def _stream_bytes(e: Event) -> float:
    """Bytes an element-wise op reads and writes in the forward (a lookup reads its rows)."""
    if e.kind == "lookup":
        return 2 * e.out_bytes
    return e.out_bytes + sum(v for _, v in e.inputs)


def forward_work(events: Iterable[Event], dual: bool = False) -> Work:
    """The kernels of one forward over `events`; `dual`: with forward-mode AD, where a product
    whose output carries a tangent forms two more (`Event.tangent_gemms`) and an element-wise
    op runs again on the tangent (a named kernel: its derivative times the tangent, the work of
    its backward)."""
    w = Work()
    for e in events:
        for g in e.gemms + (e.tangent_gemms if dual else ()):
            w.gemms[g] += 1
        if e.out_bytes > 0:
            w.allocs[e.out_bytes] += 2 if dual and e.out_rg else 1
        if e.kind == "dropout":  # the noise drawn, then divided in place
            w.bernoulli[e.out_bytes] += 1
            w.streams[2 * e.out_bytes] += 1
        elif not e.gemms and e.out_bytes > 0:
            tangent = dual and e.out_rg
            if e.kernel in ELEMENTWISE:  # a tangent through it: its derivative, as a backward
                w.ops[(e.kernel, e.out_bytes, _stream_bytes(e))] += 1
                if tangent:
                    w.ops[(e.kernel + ".backward", e.out_bytes, 2 * _stream_bytes(e))] += 1
            else:
                w.streams[_stream_bytes(e)] += 2 if tangent else 1
    return w


def backward_work(events: Sequence[Event]) -> Work:
    """The kernels of the backward through `events`: each product's gradient products, and for
    an element-wise op a kernel that reads its output's gradient and what it saved and writes
    its inputs' gradients; a linear whose parameters train also sums its output's gradient
    over rows (the bias gradient); a trained embedding table's gradient is a dense fp32 table
    filled with zeros before the rows are added in."""
    w = Work()
    for e in reversed(events):
        for g in e.dx_gemms + e.dw_gemms:  # recorded only where a gradient is formed
            w.gemms[g] += 1
        if not e.out_rg:
            continue
        if e.grad_in:
            w.allocs[e.grad_in] += 1
        for _, n in e.params:
            w.allocs[4 * n] += 1
        if e.gemms:
            if e.params and e.kind == "linear":
                w.streams[e.out_bytes] += 1
        elif e.kind == "lookup" and e.params:
            w.streams[4 * e.weights] += 1
        elif e.out_bytes > 0:
            stream = e.out_bytes + e.grad_in + sum(v for _, v in e.saved)
            if e.kernel in ELEMENTWISE:
                w.ops[(e.kernel + ".backward", e.out_bytes, stream)] += 1
            else:
                w.streams[stream] += 1
    return w


def update_work(events: Iterable[Event]) -> Work:
    """The weight-gradient products alone: a forward-only rule's local updates."""
    w = Work()
    for e in events:
        for g in e.dw_gemms:
            w.gemms[g] += 1
    return w


def dequant_work(events: Iterable[Event], held_bytes: float, forwards: int,
                 backward: bool) -> Work:  # fmt: skip
    """A base held at `held_bytes` a weight: each frozen matrix formed in each of `forwards`
    forwards, and again in the backward where its input gradient is formed (the runtime
    keeps no dense copy: `edgetune.models.quantized`)."""
    w = Work()
    for e in events:
        if e.held:
            w.dequant[(held_bytes, e.held)] += forwards + (1 if backward and e.dx_gemms else 0)
    return w


def trained_tensors(events: Iterable[Event]) -> list[float]:
    """Element counts of the trained tensors (a shared one once)."""
    seen: set[str] = set()
    sizes = []
    for e in events:
        for key, n in e.params:
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            sizes.append(n)
    return sizes


def optimizer_work(sizes: Sequence[float], optimizer: str, nbytes: int,
                   clip: bool = True) -> Work:  # fmt: skip
    """An optimizer step over tensors of `sizes` elements (AdamW fused; SGD an in-place pass,
    with momentum two), after clipping the gradients' norm (a norm and a scaling pass over
    each gradient)."""
    w = Work()
    for n in sizes:
        if optimizer == "adamw":
            w.adamw[n] += 1
        else:
            w.streams[3 * n * nbytes] += 1 if optimizer == "sgd" else 2
        if clip:
            w.streams[n * nbytes] += 1  # the norm reads it
            w.streams[2 * n * nbytes] += 1  # the scaling reads and writes it
    return w


def perturbation_work(sizes: Sequence[float], nbytes: int, draws: int, copies: int,
                      updates: int) -> Work:  # fmt: skip
    """A zeroth-order or forward-mode rule's passes over the tensors it perturbs: `draws`
    normal draws of each, `copies` perturbed copies (a clone and an in-place add of z) and
    `updates` in-place updates (theta -= lr (g z + decay theta): four element-wise passes);
    z is drawn and applied `CHUNK` elements at a time, as the runtime does."""
    w = Work()
    for n in sizes:
        w.streams[2 * n * nbytes] += copies  # the clone
        whole, rest = divmod(int(n), CHUNK)  # z comes a chunk at a time, each its own kernels
        for size, count in ((CHUNK, whole), (rest, 1)):
            if size and count:
                w.normals[size] += draws * count
                w.streams[3 * size * nbytes] += (copies + 4 * updates) * count  # add_, update
    return w


# -- this machine's kernel tables -------------------------------------------------------------
def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """log-log interpolation of y(x) in a table sorted by x; past the last point y grows in
    proportion to x, below the first it stays at the first y (a kernel's fixed overhead)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1] * x / xs[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    f = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0)))


@dataclass(frozen=True)
class Kernels:
    """Measured kernel times on this machine, products in one dtype (`edgetune.measure.gemm`).

    `sides`: the grid's side lengths; `gemm[i][j][l]`: seconds of an (sides[i], sides[j]) by
    (sides[j], sides[l]) product; `stream`: (bytes, seconds) of out = a + b; `normal` and
    `adamw`: (elements, seconds) of a normal draw and a fused AdamW step over one tensor;
    `bernoulli`: (bytes, seconds) of bernoulli_ over an fp32 tensor (dropout's noise);
    `ops`: per ELEMENTWISE name, and that name + ".backward", (bytes of the output, seconds)
    (a kernel without a table is timed as the stream of its bytes); `dequant`: per held format's
    bytes a weight, (elements, seconds) of forming a dense fp32 matrix (a base held at another
    size reads the table nearest to it); `first_touch`: bytes/s at which a buffer the allocator
    has just mapped is written, less a write into memory in use (its page faults)."""

    sides: tuple[int, ...]
    gemm: tuple[tuple[tuple[float, ...], ...], ...]
    stream: tuple[tuple[float, float], ...]
    normal: tuple[tuple[float, float], ...]
    adamw: tuple[tuple[float, float], ...]
    bernoulli: tuple[tuple[float, float], ...]
    ops: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    bandwidth: float | None = None  # bytes/s of a copy through memory
    first_touch: float | None = None  # bytes/s of writing newly mapped pages, beyond a write
    dequant: dict[float, tuple[tuple[float, float], ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: dict, dtype: str, bandwidth: float | None = None) -> Kernels | None:
        """The tables for products in `dtype` (None: that dtype's GEMMs were not timed);
        `bandwidth`: the machine's measured copy bandwidth."""
        if dtype not in raw.get("gemm", {}):
            return None
        try:
            k = cls(
                tuple(int(s) for s in raw["sides"]),
                tuple(tuple(tuple(float(t) for t in row) for row in plane)
                      for plane in raw["gemm"][dtype]),
                tuple((float(a), float(b)) for a, b in raw["stream"]),
                tuple((float(a), float(b)) for a, b in raw["normal"]),
                tuple((float(a), float(b)) for a, b in raw["adamw"]),
                tuple((float(a), float(b)) for a, b in raw["bernoulli"]),
                ops={str(name): tuple((float(a), float(b)) for a, b in pairs)
                     for name, pairs in raw.get("ops", {}).items()},
                bandwidth=bandwidth,
                first_touch=float(raw["first_touch"]) if raw.get("first_touch") else None,
                dequant={float(b): tuple((float(a), float(t)) for a, t in pairs)
                         for b, pairs in raw.get("dequant", {}).items()},
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise EdgetuneError(
                f"the kernel tables are malformed ({e}); run `edgetune bench hardware`"
            ) from None
        n = len(k.sides)
        if n < 2 or len(k.gemm) != n or any(len(p) != n or any(len(r) != n for r in p)
                                            for p in k.gemm):  # fmt: skip
            raise EdgetuneError("the GEMM table does not match its sides; run "
                                "`edgetune bench hardware`")  # fmt: skip
        return k

    def gemm_s(self, m: float, k: float, n: float) -> float:
        """Seconds of one (m, k) by (k, n) product: trilinear interpolation of log time over
        log sides inside the grid, times the excess past its largest side."""
        sides = self.sides
        logs = [math.log(s) for s in sides]

        def locate(x: float) -> tuple[int, float, float]:
            """Cell index, fraction within it, and the factor past the grid."""
            excess = max(1.0, x / sides[-1])
            x = min(max(x, sides[0]), sides[-1])
            i = min(bisect.bisect_right(sides, x) - 1, len(sides) - 2)
            return i, (math.log(x) - logs[i]) / (logs[i + 1] - logs[i]), excess

        (i, fi, ei), (j, fj, ej), (c, fc, ec) = locate(m), locate(k), locate(n)
        total = 0.0
        for di, wi in ((0, 1 - fi), (1, fi)):
            for dj, wj in ((0, 1 - fj), (1, fj)):
                for dc, wc in ((0, 1 - fc), (1, fc)):
                    total += wi * wj * wc * math.log(self.gemm[i + di][j + dj][c + dc])
        return math.exp(total) * ei * ej * ec

    def seconds(self, work: Work) -> float:
        """Seconds of `work` on this machine. An element-wise kernel takes at least the time
        of the bytes it streams at the memory bandwidth: its table was timed from cache, and
        in a step the products between element-wise kernels evict their operands."""

        def table(pairs: tuple[tuple[float, float], ...], x: float) -> float:
            return _interp([p[0] for p in pairs], [p[1] for p in pairs], x)

        def memory(nbytes: float) -> float:
            return nbytes / self.bandwidth if self.bandwidth else 0.0

        # a batched product as one of its batch's rows stacked: bmm pays its overhead once
        t = sum(c * self.gemm_s(b * m, k, n) for (b, m, k, n), c in work.gemms.items())
        t += sum(c * max(table(self.stream, x), memory(x)) for x, c in work.streams.items())
        t += sum(c * table(self.normal, x) for x, c in work.normals.items())
        t += sum(c * table(self.adamw, x) for x, c in work.adamw.items())
        t += sum(c * table(self.bernoulli, x) for x, c in work.bernoulli.items())
        for (name, out, stream), c in work.ops.items():
            timed = table(self.ops[name], out) if name in self.ops else table(self.stream, stream)
            t += c * max(timed, memory(stream))
        for (held, n), c in work.dequant.items():  # unmeasured: the fp32 matrix written
            near = min(self.dequant, key=lambda b: abs(b - held), default=None)
            formed = table(self.dequant[near], n) if near is not None else 0.0
            t += c * max(formed, memory((held + 4) * n))
        if self.first_touch:  # the pages of buffers mapped afresh, touched for the first time
            fresh = sum(c * x for x, c in work.allocs.items() if x >= work.mapped_from)
            t += fresh / self.first_touch
        return t


__all__ = ["ELEMENTWISE", "MAPPED_DEFAULT", "MAPPED_LEAN", "Kernels", "Work", "backward_work",
           "dequant_work", "forward_work", "optimizer_work", "perturbation_work",
           "trained_tensors", "update_work"]  # fmt: skip
