"""`edgetune cost` and `edgetune devices`: the cost model's forecast as a table, JSON or plot.

Plain functions for typer; `edgetune.cli` registers them with `app.command()(cost)`. Bad input
raises `EdgetuneError` (the CLI prints it on one line and exits 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgetune.cost import (
    METHODS,
    NAMED_SHAPES,
    ModelShape,
    cost_rows,
    device_names,
    load_device,
    not_measured_note,
    shape_from_config,
)
from edgetune.cost.table import Row, human, seconds
from edgetune.errors import EdgetuneError
from edgetune.plan.scheme import UpdateScheme

DTYPES = ("fp32", "bf16", "fp16", "int8", "mixed")


def model_shape(name: str) -> ModelShape:
    """A registry model (its transformers config, no weights) or a cost-only named shape."""
    if name in NAMED_SHAPES:
        return NAMED_SHAPES[name]
    from edgetune.models.registry import SPECS  # imports transformers: only here

    if name not in SPECS:
        known = ", ".join(sorted([*SPECS, *NAMED_SHAPES]))
        raise EdgetuneError(f"unknown model {name!r}; known: {known}")
    return shape_from_config(SPECS[name].config().to_dict(), name)


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgetuneError(f"--{what} takes comma-separated whole numbers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise EdgetuneError(f"--{what} needs positive numbers, got {text!r}")
    return vals


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.0f}%"


def cost(
    model: str = typer.Option("distilbert", help="Model name from the registry, or alexatm-20b."),
    method: str = typer.Option(
        "backprop,pepita,mempepita", help=f"Comma-separated methods: {', '.join(METHODS)}."
    ),
    seq: str = typer.Option("32,128,512,2048", help="Comma-separated context lengths (tokens)."),
    device: str | None = typer.Option(None, help="Device profile for fit and latency."),
    batch: int = typer.Option(1, help="Sequences per step."),
    dtype: str = typer.Option("fp32", help=f"Number format: {', '.join(DTYPES)}."),
    head: str = typer.Option("lm", help="Task head: lm, classifier or none."),
    tgt_seq: int = typer.Option(0, help="Target length of an encoder-decoder (0: same as seq)."),
    optimizer: str = typer.Option("adamw", help="adamw, sgd or sgd-momentum."),
    scheme: Path | None = typer.Option(None, help="Update scheme YAML for the sparse method."),
    lora_rank: int = typer.Option(8, help="LoRA rank for the lora method."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    plot: Path | None = typer.Option(None, help="Write a sweep figure (PNG) to this file."),
) -> None:
    """Predict MACs, FLOPs, memory, fit and latency of one training step per method."""
    shape = model_shape(model)
    methods = [m.strip() for m in method.split(",") if m.strip()]
    seqs = _ints(seq, "seq")
    if batch < 1:
        raise EdgetuneError(f"--batch must be at least 1, got {batch}")
    if dtype not in DTYPES:
        raise EdgetuneError(f"unknown --dtype {dtype!r}; choose {', '.join(DTYPES)}")
    dev = load_device(device) if device else None
    upd = None
    if "sparse" in methods:
        n = shape.n_layers + shape.n_dec_layers
        upd = UpdateScheme.load(scheme) if scheme else UpdateScheme.qkv_ffn1(n, max(1, n // 2))
    rows = cost_rows(shape, methods, seqs, dev, batch, dtype, head, tgt_seq, optimizer, upd,
                     lora_rank)  # fmt: skip
    if json_out:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        _print_table(rows, shape, dev, dtype, batch, upd)
    if plot:
        write_sweep_plot(shape, methods, seqs, plot, batch, dtype, head, tgt_seq, optimizer, upd)
        if not json_out:
            typer.echo(f"wrote {plot}")


def _print_table(rows: list[Row], shape, dev, dtype: str, batch: int, upd) -> None:
    title = f"{shape.name}: one training step, batch {batch}, {dtype}"
    if upd is not None:
        title += f", sparse scheme {upd.name}"
    t = Table(title=title)
    for col in ("method", "seq", "MACs", "FLOPs", "weights", "grads", "optim", "activ.",
                "work", "peak", "fit", "latency", "MACs vs BP", "peak vs BP"):  # fmt: skip
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        c, m = r.cost, r.cost.memory
        fit = "" if r.fits is None else ("yes" if r.fits else "NO")
        t.add_row(
            c.method, str(c.seq), human(c.macs), human(c.flops), human(m.weights, "B", 1024),
            human(m.gradients, "B", 1024), human(m.optimizer, "B", 1024),
            human(m.activations, "B", 1024), human(m.workspace, "B", 1024),
            human(m.peak, "B", 1024), fit, seconds(r.latency_s) if dev else "",
            _pct(r.macs_vs_backprop), _pct(r.memory_vs_backprop),
        )  # fmt: skip
    console = _console()
    console.print(t)
    if dev is not None:
        mem = human(dev.memory.value, "B", 1024) if dev.memory else "unknown"
        console.print(f"device {dev.name}: {dev.title}; memory {mem}; latency = roofline at 50 % "
                      "of peak FLOP/s and bandwidth (docs/cost-model.md)")  # fmt: skip
        if note := not_measured_note(dev):
            console.print(note)


def write_sweep_plot(
    shape: ModelShape,
    methods: list[str],
    seqs: list[int],
    path: Path,
    batch: int = 1,
    dtype: str = "fp32",
    head: str = "lm",
    tgt_seq: int = 0,
    optimizer: str = "adamw",
    scheme: UpdateScheme | None = None,
) -> None:
    """MACs, activation memory and total memory against context length, one line per method
    (the layout of Pau & Aymone 2024, figure 5). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetune.io import atomic_write

    lo, hi = min(seqs), max(seqs)
    grid = (
        sorted({*seqs, *[int(lo * (hi / lo) ** (i / 24)) for i in range(25)]}) if hi > lo else seqs
    )
    rows = cost_rows(shape, methods, grid, None, batch, dtype, head, tgt_seq, optimizer, scheme)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    panels = [
        ("MACs (G)", lambda r: r.cost.macs / 1e9),
        ("activations + workspace (MiB)",
         lambda r: (r.cost.memory.activations + r.cost.memory.workspace) / 2**20),
        ("peak memory (MiB)", lambda r: r.cost.memory.peak / 2**20),
    ]  # fmt: skip
    for ax, (label, get) in zip(axes, panels, strict=True):
        for m in methods:
            pts = [(r.cost.seq, get(r)) for r in rows if r.cost.method == m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{shape.name}, batch {batch}, {dtype}")
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _console() -> Console:
    """Rich console; wide when output is not a terminal so tables stay readable in logs."""
    return Console(width=None if sys.stdout.isatty() else 200)


def devices(
    sources: bool = typer.Option(False, help="Also print where every number comes from."),
) -> None:
    """List the device profiles: memory, peak FLOP/s per dtype, bandwidth, power."""
    t = Table(title="device profiles (edgetune/cost/devices/*.toml)")
    for col in ("name", "memory", "fp32", "bf16", "fp16", "int8", "bandwidth", "power", "what"):
        t.add_column(col, justify="left" if col in ("name", "what") else "right")
    notes = []
    for name in device_names():
        d = load_device(name)
        peak = [human(d.peak(k), "FLOP/s") if d.peak(k) else "-" for k in ("fp32", "bf16", "fp16")]
        t.add_row(
            name, human(d.memory.value, "B", 1024) if d.memory else "?", *peak,
            human(d.peak("int8"), "OP/s") if d.peak("int8") else "-",
            human(d.bandwidth.value, "B/s") if d.bandwidth else "?",
            f"{d.power.value:g} W" if d.power else "-", d.title,
        )  # fmt: skip
        if note := not_measured_note(d):
            notes.append(note)
        if sources:
            fields = [("memory", d.memory), ("bandwidth", d.bandwidth), ("power", d.power)]
            fields += [(f"peak {k}", v) for k, v in d.peak_flops.items()]
            notes += [f"{name} {k}: {v.source}" for k, v in fields if v is not None]
    console = _console()
    console.print(t)
    for n in notes:
        console.print(n, soft_wrap=True)
