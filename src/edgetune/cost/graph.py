"""An analytic autograd: record a model's forward ops and get MACs, backward MACs and the bytes
autograd would save, without running anything.

Each `Node` stands for a tensor: its element count, its bytes per element, whether it requires
grad (it does when a trained parameter lies upstream of it), and the storage it lives in. The
`Tape` methods mirror PyTorch's autograd rules:

- an op records a backward node only if one of its inputs requires grad;
- it computes the gradient of an input only if that input requires grad (a frozen first layer
  needs no input gradient, backward stops below the lowest trained layer);
- it saves for backward only what those gradients need (a linear saves its input only if its
  weight trains; a bias gradient is a sum of the output gradient and saves nothing);
- tensors sharing a storage are counted once, parameters are never counted;
- a parameter reached under two names (an LM head tied to the embedding matrix, T5's one token
  table read by both stacks, ALBERT's block weights in every layer) is counted once among the
  trained parameters: the ops that use it pass the same `key`, and the backward adds their
  gradients into one.

Matrix products are counted as MACs (one multiply-accumulate = 2 FLOPs), the unit of
`torch.utils.flop_counter`; element-wise work (norms, softmax, activations) is counted apart in
`fwd_elementwise` / `bwd_elementwise` FLOPs, which the flop counter ignores.

Every op is also kept as an `Event`, so that `Tape.peak_bytes` can replay the step and find its
memory high-water mark (tensor lifetimes in the forward, frees and gradient buffers in the
backward). An event also says what kind of op it is and how many parameters its module owns
(`weights`, what MeZO copies to perturb), so that the forward-only rules can add what their
runtime holds at each op (`edgetune.cost.forward_only`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

_ids = itertools.count()
Gemm = tuple[int, int, int, int]  # (batch, m, k, n): batch products of (m, k) by (k, n)

# tensors of the input's size an activation saves, and its forward FLOPs per element
ACT_SAVES = {"gelu": 1, "gelu_pytorch_tanh": 1, "silu": 1, "relu": 1, "tanh": 1, "gelu_new": 4}
ACT_FLOPS = {"gelu": 8, "gelu_pytorch_tanh": 8, "silu": 4, "relu": 1, "tanh": 4, "gelu_new": 9}
SAVES_OUTPUT = ("relu", "tanh")  # their backward needs the output, not the input
TRAIN_MODES = ("off", "all", "trained")


@dataclass
class Node:
    """A tensor of the analytic graph."""

    numel: int
    nbytes_el: float
    rg: bool = False
    storage: int = field(default_factory=lambda: next(_ids))
    whole: float = 0.0  # a view: bytes of the storage it is part of (0: all of it)

    @property
    def nbytes(self) -> float:
        return self.numel * self.nbytes_el


@dataclass
class Event:
    """One recorded op: its output storage, inputs, what it saved and what trains in it."""

    out: int
    out_bytes: float
    out_rg: bool
    inputs: list[tuple[int, float]]
    grad_in: float  # bytes of the input gradients its backward forms
    # trained tensors whose gradient its backward forms: (shared-parameter key or None, elements)
    params: list[tuple[str | None, float]]
    saved: list[tuple[int, float]]
    segment: str = ""
    weights: float = 0.0  # elements of the parameters its module owns, trained or not
    kind: str = "op"  # linear | norm | lookup (an embedding table) | dropout (its noise) | op
    # its matrix products as (batch, m, k, n): an (m, k) by (k, n) product `batch` times; those
    # of the forward, and those its backward runs for input and for weight gradients
    gemms: tuple[Gemm, ...] = ()
    dx_gemms: tuple[Gemm, ...] = ()
    dw_gemms: tuple[Gemm, ...] = ()
    tangent_gemms: tuple[Gemm, ...] = ()  # with forward-mode AD: the tangent's products
    # an element-wise kernel timed on its own (`edgetune.cost.latency.ELEMENTWISE`); "": one
    # timed as the plain stream of bytes it reads and writes
    kernel: str = ""
    held: float = 0.0  # elements of a frozen matrix it reads (dequantized where held low)


@dataclass(frozen=True)
class Train:
    """How one linear (or norm) trains: fraction of output channels of its weight, its bias,
    and a LoRA rank (0: none)."""

    weight: float = 0.0
    bias: bool = False
    lora_rank: int = 0

    @property
    def any(self) -> bool:
        return self.weight > 0 or self.bias or self.lora_rank > 0


FROZEN = Train()
FULL = Train(1.0, True)


@dataclass
class Segment:
    """Totals of one part of the model (embeddings, one block, the head)."""

    name: str
    fwd_macs: float = 0.0
    bwd_input_macs: float = 0.0
    bwd_weight_macs: float = 0.0
    fwd_elementwise: float = 0.0
    bwd_elementwise: float = 0.0
    saved: dict[int, float] = field(default_factory=dict)
    # weight-update MACs of a forward-only rule (dW = delta^T x per trained weight)
    update_macs: float = 0.0
    # MACs of the tangent products of a forward with forward-mode AD: PyTorch's formula for a
    # product whose output carries a tangent forms both operand terms (dA B + A dB), a
    # missing tangent taken as zeros and multiplied all the same
    tangent_macs: float = 0.0
    trained_params: float = 0.0

    @property
    def saved_bytes(self) -> float:
        return sum(self.saved.values())


class Tape:
    """Records ops into segments. `act` is bytes per activation element. `train_mode`: where
    dropout runs: `off` (the model in eval mode), `all` (train mode throughout) or `trained`
    (train mode from the lowest trained module up: the modules a gradient reaches)."""

    def __init__(
        self, act_bytes: float, softmax_jacobian: bool = False, train_mode: str = "off"
    ) -> None:
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode {train_mode!r}: one of {TRAIN_MODES}")
        self.act_bytes = act_bytes
        self.softmax_jacobian = softmax_jacobian
        self.train_mode = train_mode
        self.segments: list[Segment] = []
        self.seg = self.begin("start")
        self._global: set[int] = set()
        self.shared: dict = {}  # tensors made once per forward and read by every block
        self.held: list[Node] = []  # held until the model returns (KV cache, stack outputs)
        self.events: list[Event] = []  # every op in forward order, for the peak replay
        self._pending_saved: list[tuple[int, float]] = []
        self._pending_params: list[tuple[str | None, float]] = []
        self._counted: set[str] = set()  # keys of shared parameters already counted
        self._scope: str | None = None  # see `share_params`
        self._ordinal = 0
        self.largest_param = 0.0  # elements of the largest trained tensor
        # elements of the trained rows split off a partly trained weight (sparse channel
        # fractions): the runtime trains them as a copy, beside the frozen original
        self.split_copies = 0.0
        # weight matrices (linears, embedding tables) by key, each once: (out, in, trained
        # whole); a held base (`model.weights`) keeps the frozen ones in its format
        self.matrices: dict[str, tuple[int, int, bool]] = {}
        self._matrix_ordinal = 0

    # -- bookkeeping ------------------------------------------------------------------------
    def begin(self, name: str) -> Segment:
        self.seg = Segment(name)
        self.segments.append(self.seg)
        return self.seg

    def new(self, numel: int, rg: bool = False, nbytes_el: float | None = None) -> Node:
        return Node(numel, self.act_bytes if nbytes_el is None else nbytes_el, rg)

    def share_params(self, scope: str | None) -> None:
        """From here on, the trained tensors met are the same as those met after the previous
        call with this `scope` (ALBERT runs one set of block weights in every layer): the k-th
        one gets the key (scope, k). None ends it."""
        self._scope, self._ordinal, self._matrix_ordinal = scope, 0, 0

    def count_params(self, n: float, key: str | None = None) -> None:
        """One trained tensor of `n` elements in the current op (its backward forms the
        gradient). A shared parameter (`key`) counts among the trained parameters only the first
        time it is met; its other uses add into the same gradient."""
        if key is None and self._scope is not None:
            key = f"{self._scope}:{self._ordinal}"
            self._ordinal += 1
        self._pending_params.append((key, n))
        if key is not None:
            if key in self._counted:
                return
            self._counted.add(key)
        self.seg.trained_params += n
        self.largest_param = max(self.largest_param, n)

    def matrix(self, rows: int, cols: int, trained: bool, key: str | None = None) -> None:
        """One weight matrix (rows, cols) read by the current op; a shared one (`key`, or the
        k-th of a `share_params` scope) is counted once."""
        if key is None:
            scope = self._scope or "op"
            key = f"matrix:{scope}:{self._matrix_ordinal if self._scope else len(self.matrices)}"
            self._matrix_ordinal += 1
        old = self.matrices.get(key)
        self.matrices[key] = (rows, cols, trained or (old is not None and old[2]))

    def save(self, node: Node) -> None:
        """Autograd keeps `node` for backward. A storage saved twice (the input of q, k and v;
        the encoder output read by every cross-attention; RoPE tables) is counted once, in
        the segment that saved it first."""
        if node.storage in self._global:
            return
        self._global.add(node.storage)
        nbytes = node.whole or node.nbytes  # a saved view keeps its whole storage
        self.seg.saved[node.storage] = nbytes
        self._pending_saved.append((node.storage, nbytes))

    def _op(
        self,
        out: Node,
        *inputs: Node,
        flops: float = 0.0,
        weights: float = 0.0,
        kind: str = "op",
        gemms: tuple[Gemm, ...] = (),
        dx_gemms: tuple[Gemm, ...] = (),
        dw_gemms: tuple[Gemm, ...] = (),
        tangent_gemms: tuple[Gemm, ...] = (),
        kernel: str = "",
        held: float = 0.0,
    ) -> None:
        self.seg.fwd_elementwise += flops
        if out.rg:
            self.seg.bwd_elementwise += 2 * flops
        self.events.append(Event(
            out.storage, out.nbytes, out.rg, [(n.storage, n.nbytes) for n in inputs],
            sum(n.nbytes for n in inputs if n.rg) if out.rg else 0.0, self._pending_params,
            self._pending_saved, self.seg.name, weights, kind, gemms, dx_gemms, dw_gemms,
            tangent_gemms, kernel, held,
        ))  # fmt: skip
        self._pending_saved, self._pending_params = [], []

    def peak_bytes(
        self,
        grad_bytes: float,
        no_grad: bool = False,
        stop_at: str | None = None,
        extra: Callable[[int, Event], float] | None = None,
        kept: set[int] | None = None,
        checkpointed: bool = False,
        dual: bool = False,
    ) -> tuple[float, float, float]:
        """Activation-side peaks of one step, by replaying the ops: (forward, backward).

        Forward: a tensor lives from the op that makes it to its last use, or, if autograd
        saved it, to the backward (`no_grad`: nothing is saved, an inference forward); the
        peak is the largest sum of live bytes at any op, plus `extra(index, event)`: what a
        method's runtime holds at that op (called once per op, in order; MeZO's perturbed
        copy of the op's weights, PEPITA's local updates). `kept`: indices of ops whose output
        a method keeps to the end of the replayed forward (PEPITA's stored clean outputs).
        `stop_at`: a forward that ends where that segment begins. `checkpointed`: every block
        (a `layer.i` segment) saves only its input in the forward; the backward runs the
        block's forward again and holds what it saves while it goes back through the block.
        `dual`: a forward with forward-mode AD, in which every tensor downstream of a trained
        parameter (`out_rg`) carries a tangent of its size beside it, for as long as it lives.

        Backward, ops in reverse: the activations still saved, the parameter gradients formed
        so far, and the op's output gradient and input gradients; an op's saved tensors are
        freed once it has run (a storage belongs to the first op that saved it, which runs
        last in the backward). A gradient added into one that exists (a tied or shared
        parameter met again) holds the new gradient and the out-of-place sum for the moment
        of the op. Returns (forward peak, backward peak, largest backward transient: one op's
        output and input gradients)."""
        last_use: dict[int, int] = {}
        for i, e in enumerate(self.events):
            for sid, _ in e.inputs:
                last_use[sid] = i
        live: dict[int, float] = {}
        saved: dict[int, float] = {}
        live_total = outside = fwd = 0.0  # outside: saved bytes not in `live`

        def block(e: Event) -> bool:
            return checkpointed and e.segment.startswith("layer.")

        recomputed: dict[str, float] = {}  # a checkpointed block's saved bytes, by segment
        for e in self.events:
            if block(e):
                recomputed[e.segment] = recomputed.get(e.segment, 0.0) + sum(v for _, v in e.saved)
        entered: set[str] = set()

        def drop(sid: int) -> None:
            nonlocal live_total, outside
            v = live.pop(sid, None)
            if v is not None:
                live_total -= v
                outside += v if sid in saved else 0.0

        for i, e in enumerate(self.events):
            if stop_at is not None and e.segment == stop_at:
                break
            keeps = list(e.saved)
            if block(e):  # only the block's input is kept
                keeps = [] if e.segment in entered else e.inputs[:1]
                entered.add(e.segment)
            for sid, v in [] if no_grad else keeps:
                if sid not in saved:
                    saved[sid] = v
                    outside += 0.0 if sid in live else v
            if e.out not in live:
                size = 2 * e.out_bytes if dual and e.out_rg else e.out_bytes
                live[e.out] = size
                live_total += size
                outside -= e.out_bytes if e.out in saved else 0.0
            if kept and i in kept:
                saved[e.out] = e.out_bytes
            fwd = max(fwd, live_total + outside + (extra(i, e) if extra else 0.0))
            for sid, _ in e.inputs:
                if last_use.get(sid) == i:
                    drop(sid)
            if last_use.get(e.out, -1) <= i:  # never read again (the loss, a dropped view)
                drop(e.out)
        if no_grad:
            return fwd, 0.0, 0.0
        remaining = sum(saved.values())
        bwd = grads = transient = 0.0
        formed: set[str] = set()  # shared parameters whose gradient exists
        back: set[str] = set()
        for e in reversed(self.events):
            if block(e) and e.segment not in back:  # the block's forward again
                back.add(e.segment)
                remaining += recomputed[e.segment]
            new = added = 0.0
            for key, n in e.params:
                if key is not None and key in formed:
                    added = max(added, 2 * n * grad_bytes)
                else:
                    new += n * grad_bytes
                    if key is not None:
                        formed.add(key)
            if e.out_rg:
                transient = max(transient, e.out_bytes + e.grad_in + added)
                bwd = max(bwd, remaining + grads + e.out_bytes + e.grad_in + added)
            grads += new
            remaining -= sum(v for _, v in e.saved)
        return fwd, bwd, transient

    # -- ops --------------------------------------------------------------------------------
    def linear(
        self,
        x: Node,
        rows: int,
        d_in: int,
        d_out: int,
        t: Train,
        bias: bool,
        key: str | None = None,
    ) -> Node:
        """y = x W^T + b with x (rows, d_in). Saves x when W (or a LoRA adapter) trains. `key`
        names a weight shared with another op (a tied LM head: the embedding matrix)."""
        s = self.seg
        macs = rows * d_in * d_out
        self.matrix(d_out, d_in, t.weight >= 1, key)
        s.fwd_macs += macs
        gemms: list[Gemm] = [(1, rows, d_in, d_out)]
        dx: list[Gemm] = []
        dw: list[Gemm] = []
        if x.rg:
            s.bwd_input_macs += macs
            dx.append((1, rows, d_out, d_in))  # dX = dY W
        if t.weight > 0:
            dw.append((1, max(1, round(t.weight * d_out)), rows, d_in))  # dW = dY^T X
            s.bwd_weight_macs += t.weight * macs
            s.update_macs += t.weight * macs
            self.count_params(t.weight * d_in * d_out, key)
            if t.weight < 1:
                self.split_copies += t.weight * d_in * d_out
            self.save(x)
        if t.bias and bias:
            self.count_params(d_out)
        base_rg = x.rg or t.weight > 0 or (t.bias and bias)
        tangent: list[Gemm] = []
        if base_rg:
            s.tangent_macs += 2 * macs
            tangent += 2 * gemms[:1]
        y = self.new(rows * d_out, base_rg or t.lora_rank > 0)
        if t.lora_rank:  # y += B(A x): A (r, d_in), B (d_out, r) train; x and A x are saved
            r = t.lora_rank
            lmacs = rows * r * (d_in + d_out)
            s.fwd_macs += lmacs
            s.bwd_weight_macs += lmacs
            s.update_macs += lmacs
            s.bwd_input_macs += rows * r * d_out + (rows * r * d_in if x.rg else 0)
            s.tangent_macs += 2 * lmacs
            self.count_params(r * d_in)
            self.count_params(r * d_out)
            self.save(x)
            self.save(self.new(rows * r))
            gemms += [(1, rows, d_in, r), (1, rows, r, d_out)]
            tangent += 2 * gemms[-2:]
            # dB = dY^T (A x), dA = d(A x)^T x; d(A x) = dY B, and dX through A when x needs it
            dw += [(1, d_out, rows, r), (1, r, rows, d_in)]
            dx += [(1, rows, d_out, r)] + ([(1, rows, r, d_in)] if x.rg else [])
        self._op(y, x, weights=d_in * d_out + (d_out if bias else 0), kind="linear",
                 gemms=tuple(gemms), dx_gemms=tuple(dx), dw_gemms=tuple(dw),
                 tangent_gemms=tuple(tangent),
                 held=max(0.0, 1 - t.weight) * d_in * d_out)  # fmt: skip
        return y

    def matmul(
        self,
        a: Node,
        b: Node,
        shape: Gemm,
        copy_a: bool = True,
        copy_b: bool = True,
    ) -> Node:
        """A product of two activations (attention scores, attention-weighted values), `shape`
        (batch, m, k, n). bmm saves each operand when the other needs a gradient; a
        non-contiguous operand is saved as the contiguous copy matmul makes (`copy_*`)."""
        s = self.seg
        n_b, m, k, n = shape
        macs = n_b * m * k * n
        s.fwd_macs += macs
        s.bwd_input_macs += macs * (a.rg + b.rg)
        if a.rg or b.rg:
            s.tangent_macs += 2 * macs
        if b.rg:
            self.save(self.new(a.numel) if copy_a else a)
        if a.rg:
            self.save(self.new(b.numel) if copy_b else b)
        y = self.new(n_b * m * n, a.rg or b.rg)
        dx = [(n_b, m, n, k)] if a.rg else []  # dA = dY B^T
        dx += [(n_b, k, m, n)] if b.rg else []  # dB = A^T dY
        self._op(y, a, b, gemms=(shape,), dx_gemms=tuple(dx),
                 tangent_gemms=(shape, shape) if y.rg else ())  # fmt: skip
        return y

    def softmax(self, x: Node, rows: int) -> Node:
        """Saves its output. The paper's convention (`softmax_jacobian`) charges the backward a
        full (N x N) Jacobian product per row: rows * N^2 MACs instead of element-wise work."""
        y = self.new(x.numel, x.rg)
        if x.rg:
            self.save(y)
            if self.softmax_jacobian:
                n = x.numel // rows
                self.seg.bwd_input_macs += rows * n * n
        self._op(y, x, flops=5 * x.numel, kernel="softmax")
        return y

    def act(self, x: Node, kind: str) -> Node:
        """Activation: relu and tanh save their output, gelu/silu their input, the Python
        gelu_new of transformers saves four tensors of the input's size (x, tanh, x/2, 1+tanh)."""
        y = self.new(x.numel, x.rg)
        if x.rg:
            if kind in SAVES_OUTPUT:
                self.save(y)
            else:
                self.save(x)
                for _ in range(ACT_SAVES.get(kind, 1) - 1):
                    self.save(self.new(x.numel))
        self._op(y, x, flops=ACT_FLOPS.get(kind, 8) * x.numel, kernel=kind)
        return y

    def dropout(self, x: Node, p: float) -> Node:
        """Dropout of probability `p` where the module runs in train mode (`train_mode`), as
        PyTorch runs it on a CPU: a noise tensor of x's size and dtype drawn (bernoulli_, then
        divided by 1 - p in place), and x * noise, which saves the noise when x needs a
        gradient. Elsewhere x itself."""
        if p <= 0 or self.train_mode == "off" or (self.train_mode == "trained" and not x.rg):
            return x
        noise = self.new(x.numel)
        self._op(noise, flops=2 * x.numel, kind="dropout")
        if x.rg:
            self.save(noise)
        y = self.new(x.numel, x.rg)
        self._op(y, x, noise, flops=x.numel)
        return y

    def mul(self, a: Node, b: Node) -> Node:
        """Element-wise product (gated FFN): saves each factor when the other needs a grad."""
        if b.rg:
            self.save(a)
        if a.rg:
            self.save(b)
        y = self.new(a.numel, a.rg or b.rg)
        self._op(y, a, b, flops=a.numel)
        return y

    def norm(self, x: Node, rows: int, kind: str, t: Train) -> Node:
        """LayerNorm (aten native_layer_norm saves input, mean and rstd whenever a backward
        node exists) or the RMSNorm of transformers (Python: saves x and rstd for the input
        gradient, the normalized x for the weight gradient). Statistics are fp32. Gemma's
        `rmsnorm1p` scales by (1 + w), a new fp32 tensor of the width at every call, which
        the product saves for the input gradient."""
        width = x.numel // rows
        stats = self.new(rows, nbytes_el=4)
        trained = t.weight > 0 or (t.bias and kind == "layernorm")  # RMSNorm has no bias
        if t.weight > 0:
            self.count_params(width)
        if t.bias and kind == "layernorm":
            self.count_params(width)
        if kind == "layernorm":
            if x.rg or trained:
                self.save(x)
                self.save(stats)
                self.save(self.new(rows, nbytes_el=4))
        else:
            if x.rg:
                self.save(x)
                self.save(stats)
                if kind == "rmsnorm1p":
                    self.save(self.new(width, nbytes_el=4))
            if t.weight > 0:
                self.save(self.new(x.numel))
        y = self.new(x.numel, x.rg or trained)
        self._op(y, x, flops=8 * x.numel, weights=width * (2 if kind == "layernorm" else 1),
                 kind="norm", kernel="layernorm" if kind == "layernorm" else "rmsnorm")  # fmt: skip
        return y

    def embedding(
        self, rows: int, width: int, vocab: int, trained: bool, key: str | None = None
    ) -> Node:
        """A table lookup: no MACs; its backward saves the int64 indices. `key` names a table
        shared with another op (T5's stacks, a tied LM head)."""
        self.matrix(vocab, width, trained, key)
        if trained:
            self.save(self.new(rows, nbytes_el=8))
            self.count_params(vocab * width, key)
        y = self.new(rows * width, trained)
        self._op(y, weights=vocab * width, kind="lookup")
        return y

    def const(self, numel: int) -> Node:
        """A tensor made once without gradient (an attention mask, T5's position bias)."""
        y = self.new(numel)
        self._op(y)
        return y

    def copy(self, x: Node, numel: int) -> Node:
        """A new tensor of `numel` elements filled from x, no FLOPs, nothing saved
        (repeat_kv's expand + reshape)."""
        y = self.new(numel, x.rg)
        self._op(y, x)
        return y

    def view(self, x: Node, numel: int) -> Node:
        """`numel` elements of x's storage (q, k or v of a fused projection's output): no op;
        saved, it keeps the whole storage."""
        return Node(numel, x.nbytes_el, x.rg, x.storage, x.whole or x.nbytes)

    def pointwise(self, x: Node, flops_per_el: float = 1.0) -> Node:
        """A new tensor of x's size by an element-wise op that saves nothing (x * scale)."""
        y = self.new(x.numel, x.rg)
        self._op(y, x, flops=flops_per_el * x.numel)
        return y

    def release(self, *held: Node) -> None:
        """`held` stay referenced until here (Python locals: q and k until the attention
        function returns, the attention map until the block returns, the stack's input until
        the stack returns; the KV cache until the model returns): extends their life in the
        peak replay, computes nothing."""
        ins = [(n.storage, n.nbytes) for n in held]
        self.events.append(Event(self.new(0).storage, 0.0, False, ins, 0.0, [], [], self.seg.name))

    def cached(self, x: Node) -> Node:
        """The copy of x a KV cache keeps (transformers' DynamicCache concatenates K and V into
        it, `torch.cat`); what the attention reads from then on, held until the model returns
        (`held`)."""
        y = self.copy(x, x.numel)
        self.held.append(y)
        return y

    def add(self, a: Node, b: Node) -> Node:
        """Residual or embedding sum: saves nothing."""
        y = self.new(max(a.numel, b.numel), a.rg or b.rg)
        self._op(y, a, b, flops=y.numel)
        return y

    def chunked_head(self, x: Node, rows: int, width: int, vocab: int, chunk: int,
                     key: str | None) -> None:  # fmt: skip
        """A frozen LM head and its cross-entropy a vocabulary chunk at a time
        (`edgetune.methods.chunked_loss`): logits h W^T of `chunk` rows at once, folded into a
        log-sum-exp; h, the log-sum-exp and the targets are saved; the backward forms each
        chunk's logits again (forward MACs once more) and their product with W. One chunk of
        fp32 logits is live at a time (the runtime works on it in place), in the forward and,
        beside dL/dh, in the backward."""
        s = self.seg
        macs = rows * width * vocab
        self.matrix(vocab, width, False, key)
        s.fwd_macs += macs
        s.fwd_elementwise += 5 * rows * vocab
        if x.rg:
            s.bwd_input_macs += 2 * macs  # the logits again, then (p - y) W
            s.bwd_elementwise += 5 * rows * vocab
            self.save(x)
            self.save(self.new(rows, nbytes_el=4))  # log-sum-exp
            self.save(self.new(rows, nbytes_el=8))  # targets
        logits = self.new(rows * min(chunk, vocab), False, nbytes_el=4)
        product = (1, rows, width, vocab)
        again = ((1, rows, width, vocab), (1, rows, vocab, width)) if x.rg else ()
        self._op(logits, x, weights=vocab * width, kind="linear", gemms=(product,),
                 dx_gemms=again, held=vocab * width)  # fmt: skip
        loss = self.new(1, x.rg, nbytes_el=4)
        self._op(loss, logits, x)  # its backward forms dL/dh (grad_in) ...
        if x.rg:
            self.events[-1].grad_in += logits.nbytes  # ... and a chunk's logits again

    def cross_entropy(self, logits: Node, rows: int) -> None:
        """log_softmax saves its output (fp32: transformers upcasts logits for the loss),
        nll_loss its int64 targets."""
        out = self.new(logits.numel, logits.rg, nbytes_el=4)
        if logits.rg:
            self.save(out)
            self.save(self.new(rows, nbytes_el=8))
        self._op(out, logits, flops=5 * logits.numel, kernel="log_softmax")
