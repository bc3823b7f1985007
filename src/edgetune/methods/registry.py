"""Every learning rule declared once: its name, options, traits and where its code lives.

The name is the one used everywhere (config value, CLI choice, docs page `docs/methods/`,
test id). Everything outside `edgetune.methods` that depends on a method reads its entry
here instead of comparing names: the config parses `method:` into `options`, the forecast asks
the cost model for `rule` with `optimizer(options)` and `scheme_option`, a federated client
sends what `sends` says and the server replays seeds where it says `seeds`, a refused budget
suggests `suggestions`. Torch-free: `build_method` imports the implementation on first use.

Adding a method: CONTRIBUTING.md (a test fails until its docs page, test row and cost rule
exist).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from edgetune.cost.methods import Rule
from edgetune.cost.shapes import ModelShape
from edgetune.errors import EdgetuneError
from edgetune.families import FAMILIES, MODEL_TYPES, roles_of_leaf
from edgetune.fields import build
from edgetune.methods.options import (
    ForwardGradOptions,
    HybridOptions,
    LoraOptions,
    MezoOptions,
    NoOptions,
    PepitaOptions,
    SparseOptions,
)
from edgetune.scheme import UNITS, resolve_scheme


@dataclass(frozen=True)
class MethodSpec:
    """What edgetune knows about a method without running it."""

    name: str
    summary: str
    options: type
    """The dataclass of its `method:` options (`edgetune.methods.options`)."""
    factory: str
    """`module:attribute` of the callable (model, MethodSettings) -> Method (the protocol of
    `edgetune.methods.base`), imported on first use."""
    rule: Rule
    """How a step spends compute and memory, for the cost model (under default options)."""
    rule_of: Callable[[Any], Rule] | None = None
    """The rule under given options, where options change it (`mezo` over LoRA trains
    adapters); None: always `rule`."""
    optimizer: Callable[[Any], str] = lambda options: "adamw"
    """The cost model's optimizer (adamw, sgd, sgd-momentum) under these options."""
    sends: str = "delta"
    """What a federated client ships: `delta` (its trainable state minus the global, through
    a codec) or `seeds` (its steps' seeds and scalars, which the server replays)."""
    scheme_option: str | None = None
    """The option that holds an UpdateScheme (the planner fills it for a budget)."""
    blocks_option: str | None = None
    """The option that holds how many top blocks train by backprop (`hybrid`); where it and
    the scheme are unset, a run with a budget gets the most that fit (`plan.planner.plan_blocks`)
    instead of a planned scheme."""
    suggestions: tuple[Mapping[str, Any], ...] = ({},)
    """Option sets named as alternatives when a run does not fit its budget."""
    cost_inputs: Callable[[Any, ModelShape], dict[str, Any]] = lambda options, shape: {}
    """What the cost model needs of these options on this shape (`step_cost` keywords:
    the scheme, LoRA's rank and targets)."""

    def parse(self, options: Mapping[str, Any] | Any) -> Any:
        """The options object of a config's `method:` mapping (or one given as is)."""
        if isinstance(options, self.options):
            return options
        return build(self.options, options or {}, "method", f"{self.name} option")

    def rule_for(self, options: Any) -> Rule:
        """How a step under these options spends compute and memory."""
        return self.rule if self.rule_of is None else self.rule_of(options)

    def label(self, options: Any) -> str:
        """`sparse last-2`: the name, and the scheme where the method has one."""
        scheme = getattr(options, self.scheme_option or "", None)
        name = scheme if isinstance(scheme, str) else getattr(scheme, "name", None)
        return f"{self.name} {name}" if name else self.name

    def factory_callable(self) -> Callable[..., Any]:
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


def _pepita_optimizer(options: PepitaOptions) -> str:
    if options.optimizer == "adamw":
        return "adamw"
    return "sgd-momentum" if options.momentum > 0 else "sgd"


def _pepita_cost(options: PepitaOptions, shape: ModelShape) -> dict[str, Any]:
    """The lowest block whose linears learn (`layers`: all, last-K, head)."""
    return {"linears_from": options.first_block(_blocks(shape))}


def _blocks(shape: ModelShape) -> int:
    return shape.n_layers + shape.n_dec_layers


def _sparse_cost(options: SparseOptions, shape: ModelShape) -> dict[str, Any]:
    """The scheme, and where dropout runs (`dropout`, `frozen_dropout`)."""
    scheme = options.scheme or SparseOptions.DEFAULT_SCHEME
    mode = "off" if not options.dropout else "all" if options.frozen_dropout else "trained"
    return {"scheme": resolve_scheme(scheme, _blocks(shape)), "train_mode": mode}


