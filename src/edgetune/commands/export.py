"""`edgetune export`: write a trained model in a device runtime's format (`edgetune.export`),
and with --check run it in that runtime against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetune.commands import out, wide_console
from edgetune.errors import EdgetuneError

Opt = typer.Option


def export(
    model: Annotated[str, typer.Argument(help="A run folder, model folder or registry name.")],
    fmt: Annotated[
        str,
        Opt(
            "--format",
            help="gguf (llama.cpp), onnx (ONNX Runtime), or delta (a sparse run's "
            "trained rows over its base).",
        ),
    ] = "gguf",
    quant: Annotated[
        str | None,
        Opt(
            help="gguf: f16 (default), q8_0, or source (the base GGUF file's own types); "
            "onnx and delta: fp32."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None, Opt("--out", help="Folder to write to (default: RUN/export).")
    ] = None,
    check: Annotated[
        bool, Opt("--check", help="Run the export in its runtime against PyTorch.")
    ] = False,
    positions: Annotated[
        int, Opt(help="Held-out next-token positions --check compares (a causal LM).")
    ] = 1024,
    data: Annotated[
        str | None, Opt(help="Held-out text for --check (default: the run's test split).")
    ] = None,
) -> None:
    """Export a model for a device runtime, and optionally check it there.

    A LoRA run's adapter is merged into its base first (gguf also writes the adapter on its
    own). --check runs the written file in its runtime (llama.cpp for gguf, ONNX Runtime for
    onnx; `pip install 'edgetune[export]'`) and PyTorch on the same weights over held-out text
    and prints the figures: for a causal LM top-1 next-token agreement, both perplexities and
    the largest logit difference (exits 1 below 99 % agreement or beyond 1 % perplexity); for
    a classifier (onnx) the labels equal and the largest logit difference (exits 1 beyond
    1e-4), over its whole test split. For delta, --check applies the delta to the base and
    compares it with the run's model bit for bit.

    Examples:

        edgetune export runs/demo-lora --format gguf

        edgetune export runs/demo-lora --format gguf --quant q8_0 --check

        edgetune export smollm2-135m --quant source --out exports/

        edgetune export runs/demo-lora --format onnx --check

        edgetune export runs/r8-minilm --format onnx --check

        edgetune export runs/sparse --format delta --check
    """
    from edgetune.export import FORMATS
    from edgetune.export import export as write
    from edgetune.export.source import held_out, open_model

    if fmt not in FORMATS:
        raise EdgetuneError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if positions < 1:
        raise EdgetuneError(f"--positions must be at least 1, got {positions}")
    run = Path(model)
    if out_dir is None:
        if not (run / "config.yaml").is_file():
            raise EdgetuneError(f"{model} is not a run folder: say where to write with --out")
        out_dir = run / "export"
    loaded = open_model(model)
    sequences = None
    if check:
        sequences = held_out(loaded, positions, data) if FORMATS[fmt].held_out else []
    result = write(loaded, fmt, out_dir, quant, sequences)
    for f in result.files:
        out.print(f"wrote {f} ({f.stat().st_size / 2**20:.1f} MB)", highlight=False)
    if not check:
        return
    from rich.table import Table

    table = Table("figure", "value", title=f"{fmt} check")
    for name, value in result.figures.items():
        table.add_row(name, f"{value:.6g}")
    wide_console().print(table)
    if result.failures:
        raise EdgetuneError("check failed: " + "; ".join(result.failures))
    out.print("check passed", highlight=False)
