"""`edgetune cost` and `edgetune devices`: the cost model's forecast as a table, JSON or plot.

Plain functions for typer; `edgetune.cli` registers them with `app.command()(cost)`. Bad input
raises `EdgetuneError` (the CLI prints it on one line and exits 1).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.table import Table

from edgetune.commands import wide_console
from edgetune.cost import Precision, device_names, load_device, not_measured_note, paper
from edgetune.errors import EdgetuneError
from edgetune.families import ENCODER_DECODER
from edgetune.forecast import Row, StepInputs, model_shape, sweep
from edgetune.measure.runtime import runtime
from edgetune.methods import METHODS, get_method
from edgetune.units import human, seconds

DTYPES = ("fp32", "bf16", "fp16", "int8", "mixed")


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
    model: str = typer.Option(
        "distilbert", help="Registry name, alexatm-20b, a local model folder or a hub id."
    ),
    method: str = typer.Option(
        "backprop,pepita,mempepita", help=f"Comma-separated methods: {', '.join(METHODS)}."
    ),
    seq: str = typer.Option("32,128,512,2048", help="Comma-separated context lengths (tokens)."),
    device: str | None = typer.Option(None, help="Device profile for fit and latency."),
    batch: int = typer.Option(1, help="Sequences per step."),
    dtype: str = typer.Option("fp32", help=f"Number format: {', '.join(DTYPES)}."),
    head: str = typer.Option("lm", help="Task head: lm, classifier or none."),
    labels: int = typer.Option(2, help="Classes of a classifier head."),
    tgt_seq: int = typer.Option(0, help="Target length of an encoder-decoder (0: same as seq)."),
    optimizer: str | None = typer.Option(
        None, help="adamw, sgd or sgd-momentum for every method (default: each method's own)."
    ),
    scheme: str | None = typer.Option(
        None, help="Update scheme (built-in name or YAML) of the methods that have one."
    ),
    lora_rank: int | None = typer.Option(None, help="LoRA rank (default: lora's own, 8)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    plot: Path | None = typer.Option(None, help="Write a sweep figure (PNG) to this file."),
    accounting: str = typer.Option(
        "default",
        help="default: edgetune's autograd-faithful accounting; paper: also the seed paper's "
        "own conventions (Pau & Aymone 2024) beside it, for backprop, pepita and mempepita.",
    ),
) -> None:
    """Predict MACs, FLOPs, memory, fit and latency of one training step per method.

    The same forecast `finetune` prints before training (`edgetune.forecast`), for any model
    shape, without loading weights.

    Examples:

        edgetune cost --model distilbert --method backprop,pepita,mempepita --device rpi4

        edgetune cost --model smollm2-135m --method sparse,lora --scheme last-2 --seq 256

        edgetune cost --model gpt3-small --method backprop,mempepita --seq 32,2048 --plot s.png

        edgetune cost --model distilbert --seq 128,2048 --accounting paper
    """
    if accounting not in ("default", "paper"):
        raise EdgetuneError(f"unknown --accounting {accounting!r}; use default or paper")
    shape = model_shape(model)
    names = [m.strip() for m in method.split(",") if m.strip()]
    seqs = _ints(seq, "seq")
    if batch < 1:
        raise EdgetuneError(f"--batch must be at least 1, got {batch}")
    if dtype not in DTYPES:
        raise EdgetuneError(f"unknown --dtype {dtype!r}; choose {', '.join(DTYPES)}")
    if head not in ("lm", "classifier", "none"):
        raise EdgetuneError(f"unknown --head {head!r}; use lm, classifier or none")
    dev = load_device(device) if device else None
    methods = {}
    for name in names:
        spec = get_method(name)
        options: dict = {}
        if scheme is not None and spec.scheme_option:
            options[spec.scheme_option] = scheme
        if lora_rank is not None and "r" in {f.name for f in dataclasses.fields(spec.options)}:
            options["r"] = lora_rank
        methods[name] = spec.parse(options)
    prec = (
        Precision.uniform(dtype) if dtype != "mixed" else Precision("bf16", "bf16", "fp32", "bf16")
    )
    inputs = StepInputs(shape, batch, seqs[0], head, labels, tgt_seq, precision=prec,
                        optimizer=optimizer)  # fmt: skip
    rows = sweep(inputs, methods, seqs, dev)
    papers = _paper_rows(rows, shape) if accounting == "paper" else None
    if json_out:
        out = [r.to_dict() for r in rows]
        for d, extra in zip(out, papers or [{}] * len(out), strict=True):
            d.update(extra)
        typer.echo(json.dumps(out, indent=2))
    else:
        _print_table(rows, shape, dev, dtype, batch)
        if papers is not None:
            _print_paper(rows, papers, shape)
    if plot:
        from edgetune.report.figures import plot_sweep

        plot_sweep(inputs, methods, seqs, plot, f"{shape.name}, batch {batch}, {dtype}")
        if not json_out:
            typer.echo(f"wrote {plot}")


def _print_table(rows: list[Row], shape, dev, dtype: str, batch: int) -> None:
    t = Table(title=f"{shape.name}: one training step, batch {batch}, {dtype}")
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
    console = wide_console()
    console.print(t)
    if dev is not None:
        mem = human(dev.memory.value, "B", 1024) if dev.memory else "unknown"
        console.print(f"device {dev.name}: {dev.title}; memory {mem}; latency = roofline at 50 % "
                      "of peak FLOP/s and bandwidth (docs/cost-model.md)")  # fmt: skip
        if note := not_measured_note(dev):
            console.print(note)
    rt = runtime(measure=False)
    console.print(
        "peak: the step's tensors, weights included; a training process adds the runtime ("
        + (
            f"{human(rt.bytes, 'B', 1024)} on this machine, {rt.source})"
            if rt
            else "measured on this machine by `edgetune bench hardware` or a first `finetune`)"
        )
        + ", its tokenizer and its data; `finetune` prints the process's peak",
        highlight=False,
    )


def _paper_rows(rows: list[Row], shape) -> list[dict]:
    """The seed paper's MACs and stored activations of each row (its rules only; batch 1 in
    the paper, scaled by the batch here): {"paper_macs", "paper_activations"} or {}."""
    out: list[dict] = []
    for r in rows:
        c = r.cost
        if c.method not in paper.METHODS:
            out.append({})
            continue
        enc = shape.kind == ENCODER_DECODER
        p = paper.paper_shape(shape, src=c.seq if enc else 0)
        m = (c.tgt_seq or c.seq) if enc else c.seq
        out.append({"paper_macs": c.batch * paper.macs(p, m)[c.method],
                    "paper_activations": c.batch * paper.activations(p, m)[c.method]})  # fmt: skip
    return out


def _print_paper(rows: list[Row], papers: list[dict], shape) -> None:
    t = Table(title=f"{shape.name}: the seed paper's accounting beside edgetune's")
    for col in ("method", "seq", "MACs (paper)", "MACs (edgetune)", "paper / edgetune",
                "activations (paper, elements)", "activations (edgetune, bytes)"):  # fmt: skip
        t.add_column(col, justify="left" if col == "method" else "right")
    for r, p in zip(rows, papers, strict=True):
        if not p:
            continue
        c = r.cost
        t.add_row(c.method, str(c.seq), human(p["paper_macs"]), human(c.macs),
                  f"{p['paper_macs'] / c.macs:.2f}", human(p["paper_activations"]),
                  human(c.memory.activations, "B", 1024))  # fmt: skip
    console = wide_console()
    console.print(t)
    console.print(
        "The paper (Pau & Aymone 2024) counts the embedding as a one-hot product, the softmax "
        "backward as a full Jacobian product, the LayerNorm backward as d^2 per token and one "
        "attention map per block, in elements (plotted as MB at 1 byte each); edgetune counts "
        "what autograd runs and saves (docs/cost-model.md)."
    )
    if any(not p for p in papers):
        console.print(f"The paper accounts only for {', '.join(paper.METHODS)}.")


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
    console = wide_console()
    console.print(t)
    for n in notes:
        console.print(n, soft_wrap=True)