def _lora_cost(options: LoraOptions, shape: ModelShape) -> dict[str, Any]:
    """LoRA's rank, its targets as the cost model's block roles (scheme units, qkv is q, k and
    v, or module names, matched by suffix in the family's layout as PEFT matches them) and the
    lowest block with adapters (`layers`)."""
    roles: list[str] = []
    for target in options.target_modules:
        if target in UNITS and target not in ("head", "norm"):
            roles += ["q", "k", "v"] if target == "qkv" else [target]
            continue
        # a cost-model family that is a model type of a layout family (longformer: bert's)
        family = shape.family if shape.family in FAMILIES else MODEL_TYPES.get(shape.family)
        found = roles_of_leaf(family, target) if family else ()
        if not found:
            raise EdgetuneError(
                f"the cost model cannot place LoRA target {target!r} in a {shape.family} "
                f"model; name scheme units ({', '.join(u for u in UNITS if u != 'head')}) "
                "or the module names of its layout"
            )
        roles += found
    return {"lora_rank": options.r, "lora_units": tuple(dict.fromkeys(roles)),
            "linears_from": options.first_block(_blocks(shape))}  # fmt: skip


def _mezo_rule(options: MezoOptions) -> Rule:
    return Rule("zeroth-order", "adapters" if options.lora is not None else "all")


def _forward_grad_rule(options: ForwardGradOptions) -> Rule:
    return Rule("forward-mode", "adapters" if options.lora is not None else "all")


def _mezo_cost(options: MezoOptions | ForwardGradOptions, shape: ModelShape) -> dict[str, Any]:
    """Queries per step, and LoRA's rank and roles when the estimate lives in adapters (`mezo`
    and `forward_grad`)."""
    lora = options.lora
    return {"queries": options.queries, **(_lora_cost(lora, shape) if lora is not None else {})}


def _hybrid_rule(options: HybridOptions) -> Rule:
    below = {"all": "all", "lora": "adapters"}.get(options.zo_trainable)
    return Rule("backward", "adapters" if options.top_trainable == "lora" else "scheme",
                below=below)  # fmt: skip


def _hybrid_cost(options: HybridOptions, shape: ModelShape) -> dict[str, Any]:
    """The top's scheme or adapters, the boundary (blocks under it train by zeroth-order)
    and, for adapters, LoRA's rank and roles (the top's and the bottom's are the same)."""
    n = _blocks(shape)
    top = options.top_lora(n)
    lora = top or options.lora
    return {**({"scheme": options.top_scheme(n)} if top is None else {}),
            "zo_blocks": options.boundary(n),
            **(_lora_cost(lora, shape) if lora is not None else {})}  # fmt: skip


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            "backprop", "full backpropagation with AdamW (the reference)", NoOptions,
            "edgetune.methods.backprop:Backprop", Rule("backward", "all"), suggestions=(),
        ),
        MethodSpec(
            "sparse", "PockEngine-style sparse backpropagation over an update scheme",
            SparseOptions, "edgetune.methods.sparse:Sparse", Rule("backward", "scheme"),
            scheme_option="scheme", cost_inputs=_sparse_cost,
            suggestions=({"scheme": "bias-only"}, {"scheme": "qkv-ffn1-2"}),
        ),
        MethodSpec(
            "pepita", "forward-only PEPITA: two forwards, local updates", PepitaOptions,
            "edgetune.methods.pepita:Pepita", Rule("forward-only", "linears"),
            optimizer=_pepita_optimizer, cost_inputs=_pepita_cost, suggestions=(),
        ),
        MethodSpec(
            "mempepita", "PEPITA in lockstep: one layer's activations at a time",
            PepitaOptions, "edgetune.methods.pepita:mempepita",
            Rule("forward-only", "linears", lockstep=True), optimizer=_pepita_optimizer,
            cost_inputs=_pepita_cost,
        ),
        MethodSpec(
            "mezo", "zeroth-order SPSA with the seed trick: inference memory", MezoOptions,
            "edgetune.methods.mezo:Mezo", Rule("zeroth-order", "all"), rule_of=_mezo_rule,
            optimizer=lambda options: "sgd", sends="seeds", cost_inputs=_mezo_cost,
        ),
        MethodSpec(
            "hybrid", "backprop on the top blocks, zeroth-order (SPSA) below them",
            HybridOptions, "edgetune.methods.hybrid:Hybrid",
            Rule("backward", "scheme", below="all"),
            rule_of=_hybrid_rule, cost_inputs=_hybrid_cost, suggestions=(),
            scheme_option="scheme", blocks_option="backprop_blocks",
        ),
        MethodSpec(
            "forward_grad", "forward gradient: one forward with a seeded tangent (jvp)",
            ForwardGradOptions, "edgetune.methods.forward_grad:ForwardGrad",
            Rule("forward-mode", "adapters"), rule_of=_forward_grad_rule,
            optimizer=lambda options: "sgd", sends="seeds", cost_inputs=_mezo_cost,
        ),
        MethodSpec(
            "lora", "low-rank adapters through PEFT", LoraOptions,
            "edgetune.methods.lora:lora", Rule("backward", "adapters"),
            cost_inputs=_lora_cost,
        ),
    ]
}  # fmt: skip


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise EdgetuneError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, model: Any, settings: Any) -> Any:
    """The method `name` (a `Method`) on `model` under `settings` (`MethodSettings`, whose
    `options` may be the options object or a mapping, parsed here)."""
    spec = get_method(name)
    settings = replace(settings, options=spec.parse(settings.options))
    return spec.factory_callable()(model, settings)
