"""Where the units of an `UpdateScheme` live in a real model: module names per family.

`describe(model)` reads a transformers model (BERT/MiniLM/RoBERTa/Longformer, DistilBERT, ALBERT,
Llama/SmolLM2/Mistral/Qwen2/Qwen3, Gemma 3 (text), Phi-3, GPT-2, T5/FLAN-T5) and returns an
`Anatomy`: the ordered blocks, the modules of each unit (qkv, attn_out, ffn1, ffn2, norm) of
each block, the task head, the head modules that produce the logits, and the modules whose
output is the input embedding.

Conventions (shared with the cost model and the planner):
- Layer indices count blocks from the input: encoder blocks first, then decoder blocks (T5:
  `encoder.block.0..n-1` are layers 0..n-1, `decoder.block.j` is layer n + j), so `last-k` of
  an encoder-decoder model trains the top of the decoder.
- A stack's final norm (Llama `model.norm`, GPT-2 `ln_f`, T5 `final_layer_norm`) belongs to the
  `norm` unit of that stack's last block. T5 decoder blocks add the cross-attention
  (`EncDecAttention.q/k/v` to qkv, `.o` to attn_out). Gated FFNs put gate and up in ffn1.
- The head is every top-level child outside the backbone (classifier, score, lm_head, cls,
  pre_classifier, classification_head) plus the backbone's pooler (BERT, ALBERT).
- ALBERT shares one layer's weights across all its passes: its layers here are the *distinct*
  shared layers (`num_hidden_groups * inner_group_num`, usually 1), not the passes. Training a
  shared layer makes backward run through every pass, so on ALBERT a sparse scheme saves weight
  gradients and optimizer state but not backward depth.
- GPT-2 uses `Conv1D` (weight stored as (in, out)); `linear_weight` returns it in Linear layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.families import FAMILIES, MODEL_TYPES
from edgetune.models.quantized import QuantLinear
from edgetune.scheme import UNITS

_BACKBONE_CHILDREN = ("shared", "encoder", "decoder")


@dataclass(frozen=True)
class Anatomy:
    """The module names of one model, by scheme unit. All names are `named_modules` names."""

    family: str
    task: str  # "classify" (logits (B, C)) or "lm" (logits (B, T, V))
    causal: bool  # decoder-only LM: logits at t predict the token at t + 1
    blocks: tuple[str, ...]
    units: dict[tuple[str, int], tuple[str, ...]]  # (unit, layer) -> module names
    head: tuple[str, ...]  # modules of the task head that own parameters
    output: tuple[str, ...]  # head modules that produce the logits (PEPITA's last layer)
    embeddings: tuple[str, ...]  # modules whose output is the input embedding (one per stack)
    label_words: bool = False  # classifies through its LM head (`methods.label_words`)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def modules(self, unit: str, layer: int = -1) -> tuple[str, ...]:
        """Module names of a unit of a layer (`head` ignores the layer)."""
        if unit == "head":
            return self.head
        if unit not in UNITS:
            raise EdgetuneError(f"unknown unit {unit!r}; known: {UNITS}")
        if not 0 <= layer < self.n_layers:
            raise EdgetuneError(f"layer {layer} out of range: the model has {self.n_layers}")
        return self.units.get((unit, layer), ())

    def unit_modules(self, units: Iterable[str], layers: Iterable[int]) -> tuple[str, ...]:
        """Module names of `units` in each of `layers` (adapter targets over a range of
        blocks)."""
        return tuple(n for u in units for i in layers for n in self.modules(u, i))

    def leaf_names(self, unit: str) -> list[str]:
        """The last name component of a unit's modules (what PEFT's target_modules matches)."""
        names = {
            n.rsplit(".", 1)[-1]
            for layer in range(self.n_layers)
            for n in self.modules(unit, layer)
        }
        return sorted(names)


def family_of(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPES:
        raise EdgetuneError(
            f"model type {model_type!r} is not supported by the learning methods; "
            f"supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return MODEL_TYPES[model_type]


def describe(model: nn.Module) -> Anatomy:
    """Map scheme units to the modules of `model` (a plain transformers model, not PEFT)."""
    family = family_of(model)
    layout = FAMILIES[family]
    modules = dict(model.named_modules())
    lists = [
        n
        for n, m in modules.items()
        if isinstance(m, nn.ModuleList) and re.search(layout.blocks, n)
    ]
    if not lists:
        raise EdgetuneError(f"could not find the blocks of this {family} model")
    blocks: list[str] = []
    units: dict[tuple[str, int], tuple[str, ...]] = {}
    for list_name in lists:
        first = len(blocks)
        blocks += [f"{list_name}.{i}" for i in range(len(modules[list_name]))]
        for i in range(first, len(blocks)):
            for unit, rel in layout.units.items():
                found = tuple(f"{blocks[i]}.{r}" for r in rel if f"{blocks[i]}.{r}" in modules)
                units[(unit, i)] = found
        # the stack's final norm joins the norm unit of its last block
        parent = list_name.rsplit(".", 1)[0] if "." in list_name else ""
        finals = tuple(
            n for r in layout.final_norms if (n := f"{parent}.{r}" if parent else r) in modules
        )
        if finals and len(blocks) > first:
            units[("norm", len(blocks) - 1)] += finals

    prefix = getattr(model, "base_model_prefix", "")
    backbone = {prefix, *_BACKBONE_CHILDREN}
    roots = [
        n
        for n, m in model.named_children()
        if n not in backbone and any(True for _ in m.parameters())
    ]
    roots += [n for n in (f"{prefix}.pooler",) if n in modules]
    head = tuple(
        n
        for n, m in modules.items()
        if any(n == r or n.startswith(r + ".") for r in roots)
        and any(True for _ in m.parameters(recurse=False))
    )

    # an LM scored on label words (edgetune.methods.label_words) classifies through its LM
    # head
    label_words = isinstance(getattr(model, "word_ids", None), torch.Tensor)
    classify = type(model).__name__.endswith("ForSequenceClassification") or label_words
    config: Any = model.config  # a transformers config (nn.Module types it Tensor | Module)
    n_out = config.vocab_size if label_words or not classify else config.num_labels
    output = tuple(
        n for n in head if is_linear(modules[n]) and linear_shape(modules[n])[0] == n_out
    )
    if head and not output:
        raise EdgetuneError(f"could not find the output layer of the {family} head")

    if layout.embeddings == "module":
        emb = tuple(n for n in (f"{prefix}.embeddings", "embeddings") if n in modules)[:1]
    elif layout.embeddings == "stack":
        emb = tuple(
            n
            for n, _ in model.named_modules()
            if n.endswith("embed_tokens") and ("encoder" in n or "decoder" in n)
        )
    else:
        inp = model.get_input_embeddings()  # type: ignore[operator]  # transformers' method
        emb = tuple(n for n, m in modules.items() if m is inp)[:1]
    causal = layout.decoder and not classify
    task = "classify" if classify else "lm"
    return Anatomy(family, task, causal, tuple(blocks), units, head, output, emb, label_words)


# -- Linear-like modules (nn.Linear and GPT-2's Conv1D) -----------------------------------


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's transformers.pytorch_utils.Conv1D: y = x @ W + b with W of shape (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def inner_model(model: nn.Module) -> Any:
    """The transformers model inside a PEFT wrapper (the model itself when there is none)."""
    peft: Any = model
    return peft.get_base_model() if hasattr(model, "get_base_model") else model


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` in `model` at the dotted `name` (replacing what is there)."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def is_linear(module: nn.Module) -> bool:
    """A Linear, a GPT-2 Conv1D, or a Linear held in a low-precision format (`QuantLinear`)."""
    return isinstance(module, nn.Linear | QuantLinear) or is_conv1d(module)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear-like module."""
    if isinstance(module, QuantLinear):
        return module.out_features, module.in_features
    w = cast(torch.Tensor, module.weight)
    return (w.shape[1], w.shape[0]) if is_conv1d(module) else (w.shape[0], w.shape[1])


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight in nn.Linear layout (out, in); a view for Conv1D."""
    w = cast(torch.Tensor, module.weight)
    return w.t() if is_conv1d(module) else w
