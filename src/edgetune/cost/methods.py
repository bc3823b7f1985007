"""Cost of one training step per learning rule: MACs, FLOPs and memory by component.

The cost model knows learning rules by what they do, not by name: a `Rule` says how a step
updates (backward, zeroth-order, forward-only) and what trains. Each method's registry entry
(`edgetune.methods.registry`) carries its rule, so a new method that spends a step like an
existing one needs nothing here. The rules edgetune's methods use:

- backward, all      full fine-tuning (`backprop`): forward, backward (input and weight
                     gradients), optimizer step.
- backward, scheme   backprop restricted by an `UpdateScheme` (`sparse`): only named units
                     train; backward stops at the lowest trained layer; weight-gradient MACs
                     scale with `weight_fraction`; bias-only units save no input activations.
- backward, adapters rank-r adapters on chosen linears (`lora`); the base model is frozen.
- forward-only, linears
                     two forwards (clean, then input modulated by F e) and a local update per
                     trained weight (`pepita`); keeps the clean pass's outputs of the trained
                     hidden linears for the update and every update until the end of the step.
                     In lockstep (`mempepita`): the clean pass, then the clean and modulated
                     batch together (three forwards' work); keeps F e and one update at a time.
- zeroth-order, all  SPSA (`mezo`): two forwards per query (`queries` per step) on perturbed
                     copies of one module's parameters at a time, no gradients.
- zeroth-order, adapters
                     SPSA over rank-r adapters on chosen linears (`mezo` with trainable
                     `lora`): the adapters are extra weights; only they are copied perturbed.
- backward, scheme, zeroth-order below
                     backprop over a scheme of the top blocks, SPSA below them (`hybrid`):
                     the scheme's step (activations, gradients and optimizer state of the top
                     only) plus a forward without a graph; z spans the embeddings and the
                     blocks under the boundary (`below` all) or adapters on them (`adapters`);
                     one module's perturbed copy at a time.
- backward, adapters, zeroth-order below
                     the same with rank-r adapters on the top blocks instead of a scheme
                     (`hybrid` with top_trainable `lora`; `linears_from` is the boundary).
- forward-mode, all  the forward gradient (`forward_grad` with trainable `all`): one forward a
                     query with forward-mode AD, a tangent beside every activation downstream of
                     a trained tensor; each matrix product whose output carries a tangent
                     forms two more (one per operand, zeros for a frozen one: PyTorch's
                     formula), three forwards' MACs where everything trains; the tangents of
                     the trained tensors are held whole, nothing is saved.
- forward-mode, adapters
                     the forward gradient over rank-r adapters (`forward_grad` over `lora`,
                     Spry): tangents span the adapters only.

Memory components: weights, gradients (PEPITA's: its updates), optimizer state, activations
(kept across the step: saved for backward, or PEPITA's clean outputs and F e) and workspace
(transient tensors on top: the live tensors of a forward, the gradient buffers of a backward,
the optimizer step's temporaries, a forward-only rule's runtime tensors). `total` is their sum,
an upper bound; `peak` is the high-water mark from replaying the step's ops
(`Tape.peak_bytes`, `edgetune.cost.forward_only`): not every component is at its largest at
the same moment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from edgetune.cost.blocks import Inputs, Trainability, record
from edgetune.cost.forward_only import FP32, forward_mode_peak, mezo_peak, pepita_peak
from edgetune.cost.graph import FROZEN, FULL, Tape, Train
from edgetune.cost.latency import (
    Work,
    backward_work,
    dequant_work,
    forward_work,
    optimizer_work,
    perturbation_work,
    trained_tensors,
    update_work,
)
from edgetune.cost.shapes import ModelShape, n_params
from edgetune.errors import EdgetuneError
from edgetune.families import ENCODER_DECODER
from edgetune.precision import dense_chunk
from edgetune.scheme import UpdateScheme

UPDATES = ("backward", "zeroth-order", "forward-only", "forward-mode")
TRAINS = ("all", "scheme", "adapters", "linears")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0, "sgd-momentum": 1}
# temporaries of one parameter's size the optimizer step makes per parameter: none for AdamW,
# which edgetune runs fused (one in-place kernel per parameter; torch's single-tensor path
# would make two, sqrt(v) / c and the quotient); SGD and its momentum update in place (no
# weight decay)
OPTIMIZER_TEMPORARIES = {"adamw": 0, "sgd": 0, "sgd-momentum": 0}
LORA_UNITS = ("q", "k", "v", "attn_out", "ffn1", "ffn2")


@dataclass(frozen=True)
class Rule:
    """How a learning rule spends one step, in the cost model's terms.

    update: `backward` (forward, backward, optimizer step), `zeroth-order` (two perturbed
        forwards, no gradient), `forward-only` (PEPITA's two forwards and local updates) or
        `forward-mode` (one forward with tangents: a directional derivative, no backward).
    trains: `all` parameters, a `scheme` (an UpdateScheme), `adapters` (LoRA on chosen units)
        or `linears` (every linear and the head; norms and embeddings stay frozen).
    lockstep: a forward-only rule that runs its modulated pass beside the clean one
        (MEMPEPITA), so no layer's activations outlive the layer.
    below: a backward rule over a scheme that trains the blocks under the scheme's boundary
        (`zo_blocks` of `step_cost`) and the embeddings by zeroth-order (ElasticZO's hybrid):
        `all` their weights or `adapters` on them; None: they stay frozen.
    """

    update: str
    trains: str
    lockstep: bool = False
    below: str | None = None

    def __post_init__(self) -> None:
        if self.update not in UPDATES or self.trains not in TRAINS:
            raise EdgetuneError(f"unknown rule ({self.update}, {self.trains})")
        if self.below is not None and (
            self.below not in ("all", "adapters")
            or self.update != "backward"
            or self.trains not in ("scheme", "adapters")
        ):
            raise EdgetuneError(
                f"zeroth-order below trains all or adapters, under a backward rule over a "
                f"scheme or adapters; got ({self.update}, {self.trains}, below {self.below})"
            )

    @property
    def passes(self) -> int:
        """Times a step reads every weight: forward and backward, two perturbed forwards, or
        PEPITA's two passes (three in lockstep); a hybrid's two forwards and the top's
        backward (three, an upper bound)."""
        return 3 if self.lockstep or self.below else 2


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each memory component, by dtype name."""

    weights: str = "fp32"
    grads: str = "fp32"
    optimizer: str = "fp32"
    activations: str = "fp32"

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if v not in DTYPE_BYTES:
                raise EdgetuneError(f"unknown dtype {v!r} for {k}; choose {', '.join(DTYPE_BYTES)}")

    @classmethod
    def uniform(cls, dtype: str) -> Precision:
        return cls(dtype, dtype, dtype, dtype)

    def nbytes(self, component: str) -> int:
        return DTYPE_BYTES[getattr(self, component)]


@dataclass(frozen=True)
class Memory:
    """Bytes by component. `total` adds them all (an upper bound); `peak` is the estimated
    high-water mark of the step (see `Tape.peak_bytes`), what a device must hold. `copies`:
    trained rows split off a partly trained weight, held beside the frozen original."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    workspace: float
    peak_estimate: float | None = None
    copies: float = 0.0

    @property
    def total(self) -> float:
        parts = (self.weights, self.gradients, self.optimizer, self.activations, self.workspace)
        return sum(parts) + self.copies

    @property
    def peak(self) -> float:
        return self.total if self.peak_estimate is None else self.peak_estimate


@dataclass(frozen=True)
class StepCost:
    """One training step. MACs split into forward (all forward passes of the rule), backward
    (input and weight gradients) and update (forward-only rules' local weight updates, PEPITA's
    error projection)."""

    method: str  # the label it was asked for (a method's name)
    model: str
    batch: int
    seq: int
    tgt_seq: int
    fwd_macs: float
    bwd_macs: float
    update_macs: float
    fwd_elementwise: float
    bwd_elementwise: float
    memory: Memory
    params: float  # a float once adapters' (float) counts are added
    trained_params: float
    passes: int = 2  # times the step reads every weight (the roofline's memory traffic)
    work: Work = field(default_factory=Work)  # its kernels (`edgetune.cost.latency`)

    @property
    def macs(self) -> float:
        return self.fwd_macs + self.bwd_macs + self.update_macs

    @property
    def fwd_flops(self) -> float:
        """Forward FLOPs: 2 per MAC plus element-wise work (norms, softmax, activations, loss)."""
        return 2 * self.fwd_macs + self.fwd_elementwise

    @property
    def bwd_flops(self) -> float:
        return 2 * self.bwd_macs + self.bwd_elementwise

    @property
    def flops(self) -> float:
        """All FLOPs of the step: forward, backward and local updates."""
        return self.fwd_flops + self.bwd_flops + 2 * self.update_macs


def _unit(role: str) -> str:
    """The scheme unit of a block part (q, k and v are the `qkv` unit)."""
    return "qkv" if role in ("q", "k", "v") else role


def _trainability(
    rule: Rule, head: str, scheme: UpdateScheme | None, lora_rank: int, lora_units,
    linears_from: int = 0,
) -> Trainability:  # fmt: skip
    if rule.trains == "all":  # zeroth-order perturbs every weight but needs no gradient
        # forward-mode carries tangents where a backward would carry gradients: same rg
        backward = rule.update in ("backward", "forward-mode")
        grads = FULL if backward else FROZEN
        return Trainability(lambda u, i: grads, backward, backward)
    if rule.trains == "linears":  # linears and head learn; embeddings, norms do not
        # the output layer learns (dW_L = e^T h'); a tied one is the embedding matrix
        return Trainability(
            lambda u, i: FROZEN if u == "norm" or i < linears_from else FULL, False, True
        )
    if rule.trains == "adapters":
        bad = set(lora_units) - set(LORA_UNITS)
        if bad:
            raise EdgetuneError(f"unknown LoRA targets {sorted(bad)}; choose from {LORA_UNITS}")
        adapter = Train(lora_rank=lora_rank)
        # peft trains a new classifier head (modules_to_save), never the (tied) LM head
        return Trainability(
            lambda u, i: adapter if u in lora_units and i >= linears_from else FROZEN,
            False,
            head == "classifier",
        )
    if scheme is None:
        raise EdgetuneError("a rule that trains a scheme needs an update scheme")
    table = {(u.unit, u.layer): Train(u.weight_fraction, u.bias) for u in scheme.updates}
    return Trainability(lambda u, i: table.get((_unit(u), i), FROZEN), False, scheme.trains_head())


def step_cost(
    s: ModelShape,
    rule: Rule,
    batch: int = 1,
    seq: int = 128,
    tgt_seq: int = 0,
    head: str = "lm",
    n_labels: int = 2,
    precision: Precision | None = None,
    optimizer: str = "adamw",
    scheme: UpdateScheme | None = None,
    lora_rank: int = 8,
    lora_units: tuple[str, ...] = ("q", "v"),
    softmax_jacobian: bool = False,
    scored: float = 1.0,
    label: str = "",
    held_bytes: float | None = None,
    checkpointing: bool = False,
    chunked_loss: bool = False,
    queries: int = 1,
    zo_blocks: int = 0,
    train_mode: str | None = None,
    linears_from: int = 0,
) -> StepCost:
    """Predict one training step of `rule` on `s` (`label` names it in the result).
    `softmax_jacobian` switches to the seed paper's convention of a full softmax Jacobian
    product in the backward. `scored`: the share of positions the loss scores; a decoder's LM
    head forms logits there only (a prompt's positions and padding are skipped,
    `edgetune.methods.base.forward_loss`). `held_bytes`: bytes per weight of a frozen base held
    in a low-precision format (`edgetune.precision`): its frozen matrices take that many, and a
    step adds one dequantized chunk in the activations' dtype (the chunk, and the two halves
    of 4-bit codes unpacked beside it). `checkpointing`: blocks keep only their inputs and run
    their forward again in the backward. `chunked_loss`: a causal LM's frozen head and loss
    run a vocabulary chunk at a time (`Tape.chunked_head`). `queries`: a zeroth-order rule's
    SPSA estimates per step (two forwards each), or a forward-mode rule's tangents (one
    forward each). `zo_blocks`: a rule with zeroth-order `below` trains the embeddings and
    blocks 0..zo_blocks-1 by SPSA (its scheme the blocks above). `train_mode`: where dropout
    runs (`Tape`); by default as edgetune's methods run: a backward rule in train mode (over a
    scheme, from the lowest trained module up), the others in eval mode. `linears_from`: a
    rule that trains `linears` or `adapters` leaves the blocks below this one frozen (PEPITA's
    and LoRA's `layers`)."""
    if batch < 1 or seq < 1 or tgt_seq < 0:
        raise EdgetuneError(f"batch and sequence length must be positive, got {batch}, {seq}")
    if not 0 < scored <= 1:
        raise EdgetuneError(f"the scored share of positions must lie in (0, 1], got {scored}")
    if optimizer not in OPTIMIZER_STATES:
        raise EdgetuneError(
            f"unknown optimizer {optimizer!r}; choose {', '.join(OPTIMIZER_STATES)}"
        )
    if rule.update == "forward-only" and head == "none":
        raise EdgetuneError(f"{label or 'a forward-only rule'} needs a task head (lm or "
                            "classifier): its updates start from the output error")  # fmt: skip
    p = precision or Precision()
    act = p.nbytes("activations")
    if checkpointing:  # transformers turns the KV cache off under activation checkpointing
        s = replace(s, kv_cache=False)
    inp = Inputs(batch, seq, tgt_seq if s.kind == ENCODER_DECODER else 0, head, n_labels, scored,
                 chunked_loss)  # fmt: skip
    tr = _trainability(rule, head, scheme, lora_rank, lora_units, linears_from)
    if train_mode is None:
        train_mode = "off"
        if rule.update == "backward":
            # below a scheme's lowest block, or the lowest adapter of LoRA's last-K, eval mode
            lowest = rule.trains == "scheme" or (rule.trains == "adapters" and linears_from > 0)
            train_mode = "trained" if lowest else "all"
    tape = Tape(act, softmax_jacobian, train_mode)
    record(s, tape, tr, inp)
    segs = tape.segments
    fwd = sum(g.fwd_macs for g in segs)
    bwd = sum(g.bwd_input_macs + g.bwd_weight_macs for g in segs)
    elem_f = sum(g.fwd_elementwise for g in segs)
    elem_b = sum(g.bwd_elementwise for g in segs)
    g_bytes = p.nbytes("grads")
    trained = sum(g.trained_params for g in segs)
    params: float = n_params(s, head, n_labels)
    if rule.trains == "adapters":
        params += trained  # adapters are extra parameters
    w = params * p.nbytes("weights")
    dequant = 0.0
    frozen = [(r, c) for r, c, whole in tape.matrices.values() if not whole]
    if held_bytes is not None and frozen:
        w -= sum(r * c for r, c in frozen) * (p.nbytes("weights") - held_bytes)
        dequant = max(dense_chunk(r, c) for r, c in frozen) * (2 * act + 1)

    def formed(forwards: int, backward: bool, events: list | None = None) -> Work:
        """The held base's matrices formed in `forwards` forwards (and a backward)."""
        if held_bytes is None:
            return Work()
        return dequant_work(tape.events if events is None else events, held_bytes, forwards,
                            backward)  # fmt: skip

    opt_states = OPTIMIZER_STATES[optimizer]
    e_rows = batch * (inp.tgt_seq or seq) if head == "lm" else batch
    e_width = s.vocab if head == "lm" else n_labels
    opt = trained * opt_states * p.nbytes("optimizer")
    method = label
    if rule.update == "backward":
        grads = trained * g_bytes
        acts = sum(g.saved_bytes for g in segs)
        fwd_peak, bwd_peak, bwd_transient = tape.peak_bytes(g_bytes, checkpointed=checkpointing)
        if checkpointing:  # block inputs kept, one block's saved tensors at a time
            blocks = [g for g in segs if g.name.startswith("layer.")]
            inputs = {e.segment: e.inputs[0][1] for e in reversed(tape.events)
                      if e.segment.startswith("layer.") and e.inputs}  # fmt: skip
            acts += sum(inputs.values()) + max((g.saved_bytes for g in blocks), default=0.0)
            acts -= sum(g.saved_bytes for g in blocks)
            again = {g.name for g in blocks if g.bwd_input_macs or g.bwd_weight_macs}
            bwd += sum(g.fwd_macs for g in blocks if g.name in again)
        # the optimizer step: every gradient, and its temporaries for one parameter at a time
        step = OPTIMIZER_TEMPORARIES[optimizer] * tape.largest_param * p.nbytes("optimizer")
        # transient beyond saved activations and gradients: the forward's live tensors, one
        # backward op's gradient buffers, the step's temporaries; the peak holds weights,
        # optimizer state and the largest phase (gradients and saved activations never all
        # coexist)
        work = max(fwd_peak - acts, bwd_transient, step) + dequant
        copies = tape.split_copies * p.nbytes("weights")
        peak = w + copies + opt + max(fwd_peak, bwd_peak, grads + step) + dequant
        kernels = (
            forward_work(tape.events)
            + backward_work(tape.events)
            + optimizer_work(trained_tensors(tape.events), optimizer, p.nbytes("grads"))
            + formed(1, True)
        )
        if checkpointing:  # the blocks that run a backward run their whole forward again
            recomputed = [e for e in tape.events if e.segment in again]
            kernels += forward_work(recomputed) + formed(1, False, recomputed)
        if rule.below is not None:  # the gradient-free forward and SPSA of the bottom
            low = _below(s, rule.below, inp, p, zo_blocks, lora_rank, lora_units, tr.head)
            top_adapters = 0.0  # a top of adapters adds their products to both forwards
            if rule.trains == "adapters":
                plain = Tape(act)
                record(s, plain, Trainability(lambda u, i: FROZEN, False, False), inp)
                top_adapters = fwd - sum(g.fwd_macs for g in plain.segments)
            fwd = 2 * (low.fwd + top_adapters)
            elem_f = 2 * low.elementwise + 4 * low.params  # + z drawn thrice and the update
            extra = low.adapters * p.nbytes("weights")  # adapters are extra weights
            w, params, trained = w + extra, params + low.adapters, trained + low.params
            work = max(work, low.peak + dequant)
            peak = max(peak + extra, w + copies + opt + low.peak + dequant)
            kernels += low.work
        return StepCost(
            method, s.name, batch, seq, inp.tgt_seq, fwd, bwd, 0.0, elem_f, elem_b,
            Memory(w, grads, opt, acts, work, peak, copies), params, trained, rule.passes,
            kernels,
        )  # fmt: skip
    if rule.update == "zeroth-order":  # two forwards a query, perturbation and update passes
        if queries < 1:
            raise EdgetuneError(f"a zeroth-order step needs at least one query, got {queries}")
        zo = trained if rule.trains == "adapters" else params  # what z spans
        adapters = rule.trains == "adapters"
        spanned = trained_tensors(tape.events) if adapters else _matrices(tape)
        kernels = (
            forward_work(tape.events).times(2 * queries)
            + perturbation_work(spanned, p.nbytes("weights"), 3 * queries, 2 * queries, queries)
            + formed(2 * queries, False)
        )
        return StepCost(
            method, s.name, batch, seq, inp.tgt_seq, 2 * queries * fwd, 0.0, 0.0,
            # + z drawn three times a query (two perturbations, the update) and the update
            2 * queries * elem_f + (3 * queries + 1) * zo, 0.0,
            Memory(w, 0.0, 0.0, 0.0, mezo_peak(tape, p.nbytes("weights"), adapters)), params,
            float(zo), 2 * queries, kernels,
        )  # fmt: skip
    if rule.update == "forward-mode":  # one forward with tangents a query
        if queries < 1:
            raise EdgetuneError(f"a forward-mode step needs at least one query, got {queries}")
        tangents = trained * p.nbytes("weights")  # v of every trained tensor, whole
        dual = forward_mode_peak(tape)
        tangent = sum(g.tangent_macs for g in segs)  # two products per product with a tangent
        kernels = (
            forward_work(tape.events, dual=True).times(queries)
            + perturbation_work(
                trained_tensors(tape.events), p.nbytes("weights"), 2 * queries, 0, queries
            )
            + formed(queries, False)
        )
        return StepCost(
            # the tangents drawn twice a query (the forward, the update), and the update
            method, s.name, batch, seq, inp.tgt_seq, queries * (fwd + tangent), 0.0, 0.0,
            queries * (elem_f + elem_b) + (2 * queries + 1) * trained, 0.0,
            Memory(w, tangents, 0.0, 0.0, dual, w + dequant + tangents + dual), params,
            trained, 2 * queries, kernels,
        )  # fmt: skip
    # PEPITA family: F e projects the output error (rows, width) to the input width
    update = sum(g.update_macs for g in segs) + e_rows * e_width * s.emb_width
    lockstep = rule.lockstep
    modulated = tape
    if lockstep:  # the concatenated clean and modulated batch: the same ops at 2B
        modulated = Tape(act, softmax_jacobian)
        record(s, modulated, tr, replace(inp, batch=2 * batch))
    f = pepita_peak(tape, modulated, lockstep, e_rows * e_width, e_rows * s.emb_width * FP32,
                    g_bytes)  # fmt: skip
    n_fwd = 3 if lockstep else 2
    work = max(0.0, f.peak - f.updates - f.kept)
    # the clean forward, the modulated one (lockstep: clean and modulated at twice the batch),
    # each trained linear's local update, the error's projection F e and the optimizer's step
    second = forward_work(modulated.events) if lockstep else forward_work(tape.events)
    kernels = (
        forward_work(tape.events)
        + second
        + update_work(tape.events)
        + optimizer_work(trained_tensors(tape.events), optimizer, g_bytes, clip=False)
    )
    kernels.gemms[(1, e_rows, e_width, s.emb_width)] += 1
    return StepCost(
        method, s.name, batch, seq, inp.tgt_seq, n_fwd * fwd, 0.0, update,
        n_fwd * elem_f, 0.0, Memory(w, f.updates, opt, f.kept, work, w + opt + f.peak),
        params, trained, rule.passes, kernels,
    )  # fmt: skip


def _matrices(tape: Tape) -> list[float]:
    """Element counts of the model's weight matrices (each shared one once): what a
    zeroth-order rule over all parameters perturbs, less its norms and biases."""
    return [float(r * c) for r, c, _ in tape.matrices.values()]


@dataclass(frozen=True)
class _Below:
    """The zeroth-order bottom of a hybrid step: one forward's MACs and element-wise work (with
    the bottom's adapters), the elements z spans, the adapters' parameters (extra weights) and
    the live bytes at the peak of the gradient-free forward with one perturbed copy."""

    fwd: float
    elementwise: float
    params: float
    adapters: float
    peak: float
    work: Work  # its gradient-free forward's kernels and SPSA's passes


def _below(
    s: ModelShape,
    below: str,
    inp: Inputs,
    p: Precision,
    zo_blocks: int,
    lora_rank: int,
    lora_units: tuple[str, ...],
    head_trains: bool,
) -> _Below:
    n_blocks = s.n_layers + s.n_dec_layers
    if not 0 <= zo_blocks <= n_blocks:
        raise EdgetuneError(f"zo_blocks={zo_blocks} must lie in 0..{n_blocks} blocks")
    adapters = below == "adapters"
    if adapters:
        bad = set(lora_units) - set(LORA_UNITS)
        if bad:
            raise EdgetuneError(f"unknown LoRA targets {sorted(bad)}; choose from {LORA_UNITS}")
        lora = Train(lora_rank=lora_rank)
        tr = Trainability(lambda u, i: lora if i < zo_blocks and u in lora_units else FROZEN,
                          False, False)  # fmt: skip
    else:  # counted as trained: the elements z spans
        tr = Trainability(lambda u, i: FULL if i < zo_blocks else FROZEN, True, False)
    tape = Tape(p.nbytes("activations"))
    record(s, tape, tr, inp)  # trained: the bottom only (a stack's final norm below k with it)
    segs = tape.segments
    spanned = sum(g.trained_params for g in segs)
    if not adapters and s.tied and head_trains and inp.head == "lm":  # a tied LM head: backprop
        spanned -= s.vocab * s.emb_width
    peak = mezo_peak(tape, p.nbytes("weights"), adapters, lambda e: bool(e.params))
    tensors = trained_tensors(tape.events)
    work = forward_work(tape.events) + perturbation_work(tensors, p.nbytes("weights"), 3, 2, 1)
    return _Below(sum(g.fwd_macs for g in segs), sum(g.fwd_elementwise for g in segs), spanned,
                  spanned if adapters else 0.0, peak, work)  # fmt: skip


def eval_peak(
    s: ModelShape,
    batch: int,
    seq: int,
    tgt_seq: int = 0,
    head: str = "lm",
    n_labels: int = 2,
    precision: Precision | None = None,
    scored: float = 1.0,
    chunked_loss: bool = False,
) -> float:
    """Live activation bytes at the peak of an evaluation forward at `batch`: the forward and
    its loss without autograd (nothing saved for a backward), what evaluating adds to the
    weights and optimizer state a run holds. A held base's dequantized chunk is not counted."""
    p = precision or Precision()
    tape = Tape(p.nbytes("activations"))
    inp = Inputs(batch, seq, tgt_seq if s.kind == ENCODER_DECODER else 0, head, n_labels, scored,
                 chunked_loss)  # fmt: skip
    record(s, tape, Trainability(lambda u, i: FROZEN, False, False), inp)
    return tape.peak_bytes(0.0, no_grad=True)[0]
