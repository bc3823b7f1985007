"""metrics.json and the short Markdown summary every run writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetune.config import RunConfig
from edgetune.io import atomic_write_text


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=1))


def write_summary(path: Path, cfg: RunConfig, metrics: dict[str, Any]) -> None:
    t, ev, tr = cfg.train, metrics.get("eval", {}), metrics["train"]
    lines = [
        f"# edgetune run: {cfg.model.name} on {cfg.data.name} ({t.method})",
        "",
        f"- steps: {metrics['train']['steps']} at batch {t.batch_size} x {t.grad_accum} "
        f"micro-batches, sequence {cfg.data.seq_len}, lr {t.lr}",
        f"- training loss: {tr['loss_first']:.4f} -> {tr['loss_last']:.4f}"
        if tr["loss_first"] is not None
        else "- training loss: no steps run",
        f"- median step time: {metrics['time']['step_s_median']:.3f} s"
        if metrics["time"]["step_s_median"]
        else "- median step time: n/a",
        f"- peak memory (RSS): {metrics['memory']['peak_rss_mb']:.0f} MiB",
        "",
        "| metric (test split) | before | after |",
        "|---|---|---|",
    ]
    before = metrics.get("test_before", {})
    for key, value in ev.items():
        if isinstance(value, float):
            b = f"{before[key]:.4f}" if key in before else ""
            lines.append(f"| {key} | {b} | {value:.4f} |")
    out = cfg.out.rstrip("/")
    lines += [
        "",
        "From the folder the run was started in, reproduce it: "
        f"`edgetune finetune --config {out}/config.yaml --out {out}-again`; continue it with "
        f"more steps: `edgetune finetune --out {out} --resume --max-steps N`.",
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
