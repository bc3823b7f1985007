"""`lora`: low-rank adapters through PEFT (Hu et al. 2021), AdamW like `backprop`.

W x becomes W x + (alpha / r) B A x with A (r, in), B (out, r), B = 0 at the start; W stays
frozen. Targets default to the qkv projections of every block (names from
`edgetune.models.anatomy`, per family); for classification the task head trains whole
(`modules_to_save`), for LM tasks the head stays frozen (a tied LM head is the embedding matrix).
The step is backprop's (`edgetune.methods.backprop`) on the PEFT model, whose only trainable
parameters are the adapters and the head: `trainable_state()` is those. Once training is over
the run saves the PEFT adapter itself (`adapter_config.json`, `adapter_model.safetensors`;
`edgetune.trained`), then `export_model()` merges the adapters into the model's weights in place
(`merge_and_unload`) so the merged model is a plain transformers model. Over a base held in a
low-precision format (`model.weights`, QLoRA's setting) the adapters wrap the `QuantLinear`s and
the run saves the adapter only: merging would need the fp32 base.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.backprop import Backprop
from edgetune.methods.base import MethodSettings, options_of
from edgetune.methods.options import LoraOptions
from edgetune.methods.select import frozen_prefix
from edgetune.models.anatomy import Anatomy, describe, inner_model
from edgetune.models.quantized import QuantLinear, is_held
from edgetune.scheme import UNITS


def lora(model: nn.Module, settings: MethodSettings) -> Backprop:
    """`lora` is backprop over a PEFT model whose only trainable parameters are the adapters
    (and the head, for classification): the same AdamW step, state and resume; its export
    merges the adapters into the base weights in place. With `layers` last-K the modules below
    the lowest adapter run in eval mode (no dropout), as sparse's frozen blocks do."""
    options = options_of(settings, LoraOptions, "lora")
    method = Backprop(adapt(model, options), replace(settings, options=options), name="lora")
    if options.layers != "all":  # below the lowest adapter: a fixed feature extractor
        base = inner_model(method.model)
        method.eval_modules = frozen_prefix(base, describe(base))
    return method


def adapt(model: nn.Module, options: LoraOptions) -> nn.Module:
    """The PEFT model of `model` with LoRA adapters as `options` say: the adapters (and, for
    classification, the head) require gradients, nothing else does. `mezo` over LoRA
    (`trainable: lora`) perturbs the same tensors."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear

    anatomy = describe(model)
    targets = _targets(model, anatomy, options)
    train_head = options.train_head
    if train_head is None:  # a new classifier head trains; label words read the LM's own
        train_head = anatomy.task == "classify" and not anatomy.label_words
    roots = head_roots(anatomy)
    to_save = sorted(roots) if train_head and roots else None
    config = LoraConfig(
        r=options.r,
        # peft types lora_alpha int; a float alpha scales the same (alpha / r)
        lora_alpha=options.alpha,  # type: ignore[arg-type]
        lora_dropout=options.dropout,
        target_modules=targets,
        modules_to_save=to_save,
        fan_in_fan_out=anatomy.family == "gpt2",  # GPT-2's Conv1D stores W as (in, out)
    )
    if is_held(model):  # PEFT's LoRA Linear over a QuantLinear base (it calls the base)
        config._register_custom_module({QuantLinear: LoraLinear})
    try:
        with warnings.catch_warnings():  # PEFT warns of every layer type it does not ship
            warnings.filterwarnings("ignore", "Unsupported layer type", UserWarning)
            return get_peft_model(model, config)
    except ValueError as e:
        raise EdgetuneError(f"lora: {e}") from None


def head_roots(anatomy: Anatomy) -> set[str]:
    """The modules PEFT wraps to train a head whole (`modules_to_save`): top-level head
    modules ("classifier", "score") and the pooler."""
    return {
        n[: n.index(".pooler") + 7] if ".pooler" in n else n.split(".")[0] for n in anatomy.head
    }


def _targets(model: nn.Module, anatomy: Anatomy, options: LoraOptions) -> list[str]:
    """PEFT's target names: scheme units as their leaf names in the family's layout, other
    strings as given (PEFT matches a name by suffix); with `layers` last-K, the full names of
    the matching modules inside the last K blocks (T5 counts encoder blocks first)."""
    first = options.first_block(anatomy.n_layers)
    if first == 0:
        leaves = [
            n for t in options.target_modules
            for n in (anatomy.leaf_names(t) if t in UNITS and t != "head" else [t])
        ]  # fmt: skip
        return sorted(set(leaves))
    found: list[str] = []
    for t in options.target_modules:
        if t in UNITS and t != "head":
            found += anatomy.unit_modules((t,), range(first, anatomy.n_layers))
            continue
        tops = tuple(f"{b}." for b in anatomy.blocks[first:])
        found += [n for n, _ in model.named_modules()
                  if (n == t or n.endswith(f".{t}")) and n.startswith(tops)]  # fmt: skip
    if not found:
        raise EdgetuneError(
            f"lora: no target of {list(options.target_modules)} in the last "
            f"{anatomy.n_layers - first} blocks (layers={options.layers!r})"
        )
    return sorted(set(found))
