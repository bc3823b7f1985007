"""The bench results as Markdown tables and files: `edgetune bench` and `benchmarks/` write
what `edgetune.bench.methods` measured (the figure: `edgetune.report.figures.plot_methods`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetune.io import atomic_write_text
from edgetune.report.figures import metric_of, plot_methods


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _metric_cell(ev: dict[str, Any]) -> str:
    m = metric_of({"eval": ev})
    return "-" if m is None else f"{m[1]:.2f}" + (" %" if "%" in m[0] else " ppl")


def methods_table(summary: dict[str, Any]) -> str:
    """The Markdown table of a comparison (one row per variant)."""
    s, inf = summary["setup"], summary["inference"]
    head = (
        f"{s['model']} on {s['data']}, batch {s['batch']} x {s['seq']} tokens, "
        f"{s['threads']} threads; accuracy runs: {s['steps']} optimizer steps each, test metric "
        f"on the first {s['eval_samples']} test examples (lm: blocks of {s['seq']} tokens). "
        f"Inference (no autograd, eval mode): peak "
        f"RSS {inf['peak_rss_mb']:.0f} MiB, forward {inf['forward_eval_s']:.3f} s "
        f"(train mode, dropout on: {inf['forward_train_s']:.3f} s)."
    )
    cols = ["method", "lr", "test metric", "step s", "fwd s", "step / fwd", "step / BP",
            "peak RSS MiB", "above inf. MiB", "above inf. / BP", "saved for bwd MiB",
            "trainable", "GFLOP/step", "loss first -> last"]  # fmt: skip
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary["rows"]:
        acc = r.get("accuracy_run", {})
        metric = metric_of(acc)
        m = "-" if metric is None else f"{metric[1]:.2f}" + (" %" if "%" in metric[0] else " ppl")
        if "error" in acc:
            m = "failed: " + acc["error"][:60]
        loss = (f"{acc['loss_first']:.3f} -> {acc['loss_last']:.3f}"
                if "loss_first" in acc else "-")  # fmt: skip
        if "error" in r:
            lines.append(f"| {r['label']} | {r['lr']:g} | {m} | failed: {r['error'][:80]} |")
            continue
        cells = [
            r["label"], f"{r['lr']:g}", m, _f(r["step_s"], ".3f"), _f(r["forward_eval_s"], ".3f"),
            _f(r["step_over_forward"], ".2f"), _f(r.get("step_vs_backprop"), ".2f"),
            _f(r["peak_rss_mb"], ".0f"), _f(r["above_inference_mb"], ".0f"),
            _f(r.get("above_inference_vs_backprop"), ".3f"), _f(r["saved_bytes"] / 2**20, ".1f"),
            f"{r['trainable_params'] / 1e6:.3f}M", _f(r["flops_per_step"] / 1e9, ".1f"), loss,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def lean_table(summary: dict[str, Any], verdicts: dict[str, Any]) -> str:
    """The lean line-up against its reference (issue 16): memory, wall time, test metric."""
    s, inf, t = summary["setup"], summary["inference"], verdicts["targets"]
    rows = summary["rows"]
    ref = rows[0]
    goal = (f"test accuracy >= {t['accuracy']:g} %" if t["accuracy"] is not None
            else f">= {t['gain_fraction']:.0%} of the reference's log-perplexity gain")  # fmt: skip
    lines = [
        f"{s['model']} on {s['data']}, batch {s['batch']} x {s['seq']} tokens, {s['threads']} "
        f"threads; test metric on the first {s['eval_samples']} test examples. Inference (no "
        f"autograd, eval mode): peak RSS {inf['peak_rss_mb']:.0f} MiB. Reference: "
        f"{ref['label']}, {_f(verdicts['reference_train_s'], '.0f')} s of training, test "
        f"{_f(verdicts['reference_metric'], '.2f')} (untrained: "
        f"{_f(verdicts['before_metric'], '.2f')}). Target for a lean method: step peak <= "
        f"{t['peak_over_inference']:g}x inference, training time <= "
        f"{t['wall_over_reference']:g}x the reference's, {goal}.",
        "",
        "| method | lr | steps | train s | x ref. time | step peak RSS MiB | x inference | "
        "run's train peak MiB | validation | test metric | meets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        acc = r.get("accuracy_run", {})
        v = verdicts["rows"].get(r["label"], {})
        m = "failed: " + acc["error"][:60] if "error" in acc else _metric_cell(acc.get("eval", {}))
        if v.get("gain_fraction") is not None:
            m += f" ({v['gain_fraction']:.0%} of the gain)"
        meets = "reference" if r is ref else ("**yes**" if v.get("meets") else "no")
        cells = [
            r["label"], f"{r['lr']:g}", str(acc.get("steps", "-")), _f(acc.get("train_s"), ".0f"),
            _f(v.get("wall_over_reference"), ".2f"), _f(r.get("peak_rss_mb"), ".0f"),
            _f(r.get("peak_over_inference"), ".3f"), _f(acc.get("train_peak_rss_mb"), ".0f"),
            _metric_cell(acc.get("validation", {})), m, meets,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for label, h in verdicts["hybrids"].items():
        verdict = "**beats all of them**." if h["beats_all"] else "does not beat all of them."
        lines += ["", f"`{label}` against the singles at equal or less measured step peak "
                  f"(up to {t['same_memory']:g}x its own): {', '.join(h['singles']) or 'none'}: "
                  + verdict]  # fmt: skip
    return "\n".join(lines) + "\n"


def sweep_table(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [
        f"{s['model']} on {s['data']}, batch {s['batch']} x {s['seq']}, {s['steps']} optimizer "
        f"steps per run; learning rate chosen on the validation metric (first "
        f"{s['eval_samples']} validation rows) over the default x {result['factors']}; test "
        f"metric on the first {s['eval_samples']} test rows at the chosen rate.",
        "",
        "| method | learning rates tried (validation metric) | chosen lr | validation | test |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        tried = ", ".join(
            f"{t['lr']:g} ({'failed' if 'error' in t else _metric_cell(t['validation'])})"
            for t in r["tried"]
        )
        c = r.get("chosen")
        cells = ([f"{c['lr']:g}", _metric_cell(c["validation"]), _metric_cell(c["eval"])]
                 if c else ["-", "-", "-"])  # fmt: skip
        lines.append(f"| {r['label']} | {tried} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def hardware_table(hw: dict[str, Any]) -> str:
    g, s = hw["gemm"], hw["setup"]
    peaks = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in g["peak_flops"].items())
    load = hw.get("load")
    lines = [
        (f"Load average {load[0]:.2f} before, {load[1]:.2f} after. " if load else "")
        + f"This machine ({g['threads']} threads, measured {g['when']}): GEMM {g['gemm_n']}^3 "
        f"median of {g['repeats']}: {peaks}; copy bandwidth {g['bandwidth'] / 1e9:.1f} GB/s.",
        "",
        f"Training steps of {s['model']} on {s['data']}, batch {s['batch']} x {s['seq']}, fp32. "
        "MFU = achieved FLOP/s (flop counter: matrix products only) / fp32 GEMM peak. Predicted: "
        "the step's kernels, each timed on this machine (`edgetune.cost.latency`); roofline: "
        "FLOPs at 50 % of the GEMM peak.",
        "",
        "| method | step s | GFLOP/step | achieved GFLOP/s | MFU | tokens/s | predicted step s "
        "| predicted / measured | roofline / measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in hw["rows"]:
        pred = r["predicted_step_s"]
        lines.append(
            f"| {r['label']} | {r['step_s']:.3f} | {r['flops_per_step'] / 1e9:.1f} | "
            f"{r['flops_per_s'] / 1e9:.1f} | {r['mfu'] * 100:.1f} % | {r['tokens_per_s']:.0f} | "
            f"{_f(pred, '.3f')} | {_f(r['predicted_over_measured'], '.2f')} | "
            f"{_f(r.get('roofline_over_measured'), '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def write_json_md(result: dict[str, Any], out_dir: Path, name: str, table: str) -> list[Path]:
    """`<name>.json` and `<name>.md`, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("json", "md")]
    atomic_write_text(paths[0], json.dumps(result, indent=1, default=str))
    atomic_write_text(paths[1], table)
    return paths


Plot = Callable[[dict[str, Any], Path], None]


def write_outputs(summary: dict[str, Any], out_dir: Path, name: str, table: str,
                  plot: Plot = plot_methods) -> list[Path]:  # fmt: skip
    """`write_json_md` and `<name>.png` drawn by `plot` (by default step time over the forward
    floor, memory above inference, test metric), written atomically."""
    paths = write_json_md(summary, out_dir, name, table)
    png = out_dir / f"{name}.png"
    plot(summary, png)
    return [*paths, png]
