"""What the forward-only rules hold at the peak of a step: MeZO, PEPITA and MEMPEPITA, and
the forward gradient's forward-mode pass.

Each peak is the recorded forward replayed without autograd (`Tape.peak_bytes(no_grad=True)`:
the live tensors of a transformers forward, attention maps held to the end of their block, the
KV cache to the end of the model) plus what the method's runtime (`edgetune.methods.mezo`,
`pepita`, `pepita_core`) holds on top, term by term.

MeZO (two perturbed forwards a query, `Mezo.perturbed`; queries run one after another, so
the peak is one forward's):
- a module that owns a trained tensor runs on a perturbed copy of its parameters (a forward
  pre-hook clones them and adds eps z chunk by chunk): the copy lives during that module's op,
  with two z chunks (`CHUNK` elements each: the one drawn and the previous loop value) while
  it is filled;
- a table lookup trained whole is not copied: its hook fills z[ids] into a new (rows, width)
  tensor and returns the looked-up rows plus it, a second new tensor;
- the update afterwards works chunk by chunk (a few `CHUNK`-sized temporaries: not modelled).

The forward gradient (`forward_grad`: one `torch.func.jvp` forward a query): every tensor
downstream of a trained one lives with its tangent (`Tape.peak_bytes(dual=True)`); while an
op forms a tangent, one more tensor of its output's size exists. The tangents of the trained
tensors (held whole during the forward) are counted apart (`gradients`), as the update's
chunks are not.

PEPITA / MEMPEPITA (`PepitaCore.accumulate`), with e the output error (R rows x W: tokens x
vocabulary for an LM head, batch x labels for a classifier):
- clean pass at batch B without autograd; PEPITA keeps the output h of every trained hidden
  linear until the modulated pass reaches it, MEMPEPITA keeps nothing;
- loss and error of the clean logits: beside the logits, two fp32 (R, W) tensors (the loss's
  log-softmax and, for a causal LM, the copy of the shifted logits it is taken of; for e, the
  softmax and the masked product);
- modulated pass: PEPITA at batch B, MEMPEPITA on the concatenated batch [x ; x + F e] (2B);
  the modulation F e (R x input width, fp32) is held throughout. At every trained hidden
  linear the hook forms d = h - h' (B rows x its output) and two tensors of the weight's size
  (dW, then its scaled copy); PEPITA adds the update to p.grad and holds it to the end of the
  step (and frees that linear's stored h), MEMPEPITA applies it and frees it at once;
- the output layer: its modulated output becomes a leaf; MEMPEPITA's model returns the
  `torch.cat` of the clean and modulated halves, a second copy. The loss's backward holds its
  log-softmax and two fp32 (R, W) gradients; then the leaf's gradient (its storage as large as
  the output) and the update e'^T a' (two tensors of the output layer's size) while the
  output, its copy and the layer's input are still referenced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgetune.cost.graph import Event, Tape

CHUNK = 1 << 18  # elements of z MeZO draws at a time (edgetune.methods.mezo.CHUNK)
FP32 = 4  # bytes per element of the loss's log-softmax and the output error


def mezo_peak(
    tape: Tape,
    weight_bytes: float,
    adapters: bool = False,
    perturbs: Callable[[Event], bool] | None = None,
) -> float:
    """Live bytes at the peak of a MeZO step beyond the weights: the largest set of a
    forward's live tensors with the perturbed copy (or perturbed rows) of that op's
    parameters. `adapters`: only the op's trained tensors (LoRA factors, a trained head) are
    copied, and PEFT's LoRA branch adds B(A x), an output-sized tensor, beside the base's.
    `perturbs`: the ops whose parameters are perturbed (all unless given; a hybrid's bottom)."""

    def perturbation(_: int, e: Event) -> float:
        if perturbs is not None and not perturbs(e):
            return 0.0
        if adapters:
            n = sum(v for _, v in e.params)
            if not n:
                return 0.0
            return (n + 2 * min(CHUNK, n)) * weight_bytes + e.out_bytes
        chunks = 2 * min(CHUNK, e.weights) * weight_bytes
        if e.kind == "lookup":
            return e.out_bytes + max(e.out_bytes, chunks)
        return e.weights * weight_bytes + max(0.0, chunks - e.out_bytes)

    return tape.peak_bytes(0.0, no_grad=True, extra=perturbation)[0]


def forward_mode_peak(tape: Tape) -> float:
    """Live bytes at the peak of a forward with forward-mode AD (`forward_grad`) beyond the
    weights and the tangents of the trained tensors: the recorded forward replayed without
    autograd, each tensor downstream of a trained one (`out_rg`) with its tangent beside it,
    and while an op forms its output's tangent one more tensor of that size (a product's
    first term while the second is added; the softmax's y * t while it is reduced)."""

    def forming(_: int, e: Event) -> float:
        return e.out_bytes if e.out_rg else 0.0

    return tape.peak_bytes(0.0, no_grad=True, dual=True, extra=forming)[0]


@dataclass(frozen=True)
class PepitaPeak:
    """Bytes of a PEPITA-family step beyond weights and optimizer state: `peak`, its
    high-water mark; `updates`, the weight updates held at once (PEPITA: every one, applied at
    the end; MEMPEPITA: the largest, each applied when formed); `kept`, what lives across the
    passes (PEPITA's stored clean outputs and the modulation F e)."""

    peak: float
    updates: float
    kept: float


def pepita_peak(
    clean: Tape,
    modulated: Tape,
    lockstep: bool,
    error_numel: float,
    modulation: float,
    update_bytes: float,
) -> PepitaPeak:
    """`clean`: the forward at batch B; `modulated`: the same ops at the modulated pass's batch
    (2B for MEMPEPITA, `lockstep`); `error_numel`: R x W; `modulation`: bytes of F e;
    `update_bytes`: bytes per element of an update."""
    trained = [
        i for i, e in enumerate(clean.events) if e.kind == "linear" and e.params
    ]  # the rule's linears, in forward order; the last one is the output layer
    out = trained[-1]
    hidden = set(trained[:-1])
    stored = set() if lockstep else hidden
    kept = sum(clean.events[i].out_bytes for i in stored)
    e_bytes = error_numel * FP32

    clean_fwd = clean.peak_bytes(0.0, no_grad=True, stop_at="loss", kept=stored)[0]
    clean_head = kept + clean.events[out].out_bytes + 2 * e_bytes

    def size(e: Event) -> float:
        return sum(n for _, n in e.params) * update_bytes

    state = {"stored": kept, "updates": 0.0}

    def hooks(i: int, e: Event) -> float:
        now = modulation + state["stored"] + state["updates"]
        if i in hidden:  # d = h - h' on the B modulated rows, dW and its scaled copy
            now += e.out_bytes / (2 if lockstep else 1) + 2 * size(e)
            if not lockstep:  # p.grad += dW, held to the end; the stored h is popped
                state["updates"] += size(e)
                state["stored"] -= clean.events[i].out_bytes
        if i == out and lockstep:
            now += e.out_bytes  # the model's logits: torch.cat of the two halves
        return now

    mod_fwd = modulated.peak_bytes(0.0, no_grad=True, stop_at="loss", extra=hooks)[0]
    m_out = modulated.events[out]
    copies = 2 if lockstep else 1  # output (and its concatenated copy)
    refs = modulation + state["updates"] + sum(v for _, v in m_out.inputs)
    loss_backward = refs + copies * m_out.out_bytes + 3 * e_bytes
    leaf_update = refs + (copies + 1) * m_out.out_bytes + 2 * size(m_out)
    peak = max(clean_fwd, clean_head, mod_fwd, loss_backward, leaf_update)
    if lockstep:
        updates = max(size(modulated.events[i]) for i in trained)
    else:
        updates = state["updates"] + size(m_out)
    return PepitaPeak(peak, updates, kept + modulation)
