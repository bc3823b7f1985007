"""The model an export writes: a run folder's, a model folder's or a registry model's, as one
fp32 transformers model, and held-out token sequences to check the export on.

The run is read back the one way every command reads it (`edgetune.trained`), with its base in
fp32: a run that saved only its adapter (LoRA over a held base, or `train.merge` off) has the
adapter merged into the base's fp32 weights (a GGUF base dequantized), so every format starts
from the same plain model. A classifier run is loaded as `eval` loads it (through the pipeline,
its labels read from its data set), with its classification head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgetune.config import DataConfig, RunConfig, load_config
from edgetune.errors import EdgetuneError
from edgetune.families import DECODER
from edgetune.models.bundled import bundled_file
from edgetune.trained import adapter_folder, load_trained, run_task, trained_config


@dataclass
class RunModel:
    name: str  # for file names and metadata
    model: PreTrainedModel  # fp32, eval mode (a LoRA adapter merged)
    tokenizer: PreTrainedTokenizerBase
    task: str  # the task it was trained for (lm, chat, summarize, classify)
    source_gguf: Path | None  # the GGUF file its base weights came from, if any
    adapter: Path | None  # the run's PEFT adapter folder, if it saved one
    cfg: RunConfig | None  # the run's config (None: a model folder or registry name)
    kind: str = DECODER  # encoder | decoder | encoder-decoder (`edgetune.families`)


def open_model(where: str) -> RunModel:
    """The model of a run folder, a model folder or a registry name. A run's LoRA adapter
    (`adapter/`) is kept as `adapter` too, for formats that write adapters. A classifier run
    comes with its head; anything else is loaded as a causal LM."""
    path = Path(where)
    cfg, adapter, task = None, None, "lm"
    if (path / "config.yaml").is_file():
        cfg = load_config(path / "config.yaml")
        task = run_task(cfg) or "lm"
        adapter = adapter_folder(path)
        name = path.resolve().name
    else:
        name = path.name if path.exists() else where
    if task == "classify":
        from edgetune.pipeline import load

        # as `eval` loads it: the number of labels (and their names) from its data set
        loaded = load(trained_config(where, {"model.weights": "fp32"}), splits=()).loaded
    else:
        loaded = load_trained(where, "lm", weights="fp32")
    net = cast(PreTrainedModel, loaded.model.float().eval())
    return RunModel(name, net, loaded.tokenizer, task,
                    _source_gguf(cfg.model.name if cfg else where), adapter, cfg,
                    loaded.kind)  # fmt: skip


def _source_gguf(name: str) -> Path | None:
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        return path
    return bundled_file(name)


def held_out(model: RunModel, positions: int, data: str | None = None,
             seq_len: int | None = None) -> list[np.ndarray]:  # fmt: skip
    """Token sequences from the test split of `data` (default: the run's data set, else the
    bundled `instructions`): for a causal LM, texts holding at least `positions` next-token
    predictions; for a classifier, every text of the split (cut to the run's `seq_len`)."""
    from edgetune.data.load import load_data
    from edgetune.data.tasks import tokenize

    base = model.cfg.data if model.cfg is not None else DataConfig(name="instructions")
    if data is not None:
        base = replace(base, name=data, task=None)
    cfg = replace(base, eval_samples=None, seq_len=seq_len or base.seq_len)
    text = load_data(cfg)
    classifier = model.task == "classify"
    if classifier != (text.task == "classify"):
        want = "labelled texts (a classification data set)" if classifier else "text"
        raise EdgetuneError(f"{cfg.name} holds {text.task} data; {model.name} is checked on "
                            f"{want}: give --data")  # fmt: skip
    kind = model.kind if classifier else DECODER
    examples = tokenize(text, model.tokenizer, cfg, kind, ("test",)).splits["test"]
    if classifier:
        return [np.asarray(example["input_ids"]) for example in examples]
    sequences, total = [], 0
    for example in examples:
        ids = np.asarray(example["input_ids"])
        if len(ids) < 2:
            continue
        sequences.append(ids)
        total += len(ids) - 1
        if total >= positions:
            return sequences
    raise EdgetuneError(
        f"the test split of {cfg.name} holds {total} positions, fewer than {positions}"
    )
