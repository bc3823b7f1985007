"""`edgetune plan`: contribution analysis and budgeted search, written as a YAML update scheme.

A plain function for typer; `edgetune.cli` registers it with `app.command()(plan)`. Bad input
raises `EdgetuneError` (the CLI prints it on one line and exits 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgetune.commands import err, overrides, wide_console
from edgetune.errors import EdgetuneError
from edgetune.units import human_bytes


def _layers(text: str | None, what: str) -> list[int] | None:
    if text is None or text == "all":
        return None
    try:
        return sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise EdgetuneError(f"--{what} takes `all` or comma-separated block indices") from None


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgetuneError(f"--fractions takes comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise EdgetuneError(f"--fractions must lie in (0, 1], got {text!r}")
    return values


def plan(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run config."),
    model: str | None = typer.Option(None, help="Registry name or local model folder."),
    data: str | None = typer.Option(None, help="Bundled data set or data file."),
    task: str | None = typer.Option(None, help="classify, lm, summarize or chat (data files)."),
    budget: str | None = typer.Option(
        None, help="Memory a step may use, weights included (as finetune): 64MB, 1.5GB, 512MiB."
    ),
    device: str | None = typer.Option(
        None, help="Device profile (`edgetune devices`): its memory is the budget."
    ),
    max_step: float | None = typer.Option(
        None, help="Step time limit in forward passes (the cost model's FLOPs), e.g. 1.25."
    ),
    verify: int = typer.Option(
        0, help="Fine-tune the best N shortlisted schemes jointly; keep the best measured."
    ),
    out: Path = typer.Option(Path("plan.yaml"), help="Scheme YAML to write (with its forecast)."),
    seq_len: int | None = typer.Option(None, help="Tokens per example (default 128)."),
    batch_size: int | None = typer.Option(None, help="Examples per step (default 16)."),
    steps: int = typer.Option(10, help="Optimizer steps each candidate is fine-tuned for."),
    analysis_batch: int = typer.Option(8, help="Examples per step of the candidates' runs."),
    lr: float = typer.Option(1e-3, help="Learning rate of the candidates' short runs."),
    eval_examples: int = typer.Option(64, help="Held-out examples the gain is measured on."),
    train_samples: int | None = typer.Option(None, help="Use only N training rows."),
    layers: str | None = typer.Option(
        None, help="Blocks to measure, e.g. 0,2,4 (default all; the rest interpolated)."
    ),
    fraction_layers: str | None = typer.Option(
        None, help="Blocks where channel fractions < 1 are measured (default: measured ones)."
    ),
    fractions: str = typer.Option(
        "1,0.5,0.25,0.125", help="Output-channel fractions of each unit (must include 1)."
    ),
    cache: Path | None = typer.Option(None, help="Folder of the analysis cache (resumable)."),
    plot: Path | None = typer.Option(None, help="Write the gain per layer and unit (PNG)."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Plan a sparse update scheme for a memory budget or a device. Extra `section.key=value`
    arguments set the run it is planned for, as for `finetune` (the method defaults to sparse).

    The budget means what it means for `finetune`: the step's peak memory, weights included.

    Examples:

        edgetune plan --model minilm-l6 --data reuters-r8 --budget 64MB --out plan.yaml

        edgetune plan --model smollm2-135m --data brown --device rpi4 --layers 20,25,29

        edgetune plan --budget 48MB --max-step 1.25 --verify 4 --out fast.yaml

        edgetune finetune --method sparse --scheme plan.yaml ...
    """
    from edgetune.config import load_config
    from edgetune.pipeline import load
    from edgetune.plan.planner import make_plan
    from edgetune.plan.table import AnalysisSettings

    flags = {
        "model.name": model, "data.name": data, "data.task": task, "data.seq_len": seq_len,
        "train.batch_size": batch_size, "data.train_samples": train_samples,
    }  # fmt: skip
    settings_ = overrides(flags, ctx.args, "plan")
    if config is None:
        settings_ = {"train.method": "sparse", "data.seq_len": 128, **settings_}
    cfg = load_config(config, settings_)
    if budget is None and device is None:
        raise EdgetuneError("give a memory budget (--budget 64MB) or a device (--device rpi4)")
    if budget is not None and device is not None:
        raise EdgetuneError("give one of --budget or --device, not both")
    analysis = AnalysisSettings(
        steps=steps,
        lr=lr,
        batch_size=analysis_batch,
        eval_examples=eval_examples,
        layers=_layers(layers, "layers"),
        fraction_layers=_layers(fraction_layers, "fraction-layers"),
        fractions=_fractions(fractions),
    )
    if max_step is not None and max_step < 1:
        raise EdgetuneError(
            f"--max-step counts forward passes and must be at least 1, got {max_step:g}"
        )
    if verify < 0:
        raise EdgetuneError(f"--verify must be 0 or more, got {verify}")
    session = load(cfg)
    result, table = make_plan(
        session, budget, device, analysis, cache, err, max_step=max_step, verify=verify
    )
    overhead = session.overhead()
    result.save(out)
    if plot:
        from edgetune.report.figures import plot_gains

        plot_gains(table, plot)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "scheme": result.scheme.to_dict(),
                    "gain": result.gain,
                    "measured_gain": result.measured_gain,
                    "budget_bytes": result.budget,
                    "forecast": result.forecast,
                }
            )
        )
        return
    room = human_bytes(result.budget)
    t = Table(title=f"planned scheme for {cfg.model.name} on {cfg.data.name}: {room} of "
                    "training memory beside the weights")  # fmt: skip
    for col in ("unit", "layer", "channel fraction", "bias"):
        t.add_column(col)
    for u in result.scheme.updates:
        layer = "" if u.unit == "head" else str(u.layer)
        t.add_row(u.unit, layer, f"{u.weight_fraction:g}", "yes" if u.bias else "no")
    out_console = wide_console()
    out_console.print(t)
    f = result.forecast
    out_console.print(
        f"forecast (batch {f['batch']}, {f['seq']} tokens): training memory "
        f"{human_bytes(f['training_bytes'])}, process peak "
        f"{human_bytes(overhead.total + f['peak_bytes'])} ({overhead.parts()} + step "
        f"{human_bytes(f['peak_bytes'])}), "
        f"step {f['step_forwards']:.2f}x a forward (FLOPs), "
        f"{f['trained_params'] / 1e6:.2f}M trained parameters; predicted held-out loss gain "
        f"{result.gain:.4f}"
        + ("" if result.measured_gain is None else f", measured {result.measured_gain:.4f}")
    )
    out_console.print(f"wrote {out}")
