"""Load a model and its tokenizer for a task, from a registry name, a local folder or file,
or a hub id; or build it from the spec with random weights (`random_init`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from edgetune.errors import EdgetuneError
from edgetune.families import DECODER, ENCODER, ENCODER_DECODER
from edgetune.models.bundled import bundled_available, bundled_path
from edgetune.models.registry import SPECS

TASKS = ("classify", "lm", "summarize", "chat")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    kind: str  # encoder | decoder | encoder-decoder
    source: str  # bundled | local | hub | random-init


def load_model(
    name: str,
    task: str,
    *,
    num_labels: int | None = None,
    random_init: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Resolve `name` (registry name, local folder, .gguf file or hub id) for `task`.

    Newly created weights (a classification head, or everything with random_init) are drawn
    from `seed`, so a run can be rebuilt exactly on resume.
    """
    if task not in TASKS:
        raise EdgetuneError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "classify" and not num_labels:
        raise EdgetuneError("classification needs the number of labels")
    spec = SPECS.get(name)
    if random_init:
        if spec is None:
            raise EdgetuneError(f"--random-init needs a registry model name, got {name!r}")
        tokenizer = _tokenizer(bundled_path(spec.tokenizer_from))
        config = spec.config()
        if getattr(config, "vocab_size", 0) < len(tokenizer):
            config.vocab_size = len(tokenizer)  # the stand-in tokenizer must fit the embedding
        torch.manual_seed(seed)
        return LoadedModel(
            _from_config(config, task, num_labels, tokenizer), tokenizer, spec.kind, "random-init"
        )

    if spec is not None and bundled_available(name):
        where, source = str(bundled_path(name)), "bundled"
    elif spec is not None and spec.hub_id is None:
        raise EdgetuneError(
            f"{name} has no published weights: use --random-init, or pass a local folder"
        )
    elif spec is not None and spec.hub_id is not None:  # (a spec without one was refused above)
        where, source = spec.hub_id, "hub"
    elif Path(name).exists():
        where, source = name, "local"
    else:
        where, source = name, "hub"

    gguf = None
    if source == "local" and Path(where).is_file():
        if Path(where).suffix != ".gguf":
            raise EdgetuneError(f"{where} is a file but not a .gguf model; pass a folder")
        gguf, where = Path(where).name, str(Path(where).parent)
    elif source == "local" and not (Path(where) / "config.json").exists():
        raise EdgetuneError(f"{where} is not a model folder (no config.json in it)")

    try:
        config = AutoConfig.from_pretrained(where, gguf_file=gguf)
        tokenizer = _tokenizer(where, gguf)
    except OSError as e:
        hint = (
            "it is not a registry name or a local path, and the hub could not be reached"
            if spec is None
            else f"its weights are not bundled and the hub ({where}) could not be reached; "
            "use --random-init or a local folder"
        )
        raise EdgetuneError(f"cannot load model {name!r}: {hint} ({_first_line(e)})") from None
    except ValueError as e:
        raise EdgetuneError(f"cannot load model {name!r}: {_first_line(e)}") from None
    kind = spec.kind if spec else _kind_of(config)
    torch.manual_seed(seed)
    model = _from_pretrained(where, gguf, config, task, num_labels, tokenizer)
    return LoadedModel(model, tokenizer, kind, source)


def _tokenizer(where: str | Path, gguf: str | None = None) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _kind_of(config: PretrainedConfig) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    archs = " ".join(getattr(config, "architectures", None) or [])
    return DECODER if "CausalLM" in archs or config.model_type in ("llama", "gpt2") else ENCODER


def _auto_class(config: PretrainedConfig, task: str):
    if task == "classify":
        return AutoModelForSequenceClassification
    if getattr(config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLM
    if _kind_of(config) == ENCODER:
        raise EdgetuneError(
            f"task {task!r} generates text and needs a decoder or encoder-decoder model, "
            f"not an encoder ({config.model_type})"
        )
    return AutoModelForCausalLM


def _prepare(config: PretrainedConfig, task: str, num_labels, tokenizer) -> None:
    if task == "classify":
        config.num_labels = num_labels
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id


def _from_config(config, task, num_labels, tokenizer) -> nn.Module:
    _prepare(config, task, num_labels, tokenizer)
    return _auto_class(config, task).from_config(config)


def _from_pretrained(where, gguf, config, task, num_labels, tokenizer) -> nn.Module:
    _prepare(config, task, num_labels, tokenizer)
    try:
        return _auto_class(config, task).from_pretrained(where, gguf_file=gguf, config=config)
    except (OSError, ValueError) as e:
        raise EdgetuneError(f"cannot load weights from {where}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
