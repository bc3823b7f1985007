"""`edgetune finetune`: fine-tune a model; flags and `section.key=value` settings over a YAML
config (or, with `--resume`, over the run folder's own config.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetune.commands import err, out, overrides
from edgetune.errors import EdgetuneError

Opt = typer.Option


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
        bool,
        Opt(help="Continue the run in --out from its newest checkpoint, with its own config."),
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
        str | None,
        Opt(help="Update scheme of a method that has one (sparse): built-in name or YAML file."),
    ] = None,
    budget: Annotated[
        str | None,
        Opt(help="Memory a step may use, weights included (e.g. 256MB); refuse beyond it."),
    ] = None,
    device: Annotated[
        str | None, Opt(help="Device profile (see `edgetune devices`): budget and latency.")
    ] = None,
    weights: Annotated[
        str | None,
        Opt(help="Format of the frozen base: fp32, bf16, fp16, q8_0, q4_0, q4_1, int8, gguf."),
    ] = None,
    dtype: Annotated[str | None, Opt(help="Compute dtype: fp32, bf16, fp16 or auto.")] = None,
    merge: Annotated[
        bool | None,
        Opt(
            "--merge/--no-merge",
            help="lora: also save the adapters merged into the base (model/; the default), "
            "or the adapter (adapter/) only.",
        ),
    ] = None,
) -> None:
    """Fine-tune a model. Extra `section.key=value` arguments override the config.

    The forecast of one step (its peak memory, FLOPs, and time on `--device`) is printed before
    training starts; a run over `--budget` is refused, naming what would fit.

    Examples:

        edgetune finetune --config configs/demo.yaml

        edgetune finetune --model minilm-l6 --data reuters-r8 --max-steps 60 --out runs/r8

        edgetune finetune --model smollm2-135m --data brown train.lr=1e-4 data.seq_len=256

        edgetune finetune --model minilm-l6 --data mails.jsonl --task classify --label-column tag

        edgetune finetune --out runs/r8 --resume --max-steps 120

        edgetune finetune --model smollm2-135m --data brown --method sparse --scheme last-2

        edgetune finetune --config configs/demo.yaml --device rpi4 --budget 256MB

        edgetune finetune --model smollm2-135m --data brown --method lora --weights gguf
        train.checkpointing=true train.chunked_loss=true

        edgetune finetune --model smollm2-135m --data instructions --method lora --no-merge
    """
    from edgetune.config import load_config

    flags = {
        "model.name": model, "model.random_init": random_init or None, "data.name": data,
        "data.task": task, "train.method": method, "out": out_dir, "train.max_steps": max_steps,
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr,
        "data.seq_len": seq_len, "data.text_column": text_column,
        "data.label_column": label_column, "data.target_column": target_column,
        "train.budget": budget, "train.device": device, "model.weights": weights,
        "train.dtype": dtype, "train.merge": merge,
    }  # fmt: skip
    settings = overrides(flags, ctx.args, "finetune")
    if resume and config is None and out_dir and (Path(out_dir) / "config.yaml").is_file():
        config = Path(out_dir) / "config.yaml"  # the run's own settings
    cfg = load_config(config, settings)
    if scheme is not None:  # the scheme option of the run's method
        option = cfg.spec.scheme_option
        if option is None:
            raise EdgetuneError(f"--scheme: method {cfg.train.method} has no update scheme")
        cfg = cfg.with_changes({f"method.{option}": scheme})
    from edgetune.train import finetune as run

    result = run(cfg, resume=resume, console=err)
    out.print(f"run folder: {result.out}")
