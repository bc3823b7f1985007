"""Every figure edgetune draws: PNG files written atomically (matplotlib, Agg backend).

- `plot_gains`: the contribution analysis, gain per layer and unit (`edgetune plan --plot`);
- `plot_sweep`: MACs and memory against context length (`edgetune cost --plot`);
- `plot_methods`: a methods comparison (`edgetune bench methods`, `benchmarks/methods.py`);
- `plot_lean`: lean methods' test metric against their memory (`benchmarks/methods.py`);
- `plot_federated`: metric, bytes and time per round of a federated run;
- `plot_curves`: a training run's loss and validation curves (`curves.png` in the run folder).
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

from edgetune.forecast import StepInputs, sweep
from edgetune.io import atomic_write
from edgetune.plan.table import CANDIDATE_UNITS, Candidate, ContributionTable


def metric_of(acc: dict[str, Any]) -> tuple[str, float] | None:
    """The headline test metric of a run's metrics: accuracy (%) or perplexity."""
    ev = acc.get("eval") or {}
    if "accuracy" in ev:
        return "accuracy %", 100 * ev["accuracy"]
    if "perplexity" in ev:
        return "perplexity", ev["perplexity"]
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    _pyplot().close(fig)


def plot_gains(table: ContributionTable, path: Path) -> None:
    """Gain per layer and unit (fraction 1, and biases), and gain against channel fraction."""
    plt = _pyplot()

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    layers = list(range(table.n_layers))
    for unit in CANDIDATE_UNITS:
        f = 0.0 if unit == "bias" else 1.0
        es = [table.entries[Candidate(unit, i, f).key] for i in layers]
        (line,) = ax.plot(layers, [e.gain for e in es], label=unit, marker=".")
        ax.scatter(
            [i for i, e in zip(layers, es, strict=True) if e.measured],
            [e.gain for e in es if e.measured],
            color=line.get_color(),
            s=25,
        )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="layer (block)",
        ylabel="held-out loss gain",
        title=f"{table.model} on {table.data}: gain per unit (dots measured)",
    )
    ax.legend()
    fracs = sorted({Candidate.from_key(k).fraction for k in table.entries} - {0.0})
    for unit in CANDIDATE_UNITS[:-1]:
        means = [
            statistics.mean(table.entries[Candidate(unit, i, f).key].gain for i in layers)
            for f in fracs
        ]
        bx.plot(fracs, means, marker="o", label=unit)
    bx.set_xscale("log", base=2)
    bx.set(
        xlabel="output-channel fraction",
        ylabel="mean gain over layers",
        title="gain against channel fraction",
    )
    bx.legend()
    _save(fig, Path(path))


def plot_sweep(inputs: StepInputs, methods: dict[str, Any], seqs: list[int], path: Path,
               title: str) -> None:  # fmt: skip
    """MACs, activation memory and total memory against context length, one line per method
    (the layout of Pau & Aymone 2024, figure 5). Written atomically."""
    plt = _pyplot()
    lo, hi = min(seqs), max(seqs)
    grid = (
        sorted({*seqs, *[int(lo * (hi / lo) ** (i / 24)) for i in range(25)]}) if hi > lo else seqs
    )
    rows = sweep(inputs, methods, grid)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    panels = [
        ("MACs (G)", lambda r: r.cost.macs / 1e9),
        ("activations + workspace (MiB)",
         lambda r: (r.cost.memory.activations + r.cost.memory.workspace) / 2**20),
        ("peak memory (MiB)", lambda r: r.cost.memory.peak / 2**20),
    ]  # fmt: skip
    for ax, (label, get) in zip(axes, panels, strict=True):
        for name in dict.fromkeys(r.cost.method for r in rows):
            pts = [(r.cost.seq, get(r)) for r in rows if r.cost.method == name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    _save(fig, Path(path))


def plot_methods(summary: dict[str, Any], path: Path) -> None:
    """Step time over the forward floor, memory above inference and the test metric of a
    methods comparison (`edgetune.bench`)."""
    plt = _pyplot()

    rows = [r for r in summary["rows"] if "error" not in r]
    labels = [r["label"] for r in rows]
    metrics = [metric_of(r.get("accuracy_run", {})) for r in rows]
    panels = [
        ("step time / eval-mode forward", [r["step_over_forward"] for r in rows]),
        ("peak RSS above inference (MiB)", [r["above_inference_mb"] for r in rows]),
        (next((m[0] for m in metrics if m), "test metric"),
         [m[1] if m else 0.0 for m in metrics]),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(rows) + 1.8), constrained_layout=True)
    for ax, (title, vals) in zip(axes, panels, strict=True):
        ax.barh(labels, vals, color="tab:blue")
        ax.set_title(title)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    axes[0].axvline(1.3, color="tab:red", ls="--", lw=1)  # issue 3: sparse within 1.3x forward
    s = summary["setup"]
    fig.suptitle(f"{s['model']} on {s['data']}, batch {s['batch']} x {s['seq']}")
    _save(fig, Path(path), dpi=100)


