"""The options of every learning rule: the `method:` section of a run config.

One frozen dataclass per method, each field with its meaning; `edgetune.fields.build` reads a
config's mapping into it when the config loads, so an unknown key or a bad value fails before
any model or data is loaded. Torch-free: the config, the forecast and the CLI read these
without the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.errors import EdgetuneError
from edgetune.scheme import UNITS, UpdateScheme, read_scheme, resolve_scheme


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalizing a frozen dataclass in __post_init__


def _check_layers(method: str, layers: str, head: bool) -> None:
    """A `layers` option: all, last-K, or (where `head`) head (also last-0)."""
    ok = (
        layers == "all"
        or (head and layers == "head")
        or (layers.startswith("last-") and layers[5:].isdigit() and (head or int(layers[5:]) > 0))
    )
    if not ok:
        use = "all, last-K or head" if head else "all or last-K"
        raise EdgetuneError(f"{method} option layers={layers!r}: use {use}")


def first_block(layers: str, n_blocks: int) -> int:
    """The lowest block a `layers` option trains on a model of `n_blocks` (all: 0, last-K:
    n - K, head: n, none)."""
    if layers == "all":
        return 0
    if layers == "head":
        return n_blocks
    k = int(layers[5:])
    if k > n_blocks:
        raise EdgetuneError(f"layers={layers!r}: the model has {n_blocks} blocks")
    return n_blocks - k


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own (`backprop`)."""


@dataclass(frozen=True)
class SparseOptions:
    """Options of `sparse`."""

    scheme: str | UpdateScheme | None = None
    """Built-in name (last-K, bias-only[-K], qkv-ffn1-K, @F for a channel fraction,
    ratios-R1,...), a YAML scheme file (read when the config loads, so the run's config.yaml
    holds the scheme itself), or an inline scheme. Unset: planned for the run's budget or
    device when it has one (`train.budget`, `train.device`), else qkv-ffn1-2."""
    frozen_dropout: bool = False
    """Keep dropout on in the frozen modules below the lowest trained one (embeddings and
    blocks). Off by default: there they only add noise to the features the trained modules see,
    and on a CPU a train-mode forward costs about 1.5x an eval-mode one."""
    dropout: bool = True
    """Dropout in the trained modules. False runs the whole model in eval mode: no dropout
    masks or their random numbers, and attention through the fused kernel, so a step costs
    less; the model loses dropout's regularization (measure it: docs/methods/sparse.md)."""
    in_place: bool = False
    """Apply each parameter's AdamW update in its gradient hook and free the gradient at once
    (needs max_grad_norm null: clipping needs every gradient at the same time)."""

    DEFAULT_SCHEME = "qkv-ffn1-2"

    def __post_init__(self) -> None:
        if self.scheme is not None:
            _set(self, "scheme", read_scheme(self.scheme))
        if self.frozen_dropout and not self.dropout:
            raise EdgetuneError("sparse option frozen_dropout needs dropout: true")


