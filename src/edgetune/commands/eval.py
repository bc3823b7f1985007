"""`edgetune eval`: a model's metrics on one split of a data set, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgetune.commands import err, out
from edgetune.errors import EdgetuneError

Opt = typer.Option
SPLITS = ("train", "validation", "test")


def eval_(
    model: Annotated[str, typer.Argument(help="A run folder, model folder or registry name.")],
    data: Annotated[str | None, Opt(help="Data set (default: the run's).")] = None,
    task: Annotated[str | None, Opt(help="Task, for data files.")] = None,
    split: Annotated[str, Opt(help="train, validation or test.")] = "test",
    seq_len: Annotated[int | None, Opt(help="Tokens per example (default: the run's).")] = None,
    samples: Annotated[int | None, Opt(help="Evaluate only the first N examples.")] = None,
) -> None:
    """Evaluate a model on a data split and print its metrics as JSON.

    A run folder is evaluated as it was trained (its config.yaml: data, sequence length,
    weights format, compute dtype), on its saved model: for a LoRA run over a held base
    (model.weights), its adapter over that base.

    Examples:

        edgetune eval runs/demo

        edgetune eval runs/demo --split validation

        edgetune eval minilm-l6 --data reuters-r8 --samples 200
    """
    from edgetune.config import load_config
    from edgetune.evaluate import evaluate
    from edgetune.pipeline import load

    if split not in SPLITS:
        raise EdgetuneError(f"unknown split {split!r}; use train, validation or test")
    if samples is not None and samples < 1:
        raise EdgetuneError(f"--samples must be at least 1, got {samples}")
    run = Path(model)
    changes: dict[str, Any] = {"model.name": model, "model.random_init": False}
    base = None
    if (run / "config.yaml").is_file() and (run / "model").is_dir():
        base = run / "config.yaml"
        if (run / "model" / "adapter_config.json").is_file():  # an adapter over the run's base
            del changes["model.name"], changes["model.random_init"]
            changes["model.adapter"] = str(run / "model")
        else:
            changes["model.name"] = str(run / "model")
    if data is not None:
        changes.update({"data.name": data, "data.task": task})
    elif task is not None:
        changes["data.task"] = task
    if seq_len is not None:
        changes["data.seq_len"] = seq_len
    session = load(load_config(base, changes), splits=(split,))
    for line in session.data.cut_lines(session.cfg.data.seq_len):  # cuts are never silent
        err.print(line, highlight=False, soft_wrap=True)
    examples = session.data.splits[split]
    if samples:
        session.data.splits[split] = examples[:samples]
    t = session.cfg.train
    with session.placement.compute():
        metrics = evaluate(session.model, session.data, split, session.pad_id,
                           t.eval_batch_size, tokenizer=session.loaded.tokenizer,
                           chunked=t.chunked_loss)  # fmt: skip
    out.print_json(json.dumps(metrics))
