"""Load a model and its tokenizer for a task, from a registry name, a local folder or file,
or a hub id; or build it from the spec with random weights (`random_init`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from edgetune.errors import EdgetuneError
from edgetune.families import DECODER, ENCODER, ENCODER_DECODER, FAMILIES, MODEL_TYPES
from edgetune.models.bundled import bundled_available, bundled_file, bundled_path, gguf_meta
from edgetune.models.registry import SPECS
from edgetune.paths import cache_dir

TASKS = ("classify", "lm", "summarize", "chat")
WORDS = "label-words"  # a classify task read through the LM head (`load_model(label_words=)`)


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
    weights: str = "fp32",
    adapter: str | None = None,
    label_words: bool = False,
) -> LoadedModel:
    """Resolve `name` (registry name, local folder, .gguf file or hub id) for `task`, its
    frozen base held in `weights` (`edgetune.precision`; fp32: a plain transformers model).

    Newly created weights (a classification head, or everything with random_init) are drawn
    from `seed`, so a run can be rebuilt exactly on resume. `adapter`: a PEFT adapter folder
    applied over the model (`apply_adapter`). `label_words`: a classification task read
    through the LM head, so the model is loaded with it (a causal LM, or an encoder as a masked
    LM) and without a classifier head.
    """
    if label_words and task != "classify":
        raise EdgetuneError("label words classify: they need the classify task")
    loaded = _load(name, WORDS if label_words else task, num_labels, random_init, seed, weights)
    if adapter is not None:
        loaded.model = apply_adapter(loaded.model, Path(adapter))
    return loaded


def apply_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """`model` with the PEFT adapter in `folder`: merged into an fp32 base (a plain model
    again), kept as a PEFT model over a held base (merging would need its fp32 weights)."""
    from peft import PeftConfig, PeftModel
    from peft.tuners.lora import Linear as LoraLinear

    from edgetune.models.quantized import QuantLinear, is_held

    if not (folder / "adapter_config.json").is_file():
        raise EdgetuneError(f"{folder} is not a PEFT adapter (no adapter_config.json in it)")
    config = PeftConfig.from_pretrained(str(folder))
    held = is_held(model)
    if held and hasattr(config, "_register_custom_module"):
        config._register_custom_module({QuantLinear: LoraLinear})
    try:
        with warnings.catch_warnings():  # PEFT warns of every layer type it does not ship
            warnings.filterwarnings("ignore", "Unsupported layer type", UserWarning)
            adapted = PeftModel.from_pretrained(model, str(folder), config=config)
    except (ValueError, RuntimeError, KeyError) as e:
        raise EdgetuneError(f"cannot apply the adapter in {folder}: {_first_line(e)}") from None
    return adapted if held else adapted.merge_and_unload()


def _load(name, task, num_labels, random_init, seed, weights) -> LoadedModel:
    if task not in (*TASKS, WORDS):
        raise EdgetuneError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "classify" and not num_labels:
        raise EdgetuneError("classification needs the number of labels")
    spec = SPECS.get(name)
    if weights != "fp32":
        return _load_held(name, task, num_labels, random_init, seed, weights)
    if random_init:
        config, tokenizer, kind = _random_init(name, spec)
        torch.manual_seed(seed)
        return LoadedModel(
            _from_config(config, task, num_labels, tokenizer), tokenizer, kind, "random-init"
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


def _random_init(name: str, spec) -> tuple[PretrainedConfig, PreTrainedTokenizerBase, str]:
    """The registry spec's config, its stand-in tokenizer and its kind, for random weights."""
    if spec is None:
        raise EdgetuneError(f"--random-init needs a registry model name, got {name!r}")
    tokenizer = _tokenizer(bundled_path(spec.tokenizer_from))
    config = spec.config()
    if getattr(config, "vocab_size", 0) < len(tokenizer):
        config.vocab_size = len(tokenizer)  # the stand-in tokenizer must fit the embedding
    return config, tokenizer, spec.kind


def _load_held(name, task, num_labels, random_init, seed, fmt) -> LoadedModel:
    """A model whose frozen base is held in `fmt`, built module by module from its source
    (`edgetune.models.lowbit`): never the whole model in fp32."""
    from accelerate import init_empty_weights

    from edgetune.models.lowbit import GGUFSource, SafetensorsSource, Source, materialize

    spec = SPECS.get(name)
    source: Source | None = None
    folder = None
    gguf_file = bundled_file(name) if spec is not None else None
    if random_init:
        config, tokenizer, kind = _random_init(name, spec)
        origin = "random-init"
    elif gguf_file is not None or (Path(name).is_file() and Path(name).suffix == ".gguf"):
        path = gguf_file or Path(name)
        meta = (cache_dir() / "models" / f"{name}-gguf-meta") if gguf_file else path.parent
        where, gguf = (str(gguf_meta(path, meta)), None) if gguf_file else (str(meta), path.name)
        config = AutoConfig.from_pretrained(where, gguf_file=gguf)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        tokenizer = _tokenizer(where, gguf)
        source = GGUFSource(path, config)
        kind = spec.kind if spec else _kind_of(config)
        origin = "bundled" if gguf_file else "local"
    else:
        if fmt == "gguf":
            raise EdgetuneError(
                f"model.weights=gguf keeps a GGUF file's own blocks, and {name} is not a GGUF "
                "file: give a .gguf model, or quantize with q8_0, q4_0, q4_1 or int8"
            )
        folder = _folder(name, spec)
        config = AutoConfig.from_pretrained(folder)
        tokenizer = _tokenizer(folder)
        kind, origin = spec.kind if spec else _kind_of(config), "bundled" if spec else "local"
    if fmt == "gguf" and source is None:
        raise EdgetuneError("model.weights=gguf needs a GGUF model file, not --random-init")
    _prepare(config, task, num_labels, tokenizer)
    with init_empty_weights(include_buffers=False):
        model = _auto_class(config, task).from_config(config)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if folder is not None:
        source = SafetensorsSource(Path(folder), getattr(model, "base_model_prefix", ""))
    materialize(model, fmt, source, seed)
    return LoadedModel(model.eval(), tokenizer, kind, origin)


def _folder(name: str, spec) -> str:
    """The local folder of a model that is not a GGUF file: bundled, given, or from the hub."""
    if spec is not None and bundled_available(name):
        return str(bundled_path(name))
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise EdgetuneError(f"{name} is not a model folder (no config.json in it)")
        return name
    hub = spec.hub_id if spec is not None else name
    if hub is None:
        raise EdgetuneError(f"{name} has no published weights: use --random-init, or pass a "
                            "local folder")  # fmt: skip
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(hub, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                      "*.txt"])  # fmt: skip
    except Exception as e:  # the hub's errors are many; all mean the same here
        raise EdgetuneError(f"cannot load model {name!r}: the hub ({hub}) could not be "
                            f"reached ({_first_line(e)})") from None  # fmt: skip


def _tokenizer(where: str | Path, gguf: str | None = None) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _kind_of(config: PretrainedConfig) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    archs = " ".join(getattr(config, "architectures", None) or [])
    family = FAMILIES.get(MODEL_TYPES.get(config.model_type, ""))
    return DECODER if "CausalLM" in archs or (family and family.decoder) else ENCODER


def _auto_class(config: PretrainedConfig, task: str):
    if task == "classify":
        return AutoModelForSequenceClassification
    if task == WORDS and _kind_of(config) == ENCODER:
        return AutoModelForMaskedLM
    if task == WORDS and _kind_of(config) == ENCODER_DECODER:
        raise EdgetuneError("label words need a causal or masked LM, not an encoder-decoder")
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