@dataclass(frozen=True)
class LoraOptions:
    """Options of `lora`."""

    r: int = 8
    """Rank of the adapters."""
    alpha: float = 16.0
    """Scale numerator: the adapter output is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input (training mode only)."""
    target_modules: tuple[str, ...] = ("qkv",)
    """Scheme units (qkv, attn_out, ffn1, ffn2) and/or module names PEFT matches by suffix."""
    train_head: bool | None = None
    """Train the task head whole; default: yes for classification through a classifier head,
    no for LM and for classification through label words (`data.label_words`)."""
    layers: str = "all"
    """Which blocks get adapters: all, or last-K (the last K blocks: backward stops at the
    lowest of them, so a step saves the activations of those blocks only)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise EdgetuneError(f"lora option r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise EdgetuneError("lora option alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise EdgetuneError("lora option dropout must be in [0, 1)")
        if isinstance(self.target_modules, str):
            _set(self, "target_modules", (self.target_modules,))
        if not self.target_modules:
            raise EdgetuneError("lora option target_modules is empty")
        _check_layers("lora", self.layers, head=False)

    def first_block(self, n_blocks: int) -> int:
        """The lowest block with adapters on a model of `n_blocks`."""
        return first_block(self.layers, n_blocks)


@dataclass(frozen=True)
class MezoOptions:
    """Options of `mezo`."""

    eps: float = 1e-3
    """Perturbation scale."""
    trainable: str | UpdateScheme = "all"
    """What the estimate perturbs and trains: `all` (every parameter, embeddings included), a
    scheme (name, YAML path, inline), or `lora` (only the factors of LoRA adapters added on
    `target_modules` with rank `rank`, and a classifier head; the base stays frozen)."""
    rank: int = 8
    """LoRA rank of the adapters when trainable is `lora`."""
    target_modules: tuple[str, ...] = ("qkv",)
    """Where the adapters go when trainable is `lora` (as lora's option of that name)."""
    queries: int = 1
    """SPSA estimates averaged per step, each with its own seed (2 forwards each)."""
    perturbation_rank: int = 0
    """0: dense z ~ N(0, I). k > 0: each matrix's z is U V^T / sqrt(k), U (rows, k) and
    V (columns, k) drawn from the seed (LOZO-style low-rank perturbations); vectors stay dense."""

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise EdgetuneError(f"mezo option eps must be a positive number, got {self.eps!r}")
        if self.trainable not in ("all", "lora"):
            _set(self, "trainable", read_scheme(self.trainable))
        for key, least in (("rank", 1), ("queries", 1), ("perturbation_rank", 0)):
            if getattr(self, key) < least:
                raise EdgetuneError(
                    f"mezo option {key} must be an integer >= {least}, got {getattr(self, key)!r}"
                )
        if isinstance(self.target_modules, str):
            _set(self, "target_modules", (self.target_modules,))

    @property
    def lora(self) -> LoraOptions | None:
        """The adapters the estimate lives in (trainable `lora`), else None."""
        return _adapters(self.trainable, self.rank, self.target_modules)


def _adapters(trainable: object, rank: int, targets: tuple[str, ...]) -> LoraOptions | None:
    """The LoRA adapters a rule over adapter factors adds (trainable `lora`; alpha = 2 rank,
    lora's default scale), else None."""
    if trainable != "lora":
        return None
    return LoraOptions(r=rank, alpha=2.0 * rank, target_modules=targets)


@dataclass(frozen=True)
class ForwardGradOptions:
    """Options of `forward_grad`."""

    trainable: str = "lora"
    """What the tangent spans and the step trains: `lora` (the factors of LoRA adapters added
    on `target_modules` with rank `rank`, and a classifier head; the base stays frozen: Spry's
    setting) or `all` (every parameter, embeddings included)."""
    rank: int = 8
    """LoRA rank of the adapters when trainable is `lora`."""
    target_modules: tuple[str, ...] = ("qkv",)
    """Where the adapters go when trainable is `lora` (as lora's option of that name)."""
    queries: int = 1
    """Forward gradients averaged per step, each with its own tangent (one forward each)."""

    def __post_init__(self) -> None:
        if self.trainable not in ("all", "lora"):
            raise EdgetuneError(
                f"forward_grad option trainable={self.trainable!r}: use all or lora"
            )
        for key in ("rank", "queries"):
            if getattr(self, key) < 1:
                raise EdgetuneError(
                    f"forward_grad option {key} must be an integer >= 1, got {getattr(self, key)!r}"
                )
        if isinstance(self.target_modules, str):
            _set(self, "target_modules", (self.target_modules,))

    @property
    def lora(self) -> LoraOptions | None:
        """The adapters the tangents live in (trainable `lora`), else None."""
        return _adapters(self.trainable, self.rank, self.target_modules)


@dataclass(frozen=True)
class HybridOptions:
    """Options of `hybrid`."""

    backprop_blocks: int | None = None
    """Top blocks trained by backpropagation, with the head (the boundary: blocks from
    n - backprop_blocks up; 0: only the head). The blocks below the boundary and the input
    embeddings train by zeroth-order (SPSA), as `zo_trainable` says. Unset: the lowest block
    `scheme` trains; without a scheme, the most blocks whose step fits the run's budget
    (`train.budget`, `train.device`; docs/planning.md), else 1."""
    scheme: str | UpdateScheme | None = None
    """A sparse update scheme over the top blocks (as sparse's option: name, YAML path, inline);
    it names no block below the boundary. Unset: every unit of the top blocks and the head
    (last-N, N = backprop_blocks)."""
    zo_trainable: str = "all"
    """What the zeroth-order estimate trains below the boundary: `all` (every weight of the
    embeddings and the bottom blocks), `lora` (LoRA factors of rank `rank` on `target_modules`
    of the bottom blocks; their base stays frozen) or `frozen` (nothing: the step is sparse
    backprop over the top)."""
    zo_lr: float = 1e-6
    """Learning rate of the zeroth-order update (SGD; the run's learning rate and schedule
    drive the top's AdamW, this one follows the same schedule)."""
    eps: float = 1e-3
    """Perturbation scale of the zeroth-order estimate."""
    rank: int = 8
    """LoRA rank of the adapters (the bottom's with zo_trainable `lora`, the top's with
    top_trainable `lora`)."""
    target_modules: tuple[str, ...] = ("qkv",)
    """Scheme units of a block that get those adapters."""
    perturbation_rank: int = 0
    """0: dense z; k > 0: low-rank z per matrix, as mezo's option of that name."""
    dropout: bool = True
    """Dropout in the top blocks (as sparse's option; both perturbed forwards draw the same
    masks). The bottom runs without dropout, as MeZO does."""
    top_trainable: str = "scheme"
    """What backprop trains in the top blocks: `scheme` (a sparse update scheme with the head:
    `scheme`, else every unit) or `lora` (LoRA adapters of rank `rank` on `target_modules` of
    the top blocks, trained by AdamW as lora trains them; the head as lora leaves it: frozen
    for an LM)."""

    ZO_TRAINABLE = ("all", "lora", "frozen")
    TOP_TRAINABLE = ("scheme", "lora")

    def __post_init__(self) -> None:
        if self.backprop_blocks is not None and self.backprop_blocks < 0:
            raise EdgetuneError(
                f"hybrid option backprop_blocks must be an integer >= 0, got "
                f"{self.backprop_blocks!r}"
            )
        if self.scheme is not None:
            _set(self, "scheme", read_scheme(self.scheme))
        if self.zo_trainable not in self.ZO_TRAINABLE:
            raise EdgetuneError(
                f"hybrid option zo_trainable={self.zo_trainable!r}: use "
                + ", ".join(self.ZO_TRAINABLE)
            )
        for key in ("zo_lr", "eps"):
            if not getattr(self, key) > 0:
                raise EdgetuneError(
                    f"hybrid option {key} must be a positive number, got {getattr(self, key)!r}"
                )
        for key, least in (("rank", 1), ("perturbation_rank", 0)):
            if getattr(self, key) < least:
                raise EdgetuneError(
                    f"hybrid option {key} must be an integer >= {least}, got {getattr(self, key)!r}"
                )
        if self.top_trainable not in self.TOP_TRAINABLE:
            raise EdgetuneError(
                f"hybrid option top_trainable={self.top_trainable!r}: use "
                + ", ".join(self.TOP_TRAINABLE)
            )
        if self.top_trainable == "lora" and (self.scheme is not None or not self.dropout):
            raise EdgetuneError(
                "hybrid options scheme and dropout shape a sparse top; with top_trainable "
                "lora the top is adapters (rank, target_modules): drop them"
            )
        if isinstance(self.target_modules, str):
            _set(self, "target_modules", (self.target_modules,))
        bad = [t for t in self.target_modules if t not in UNITS or t in ("head", "norm")]
        if bad or not self.target_modules:
            raise EdgetuneError(
                f"hybrid option target_modules={list(self.target_modules)!r}: name scheme units "
                "of a block (qkv, attn_out, ffn1, ffn2)"
            )

    def top_scheme(self, n_layers: int) -> UpdateScheme:
        """The sparse scheme of the top blocks in a model of `n_layers` blocks: the `scheme`
        option, checked to stay above the boundary, else last-N."""
        boundary = self.boundary(n_layers)
        if self.scheme is None:
            return UpdateScheme.last_k(n_layers, n_layers - boundary)
        scheme = resolve_scheme(self.scheme, n_layers)
        low = scheme.lowest_layer()
        if low is not None and low < boundary:
            raise EdgetuneError(
                f"hybrid: scheme {scheme.name!r} trains block {low}, below the boundary "
                f"{boundary} ({n_layers - boundary} top blocks by backprop): raise "
                "backprop_blocks, or name only the top blocks"
            )
        return scheme

    def boundary(self, n_layers: int) -> int:
        """The lowest block trained by backprop (n_layers: none, only the head); the blocks
        under it train by zeroth-order."""
        if self.backprop_blocks is None:
            if self.scheme is None:
                return max(0, n_layers - 1)
            low = resolve_scheme(self.scheme, n_layers).lowest_layer()
            return n_layers if low is None else low
        if self.backprop_blocks > n_layers:
            raise EdgetuneError(
                f"hybrid option backprop_blocks={self.backprop_blocks}: the model has "
                f"{n_layers} blocks"
            )
        return n_layers - self.backprop_blocks

    @property
    def lora(self) -> LoraOptions | None:
        """The bottom's adapters (zo_trainable `lora`; alpha = 2 rank, as mezo's), else None;
        their targets are narrowed to the bottom blocks when the model is known."""
        if self.zo_trainable != "lora":
            return None
        return LoraOptions(r=self.rank, alpha=2.0 * self.rank, target_modules=self.target_modules,
                           train_head=False)  # fmt: skip

    def top_lora(self, n_layers: int) -> LoraOptions | None:
        """The top's adapters (top_trainable `lora`: the blocks from the boundary up, the head
        as lora's default leaves it), else None."""
        if self.top_trainable != "lora":
            return None
        k = n_layers - self.boundary(n_layers)
        if k < 1:
            raise EdgetuneError(
                "hybrid: top_trainable lora needs a top block (backprop_blocks >= 1)"
            )
        return LoraOptions(r=self.rank, alpha=2.0 * self.rank, target_modules=self.target_modules,
                           layers=f"last-{k}")  # fmt: skip


@dataclass(frozen=True)
class PepitaOptions:
    """Options of `pepita` and `mempepita`."""

    layers: str = "all"
    """Which Linears train: all, last-K (the last K blocks plus the head) or head."""
    feedback_scale: float = 0.05
    """F = feedback_scale * U[-sqrt(6/d), sqrt(6/d)], d the embedding width."""
    momentum: float = 0.0
    """SGD momentum (0: plain SGD, no optimizer state; the reference code uses 0.9)."""
    optimizer: str = "sgd"
    """sgd (the reference's) or adamw (AdamW over the PEPITA updates: two states a weight)."""

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise EdgetuneError(f"pepita option optimizer={self.optimizer!r}: use sgd or adamw")
        if self.optimizer == "adamw" and self.momentum:
            raise EdgetuneError("pepita option momentum applies to sgd only")
        _check_layers("pepita", self.layers, head=True)
        if not self.feedback_scale > 0:
            raise EdgetuneError("pepita option feedback_scale must be positive")
        if not 0.0 <= self.momentum < 1.0:
            raise EdgetuneError("pepita option momentum must be in [0, 1)")

    def first_block(self, n_blocks: int) -> int:
        """The lowest block whose linears learn on a model of `n_blocks`."""
        return first_block(self.layers, n_blocks)
