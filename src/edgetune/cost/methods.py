"""Cost of one training step per learning rule: MACs, FLOPs and memory by component.

Methods (one name each, as everywhere in edgetune):

- `backprop`  full fine-tuning: forward, backward (input and weight gradients), optimizer step.
- `sparse`    backprop restricted by an `UpdateScheme`: only named units train; backward stops at
              the lowest trained layer; weight-gradient MACs scale with `weight_fraction`;
              bias-only units save no input activations.
- `pepita`    two forwards (clean, then input modulated by F e) and a local update per trained
              weight; keeps the clean pass's outputs of the trained linears for the update.
- `mempepita` PEPITA that recomputes the clean activations: three forwards; keeps only one
              layer's working set (clean and modulated together) at a time.
- `mezo`      zeroth-order SPSA: two forwards per step, inference memory, no gradients.
- `lora`      rank-r adapters on chosen linears; the base model is frozen.

Memory components: weights, gradients, optimizer state, activations (kept across the step) and
workspace (the largest one-op working set of a forward, on top). `total` is their sum, an upper
bound on the peak (gradients and saved activations do not all coexist in practice).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgetune.cost.blocks import Inputs, Trainability, record
from edgetune.cost.graph import FROZEN, FULL, Tape, Train
from edgetune.cost.shapes import ENCODER_DECODER, ModelShape, n_params
from edgetune.errors import EdgetuneError
from edgetune.plan.scheme import UpdateScheme

METHODS = ("backprop", "sparse", "pepita", "mempepita", "mezo", "lora")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0, "sgd-momentum": 1}
LORA_UNITS = ("q", "k", "v", "attn_out", "ffn1", "ffn2")


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
    weights: float
    gradients: float
    optimizer: float
    activations: float
    workspace: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.workspace


@dataclass(frozen=True)
class StepCost:
    """One training step. MACs split into forward (all forward passes of the rule), backward
    (input and weight gradients) and update (forward-only rules' local weight updates, PEPITA's
    error projection)."""

    method: str
    model: str
    batch: int
    seq: int
    tgt_seq: int
    fwd_macs: float
    bwd_macs: float
    update_macs: float
    elementwise_flops: float
    memory: Memory
    params: int
    trained_params: float

    @property
    def macs(self) -> float:
        return self.fwd_macs + self.bwd_macs + self.update_macs

    @property
    def flops(self) -> float:
        """2 FLOPs per MAC plus element-wise work (norms, softmax, activations, loss)."""
        return 2 * self.macs + self.elementwise_flops


def _unit(role: str) -> str:
    """The scheme unit of a block part (q, k and v are the `qkv` unit)."""
    return "qkv" if role in ("q", "k", "v") else role


def _trainability(
    method: str, head: str, scheme: UpdateScheme | None, lora_rank: int, lora_units
) -> Trainability:
    if method == "backprop":
        return Trainability(lambda u, i: FULL, True, True)
    if method in ("pepita", "mempepita"):  # linears and head learn; embeddings, norms do not
        return Trainability(lambda u, i: FROZEN if u == "norm" else FULL, False, True)
    if method == "mezo":  # perturbs every weight, but never needs a gradient
        return Trainability(lambda u, i: FROZEN, False, False)
    if method == "lora":
        bad = set(lora_units) - set(LORA_UNITS)
        if bad:
            raise EdgetuneError(f"unknown LoRA targets {sorted(bad)}; choose from {LORA_UNITS}")
        adapter = Train(lora_rank=lora_rank)
        # peft trains a new classifier head (modules_to_save), never the (tied) LM head
        return Trainability(
            lambda u, i: adapter if u in lora_units else FROZEN, False, head == "classifier"
        )
    if method == "sparse":
        if scheme is None:
            raise EdgetuneError("method sparse needs an update scheme")
        table = {(u.unit, u.layer): Train(u.weight_fraction, u.bias) for u in scheme.updates}
        return Trainability(
            lambda u, i: table.get((_unit(u), i), FROZEN), False, scheme.trains_head()
        )
    raise EdgetuneError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def step_cost(
    s: ModelShape,
    method: str = "backprop",
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
) -> StepCost:
    """Predict one training step of `method` on `s`. `softmax_jacobian` switches to the seed
    paper's convention of a full softmax Jacobian product in the backward."""
    if batch < 1 or seq < 1 or tgt_seq < 0:
        raise EdgetuneError(f"batch and sequence length must be positive, got {batch}, {seq}")
    if optimizer not in OPTIMIZER_STATES:
        raise EdgetuneError(f"unknown optimizer {optimizer!r}; choose {', '.join(OPTIMIZER_STATES)}")
    p = precision or Precision()
    act = p.nbytes("activations")
    inp = Inputs(batch, seq, tgt_seq if s.kind == ENCODER_DECODER else 0, head, n_labels)
    tr = _trainability(method, head, scheme, lora_rank, lora_units)
    tape = Tape(act, softmax_jacobian)
    record(s, tape, tr, inp)
    segs = tape.segments
    fwd = sum(g.fwd_macs for g in segs)
    bwd = sum(g.bwd_input_macs + g.bwd_weight_macs for g in segs)
    elem_f = sum(g.fwd_elementwise for g in segs)
    elem_b = sum(g.bwd_elementwise for g in segs)
    work = max(g.peak_op_bytes for g in segs)
    trained = sum(g.trained_params for g in segs)
    params = n_params(s, head, n_labels)
    if method == "lora":
        params += trained  # adapters are extra parameters
    w = params * p.nbytes("weights")
    opt_states = OPTIMIZER_STATES[optimizer]
    e_rows = batch * (inp.tgt_seq or seq) if head == "lm" else batch
    e_width = s.vocab if head == "lm" else n_labels
    if method in ("backprop", "sparse", "lora"):
        grads = trained * p.nbytes("grads")
        acts = sum(g.saved_bytes for g in segs)
        return StepCost(
            method, s.name, batch, seq, inp.tgt_seq, fwd, bwd, 0.0, elem_f + elem_b,
            Memory(w, grads, trained * opt_states * p.nbytes("optimizer"), acts, work),
            params, trained,
        )  # fmt: skip
    if method == "mezo":  # two forwards, perturbation/update passes over the weights
        return StepCost(
            method, s.name, batch, seq, inp.tgt_seq, 2 * fwd, 0.0, 0.0,
            2 * elem_f + 4 * params, Memory(w, 0.0, 0.0, 0.0, work), params, float(params),
        )  # fmt: skip
    # PEPITA family: F e projects the output error (rows, width) to the input width
    proj = e_rows * e_width * s.emb_width
    update = sum(g.update_macs for g in segs) + proj
    # each linear's update is formed and applied in place, so one dW exists at a time
    layer_params = max(g.max_linear_params for g in segs)
    err = e_rows * e_width * act  # e kept for the modulation and the last layer's update
    if method == "pepita":
        kept = sum(g.trained_out_bytes for g in segs) + err
        n_fwd, workspace = 2, work
    else:  # mempepita: one layer's clean and modulated working set, nothing across layers
        kept = err
        n_fwd, workspace = 3, 2 * work
    return StepCost(
        method, s.name, batch, seq, inp.tgt_seq, n_fwd * fwd, 0.0, update,
        n_fwd * elem_f, Memory(
            w, layer_params * p.nbytes("grads"),
            trained * opt_states * p.nbytes("optimizer"), kept, workspace,
        ), params, trained,
    )  # fmt: skip
