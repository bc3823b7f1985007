"""`edgetune bench methods` and `edgetune bench hardware`: thin wrappers over
`edgetune.bench.methods` (the same code as `benchmarks/methods.py`).

`bench_app` is registered by `edgetune.cli` as `edgetune bench`. Bad input raises
`EdgetuneError` (the CLI prints it on one line and exits 1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from edgetune.bench.methods import (
    Setup,
    Variant,
    compare,
    minilm_variants,
    smollm_variants,
)
from edgetune.bench.methods import hardware as hardware_rows
from edgetune.bench.tables import hardware_table, methods_table, write_outputs
from edgetune.errors import EdgetuneError

bench_app = typer.Typer(
    help="Measure learning methods side by side, and this machine's peak.", no_args_is_help=True
)
PRESETS = {
    "minilm": Setup("minilm-l6", "reuters-r8", batch=16, seq=128, steps=100, eval_samples=500),
    # brown's whole test split: 513 blocks of 128 tokens (an lm's eval_samples counts blocks)
    "smollm2": Setup("smollm2-135m", "brown", batch=4, seq=128, steps=30, eval_samples=1000),
}


def _setup(preset: str, model: str | None, data: str | None, task: str | None, **kw) -> Setup:
    if preset not in PRESETS:
        raise EdgetuneError(f"unknown preset {preset!r}; choose {', '.join(PRESETS)}")
    base = PRESETS[preset].__dict__ | {k: v for k, v in kw.items() if v is not None}
    for key in ("batch", "seq", "steps", "eval_samples", "rounds", "threads"):
        if base[key] < 1:
            raise EdgetuneError(f"--{key.replace('_', '-')} must be at least 1, got {base[key]}")
    return Setup(**{**base, "model": model or base["model"], "data": data or base["data"],
                    "task": task or base["task"]})  # fmt: skip


def _variants(preset: str, schemes: str, only: str | None) -> list[Variant]:
    variants = minilm_variants(schemes.split(",")) if preset == "minilm" else smollm_variants()
    if only:
        keep = [s.strip() for s in only.split(",")]
        unknown = set(keep) - {v.label for v in variants}
        if unknown:
            known = ", ".join(v.label for v in variants)
            raise EdgetuneError(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {known}")
        variants = [v for v in variants if v.label in keep]
    return variants


def _log(message: str) -> None:
    typer.echo(message, err=True)


@bench_app.command()
def methods(
    preset: str = typer.Option("minilm", help="minilm (Reuters-R8) or smollm2 (brown)."),
    model: str | None = typer.Option(None, help="Override the preset's model."),
    data: str | None = typer.Option(None, help="Override the preset's data set."),
    task: str | None = typer.Option(None, help="Task of a data file (classify, lm, ...)."),
    batch: int | None = typer.Option(None, help="Sequences per step."),
    seq: int | None = typer.Option(None, help="Tokens per sequence."),
    steps: int | None = typer.Option(None, help="Optimizer steps of every accuracy run."),
    eval_samples: int | None = typer.Option(None, help="Test rows scored after training."),
    rounds: int = typer.Option(3, help="Timed step / forward rounds per method."),
    threads: int = typer.Option(2, help="torch threads per worker."),
    schemes: str = typer.Option("last-1,last-2,qkv-ffn1-2,bias-only", help="Sparse schemes."),
    only: str | None = typer.Option(None, help="Comma-separated variant labels to run."),
    accuracy: bool = typer.Option(True, help="Run a finetune per method for the test metric."),
    out: Path = typer.Option(Path("bench"), help="Folder for the JSON, table and PNG."),
) -> None:
    """Every method on the same model, data, batch and length: test metric, step time against
    a forward pass alone, peak RSS against inference, saved bytes, FLOPs, trainable parameters."""
    setup = _setup(preset, model, data, task, batch=batch, seq=seq, steps=steps,
                   eval_samples=eval_samples, rounds=rounds, threads=threads)  # fmt: skip
    summary = compare(
        setup, _variants(preset, schemes, only), accuracy=None if accuracy else set(), log=_log
    )
    table = methods_table(summary)
    for p in write_outputs(summary, out, f"methods-{preset}", table):
        _log(f"wrote {p}")
    typer.echo(table)


@bench_app.command()
def hardware(
    preset: str = typer.Option("minilm", help="minilm or smollm2: the training steps to time."),
    model: str | None = typer.Option(None, help="Override the preset's model."),
    data: str | None = typer.Option(None, help="Override the preset's data set."),
    task: str | None = typer.Option(None, help="Task of a data file (classify, lm, ...)."),
    batch: int | None = typer.Option(None, help="Sequences per step."),
    seq: int | None = typer.Option(None, help="Tokens per sequence."),
    rounds: int = typer.Option(3, help="Timed steps per method."),
    threads: int = typer.Option(2, help="torch threads for the GEMM and the steps."),
    gemm_n: int = typer.Option(1024, help="GEMM size n (n x n times n x n)."),
    kernel_sides: str = typer.Option(
        "16,64,256,1024,4096", help="Side lengths of the step-time model's GEMM grid."
    ),
    kernel_sizes: int = typer.Option(
        9, min=2, help="Sizes timed per element-wise, draw and AdamW table (from the smallest)."
    ),
    only: str | None = typer.Option(None, help="Comma-separated variant labels to time."),
    steps_from: Path | None = typer.Option(
        None, help="Take the step measurements from a `bench methods` JSON instead."
    ),
    out: Path = typer.Option(Path("bench"), help="Folder for hardware.json and hardware.md."),
) -> None:
    """Measure this machine's GEMM peak per dtype and time its kernels (a GEMM grid, element-
    wise kernels, draws, the AdamW step: saved for the `this-machine` profile and its step-time
    model), then per method: achieved FLOP/s, MFU, tokens/s, and predicted vs measured step
    time. A minute or two of measuring before the steps."""
    import torch

    from edgetune.io import atomic_write_text
    from edgetune.measure.gemm import measure_this_machine
    from edgetune.measure.runtime import runtime

    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    try:
        sides = tuple(sorted({int(v) for v in kernel_sides.split(",")}))
    except ValueError:
        raise EdgetuneError(
            f"--kernel-sides: comma-separated integers, got {kernel_sides!r}"
        ) from None
    if len(sides) < 2 or sides[0] < 1:
        raise EdgetuneError(f"--kernel-sides: at least two positive sides, got {kernel_sides!r}")
    gemm = measure_this_machine(n=gemm_n, sides=sides, sizes=kernel_sizes)
    rt = runtime(fresh=True)
    assert rt is not None  # measured
    _log(f"runtime: {rt.bytes / 2**20:,.0f} MiB resident after the imports and a first step "
         f"({rt.source})")  # fmt: skip
    if steps_from is not None:
        if not steps_from.is_file():
            raise EdgetuneError(f"--steps-from: no file {steps_from}")
        try:
            summary = json.loads(steps_from.read_text())
        except json.JSONDecodeError:
            raise EdgetuneError(f"--steps-from: {steps_from} is not JSON") from None
    else:
        setup = _setup(preset, model, data, task, batch=batch, seq=seq, rounds=rounds,
                       threads=threads)  # fmt: skip
        summary = compare(setup, _variants(preset, "qkv-ffn1-2", only), accuracy=set(), log=_log)
    hw = hardware_rows(summary, gemm)
    hw["load"] = [load_before, os.getloadavg()[0]]
    text = hardware_table(hw)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "hardware.json", json.dumps(hw, indent=1))
    atomic_write_text(out / "hardware.md", text)
    _log(f"wrote {out / 'hardware.json'} and {out / 'hardware.md'}")
    typer.echo(text)