def plot_lean(summary: dict[str, Any], verdicts: dict[str, Any], path: Path) -> None:
    """Test metric against measured step peak (x inference) for a lean line-up, the target's
    memory cap and metric drawn in (`benchmarks/methods.py --preset lean-*`)."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    t = verdicts["targets"]
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    name = "test metric"
    for r in summary["rows"]:
        m = metric_of(r.get("accuracy_run", {}))
        if m is None or "error" in r:
            continue
        name = m[0]
        marker = "s" if verdicts["rows"].get(r["label"], {}).get("hybrid") else "o"
        ax.scatter(r["peak_over_inference"], m[1], marker=marker, s=45, label=r["label"])
    ax.axvline(t["peak_over_inference"], color="tab:red", ls="--", lw=1, label="memory cap")
    goal, before = verdicts["goal_metric"], verdicts["before_metric"]
    if goal is not None:
        label = ("accuracy target" if t["accuracy"] is not None
                 else f"{t['gain_fraction']:.0%} of the reference's gain")  # fmt: skip
        ax.axhline(goal, color="tab:green", ls="--", lw=1, label=label)
    if t["gain_fraction"] is not None and before:
        ax.axhline(before, color="grey", ls=":", lw=1, label="untrained")
    ax.set(xlabel="step peak RSS / inference peak", ylabel=name)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    s = summary["setup"]
    ax.set_title(f"{s['model']} on {s['data']}: lean methods (squares: hybrids)")
    _save(fig, Path(path))


def plot_federated(data: dict[str, Any], out: Path) -> None:
    """fl_metric.png, fl_bytes.png, fl_time.png over rounds of a federated run."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = data["per_round"]
    rounds = [r["round"] for r in rows]
    evals = {r["round"]: r["global_eval"] for r in data["rounds"] if "global_eval" in r}
    figures: dict[str, tuple[str, list[tuple[str, list, list]]]] = {
        "fl_bytes.png": ("bytes per client", [
            ("up", rounds, [r["bytes_up"] for r in rows]),
            ("down", rounds, [r["bytes_down"] for r in rows]),
        ]),
        "fl_time.png": (f"seconds per client ({data['network']['name']})", [
            ("compute", rounds, [r["compute_s"] for r in rows]),
            ("communication", rounds, [r["comm_s"] for r in rows]),
        ]),
    }  # fmt: skip
    last = evals[max(evals)] if evals else {}
    key = next((k for k in ("accuracy", "rougeL", "perplexity") if k in last), None)
    if key:
        xs = sorted(r for r in evals if key in evals[r])
        figures["fl_metric.png"] = (f"global {key}", [(key, xs, [evals[r][key] for r in xs])])
    for name, (label, series) in figures.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for legend, xs, ys in series:
            ax.plot(xs, ys, marker="o", label=legend)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.legend()
        fig.tight_layout()
        _save(fig, out / name)


def plot_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss per step (the raw points under their moving mean over a twentieth of the
    steps) and, in a second panel where the run validated, the validation metric per
    evaluation: the records of a run's metrics.jsonl (`edgetune.report.watch`)."""
    plt = _pyplot()
    steps = [r["step"] for r in records if "loss" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [(r["step"], r["validation"]) for r in records if "validation" in r]
    key = next((k for k in ("accuracy", "perplexity", "rougeL") if evals and k in evals[-1][1]),
               None)  # fmt: skip
    fig, axes = plt.subplots(1, 2 if key else 1, figsize=(11 if key else 6, 3.6), squeeze=False)
    ax = axes[0][0]
    window = max(1, len(losses) // 20)
    sums = list(itertools.accumulate(losses, initial=0.0))
    mean = [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window)
            for i in range(len(losses))]  # fmt: skip
    ax.plot(steps, losses, ".", ms=4, alpha=0.35, color="tab:blue", label="per step")
    ax.plot(steps, mean, color="tab:blue", label=f"moving mean, {window}-step window")
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    if key:
        bx = axes[0][1]
        xs = [step for step, m in evals if key in m]
        bx.plot(xs, [m[key] for _, m in evals if key in m], marker="o", color="tab:orange")
        bx.set(xlabel="optimizer step", ylabel=f"validation {key}", title="validation")
        bx.grid(alpha=0.3)
    fig.tight_layout()  # cheaper than a constrained layout: this runs at every checkpoint
    _save(fig, Path(path))
