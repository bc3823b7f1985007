"""`edgetune eval`: a model's metrics on one split of a data set, as JSON."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from edgetune.commands import err, out
from edgetune.errors import EdgetuneError

Opt = typer.Option
SPLITS = ("train", "validation", "test")


def eval_(
    model: Annotated[
        str, typer.Argument(help="A run folder, adapter folder, model folder or registry name.")
    ],
    data: Annotated[str | None, Opt(help="Data set (default: the run's).")] = None,
    task: Annotated[str | None, Opt(help="Task, for data files.")] = None,
    split: Annotated[str, Opt(help="train, validation or test.")] = "test",
    seq_len: Annotated[int | None, Opt(help="Tokens per example (default: the run's).")] = None,
    samples: Annotated[int | None, Opt(help="Evaluate only the first N examples.")] = None,
) -> None:
    """Evaluate a model on a data split and print its metrics as JSON.

    A run folder is evaluated as it was trained (its config.yaml: data, sequence length,
    weights format, compute dtype), on its merged model (model/) where it saved one, else on
    its adapter (adapter/) over the run's base, held as the run held it. An adapter folder
    alone is evaluated over the base its adapter_config.json names.

    Examples:

        edgetune eval runs/demo

        edgetune eval runs/demo --split validation

        edgetune eval runs/chat/adapter --data instructions

        edgetune eval minilm-l6 --data reuters-r8 --samples 200
    """
    from edgetune.evaluate import evaluate
    from edgetune.pipeline import load
    from edgetune.trained import trained_config

    if split not in SPLITS:
        raise EdgetuneError(f"unknown split {split!r}; use train, validation or test")
    if samples is not None and samples < 1:
        raise EdgetuneError(f"--samples must be at least 1, got {samples}")
    changes: dict[str, Any] = {}
    if data is not None:
        changes.update({"data.name": data, "data.task": task})
    elif task is not None:
        changes["data.task"] = task
    if seq_len is not None:
        changes["data.seq_len"] = seq_len
    session = load(trained_config(model, changes), splits=(split,))
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
