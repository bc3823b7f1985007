"""Planned sparse schemes against fixed built-in schemes, full backprop and LoRA, measured.

    .venv/bin/python benchmarks/planning.py minilm      # MiniLM-L6 on Reuters-R8
    .venv/bin/python benchmarks/planning.py smollm2     # SmolLM2-135M on Brown (LM)
    .venv/bin/python benchmarks/planning.py report      # JSON + Markdown + plots from both

Per model: (1) contribution analysis (cached); (2) full backprop in a fresh subprocess: its
*training memory* = peak resident set during the steps minus the resident set with the model
and data loaded and the (memory-mapped) weights paged in by one inference forward (the
high-water mark reset there through /proc/self/clear_refs, glibc's mmap threshold fixed as in
tests/cost/_rss_step.py); (3) budgets of 1/2, 1/4 and 1/8 of that, a
planned scheme for each (cost-model forecast within the budget); (4) every configuration (planned,
fixed built-ins, backprop, LoRA) trained the same steps on the same batches in its own fresh
subprocess, timed (median step; median inference forward on the same batches, side by side in
the same process), its memory measured, then evaluated. Results per configuration are cached in
benchmarks/results/planning-runs/, so a rerun resumes. One torch thread per process.
"""

from __future__ import annotations

import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = RESULTS / "planning-runs"
FRACTIONS = (0.5, 0.25, 0.125)

SETUPS = {
    "minilm": {
        "model": "minilm-l6", "data": "reuters-r8", "seq": 64, "batch": 8, "steps": 24,
        "eval_samples": 160, "metric": "accuracy", "lr": 1e-3, "lr_backprop": 2e-4,
        "fixed": ["bias-only", "last-1", "last-2", "last-3", "last-1@0.25", "last-2@0.25"],
        "analysis": {"steps": 3, "batch_size": 8, "eval_examples": 32, "lr": 1e-3,
                     "layers": [1, 3, 5], "fraction_layers": [5], "fractions": (1.0, 0.25)},
    },
    "smollm2": {
        "model": "smollm2-135m", "data": "brown", "seq": 32, "batch": 2, "steps": 6,
        "eval_samples": 8, "metric": "perplexity", "lr": 5e-4, "lr_backprop": 5e-5,
        "fixed": ["last-1", "last-2@0.25"],
        "analysis": {"steps": 2, "batch_size": 2, "eval_examples": 8, "lr": 1e-3,
                     "layers": [29], "fraction_layers": [29], "fractions": (1.0, 0.25)},
    },
}  # fmt: skip


# -- the worker: one configuration in a fresh interpreter --------------------------------------


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def worker(spec: dict) -> dict:
    import torch

    from edgetune.config import load_config
    from edgetune.data.load import load_data
    from edgetune.data.tasks import batches, epoch_order, tokenize
    from edgetune.evaluate import evaluate
    from edgetune.methods import MethodSettings, build_method
    from edgetune.models.loader import load_model

    torch.set_num_threads(1)
    cfg = load_config(
        None,
        [
            f"model.name={spec['model']}",
            f"data.name={spec['data']}",
            f"data.seq_len={spec['seq']}",
            f"data.eval_samples={spec['eval_samples']}",
        ],
    )
    text = load_data(cfg.data)
    loaded = load_model(spec["model"], text.task, num_labels=len(text.labels) or None, seed=0)
    data = tokenize(text, loaded.tokenizer, spec["seq"], loaded.kind)
    pad = loaded.tokenizer.pad_token_id
    order = epoch_order(len(data.splits["train"]), 0, 0)[: spec["steps"] * spec["batch"]]
    train = list(batches(data.splits["train"], spec["batch"], pad, order))
    with torch.no_grad():  # page the (memory-mapped) weights in: they are not training memory
        loaded.model.eval()(**train[0])
    loaded.model.train()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # high-water mark := resident set now
    base = _status("VmRSS")
    settings = MethodSettings(
        lr=spec["lr"],
        total_steps=spec["steps"],
        weight_decay=0.0,
        warmup_steps=2,
        options=spec["options"],
    )
    method = build_method(spec["method"], loaded.model, settings)
    compile_report = None
    steps, forwards, losses = [], [], []
    for i, batch in enumerate(train):
        if spec.get("compile") and i == len(train) // 2:
            # first half eager, second half compiled: the per-step gain side by side
            from edgetune.plan.compile import compile_step

            compile_report = compile_step(method, batch).__dict__
            compile_report["eager_step_s"] = statistics.median(steps[2:])
            steps = []
        t = time.perf_counter()
        losses.append(method.step([batch]).loss)
        steps.append(time.perf_counter() - t)
        if len(forwards) < 8:  # an inference forward on the same batch, side by side
            method.model.eval()
            with torch.no_grad():
                t = time.perf_counter()
                method.model(**batch)
                forwards.append(time.perf_counter() - t)
            method.model.train()
    training = _status("VmHWM") - base
    if compile_report is not None:  # evaluate eagerly: eval shapes would recompile the graph
        from edgetune.plan.compile import release

        release(method)
    metrics = evaluate(method.model, data, "test", pad, generate_samples=0)
    warm = steps[2:] or steps
    return {
        **spec,
        "training_bytes": training,
        "base_rss_bytes": base,
        "step_s": statistics.median(warm),
        "forward_s": statistics.median(forwards[1:]),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "metrics": metrics,
        "compile": compile_report,
    }


def run(spec: dict, name: str) -> dict:
    """One configuration in a fresh subprocess, cached by name."""
    path = RUNS / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    out = subprocess.run(
        [sys.executable, __file__, "worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    result = {"name": name, **json.loads(out.stdout.strip().splitlines()[-1])}
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


# -- one model: analysis, budgets, runs ---------------------------------------------------------


def bench(key: str) -> None:
    from edgetune.config import load_config
    from edgetune.cost import step_cost
    from edgetune.plan.contribution import AnalysisSettings, analyze, plot_gains
    from edgetune.plan.scheme import UpdateScheme
    from edgetune.plan.search import model_shape_of, plan_from_table

    s = SETUPS[key]
    common = {k: s[k] for k in ("model", "data", "seq", "batch", "steps", "eval_samples")}
    cfg = load_config(
        None,
        [
            f"model.name={s['model']}",
            f"data.name={s['data']}",
            f"data.seq_len={s['seq']}",
            f"train.batch_size={s['batch']}",
        ],
    )
    table = analyze(cfg, AnalysisSettings(**s["analysis"]), cache=RUNS / "cache")
    plot_gains(table, RESULTS / f"planning-gains-{key}.png")
    bp = run(
        {**common, "method": "backprop", "options": {}, "lr": s["lr_backprop"]}, f"{key}-backprop"
    )
    run({**common, "method": "lora", "options": {}, "lr": s["lr"]}, f"{key}-lora")
    n = table.n_layers
    for name in s["fixed"]:
        scheme = UpdateScheme.builtin(name, n)
        if not table.head:  # an LM's head is the tied embedding matrix: leave it frozen
            scheme = UpdateScheme(tuple(u for u in scheme.updates if u.unit != "head"), name)
        path = RUNS / f"{key}-fixed-{name}.yaml"
        scheme.save(path)
        run(
            {**common, "method": "sparse", "options": {"scheme": str(path)}, "lr": s["lr"]},
            f"{key}-fixed-{name}",
        )
    # Budgets are fractions of backprop's training memory. The search works in the cost
    # model's units, so it gets the fraction of backprop's *forecast*; the table compares
    # measured memory with the fraction of backprop's *measured* training memory.
    shape = model_shape_of(s["model"])
    head = "classifier" if table.task == "classify" else "lm"
    bp_cost = step_cost(
        shape, "backprop", s["batch"], s["seq"], head=head, n_labels=max(2, table.n_labels)
    ).memory
    bp_forecast = bp_cost.peak - bp_cost.weights
    done: dict[str, dict] = {}  # the same scheme at two budgets is trained once
    for frac in FRACTIONS:
        plan = plan_from_table(table, shape, frac * bp_forecast, s["batch"], s["seq"])
        path = RUNS / f"{key}-planned-{frac:g}.yaml"
        plan.save(path)
        spec = {
            **common,
            "method": "sparse",
            "options": {"scheme": str(path)},
            "lr": s["lr"],
            "budget_bytes": frac * bp["training_bytes"],
            "plan_budget_bytes": frac * bp_forecast,
            "forecast": plan.forecast,
        }
        same = done.get(json.dumps(plan.scheme.to_dict()["updates"]))
        name = f"{key}-planned-{frac:g}"
        if same is not None and not (RUNS / f"{name}.json").is_file():
            (RUNS / f"{name}.json").write_text(json.dumps({**same, **spec, "name": name}))
        done[json.dumps(plan.scheme.to_dict()["updates"])] = run(spec, name)
    if key != "minilm":  # compile once, on the small model: Inductor is slow on a shared CPU
        return
    scheme_path = str(RUNS / f"{key}-planned-0.25.yaml")
    run(
        {
            **common,
            "steps": 12,
            "method": "sparse",
            "options": {"scheme": scheme_path},
            "lr": s["lr"],
            "compile": True,
        },
        f"{key}-compiled-0.25",
    )


# -- report: JSON, Markdown, plots ------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def summarize(key: str) -> dict | None:
    """Rows of one model and, per budget, the planned scheme against the best fixed one."""
    s = SETUPS[key]
    runs = {p.stem[len(key) + 1 :]: json.loads(p.read_text()) for p in RUNS.glob(f"{key}-*.json")}
    if "backprop" not in runs:
        return None
    higher = s["metric"] == "accuracy"
    bp, rows, budgets = runs["backprop"], [], []
    for name, r in sorted(runs.items()):
        rows.append(
            {
                "name": name,
                "metric": r["metrics"][s["metric"]],
                "training_mib": r["training_bytes"] / 2**20,
                "step_s": r["step_s"],
                "forward_s": r["forward_s"],
                "step_over_forward": r["step_s"] / r["forward_s"],
                "bp_over_step": bp["step_s"] / r["step_s"],
                # the same ratio with each step divided by its own process's forward: robust to
                # the machine's load changing between processes
                "bp_over_step_norm": (bp["step_s"] / bp["forward_s"])
                / (r["step_s"] / r["forward_s"]),
                "compile": r.get("compile"),
            }
        )
    fixed = [r for n, r in runs.items() if n.startswith("fixed-")]
    for frac in FRACTIONS:
        planned = runs.get(f"planned-{frac:g}")
        if planned is None:
            continue
        budget = planned["budget_bytes"]
        # the best fixed scheme whose measured memory is at most the planned one's
        fits = [r for r in fixed if r["training_bytes"] <= max(budget, planned["training_bytes"])]
        best = (max if higher else min)(fits, key=lambda r: r["metrics"][s["metric"]], default=None)
        pm = planned["metrics"][s["metric"]]
        bm = best["metrics"][s["metric"]] if best else None
        budgets.append(
            {
                "fraction": frac,
                "budget_mib": budget / 2**20,
                "planned_mib": planned["training_bytes"] / 2**20,
                "forecast_mib": planned["forecast"]["training_bytes"] / 2**20,
                "planned_metric": pm,
                "best_fixed": best["name"][len(key) + 7 :] if best else None,
                "best_fixed_mib": best["training_bytes"] / 2**20 if best else None,
                "best_fixed_metric": bm,
                "planned_wins": bm is None or (pm > bm if higher else pm < bm),
            }
        )
    return {
        "model": s["model"],
        "data": s["data"],
        "metric": s["metric"],
        "setup": s,
        "rows": rows,
        "budgets": budgets,
    }


def report() -> None:
    out = {k: v for k in SETUPS if (v := summarize(k))}
    (RESULTS / "planning.json").write_text(json.dumps(out, indent=1))
    lines = [
        "# Planned sparse schemes vs fixed schemes, backprop and LoRA",
        "",
        "Generated by `benchmarks/planning.py` (one torch thread per process, shared "
        "2-core machine). Training memory = peak RSS during the steps minus RSS with "
        "model and data loaded and the weights paged in by one inference forward, in a fresh "
        "process per row. Step and forward: medians in the same process; the last column "
        "divides backprop's step/forward by this row's (robust to load changing between rows). "
        "Best fixed: the fixed built-in of best metric whose measured memory is at most "
        "max(budget, the planned scheme's measured memory).",
        "",
    ]
    for key, r in out.items():
        st = r["setup"]
        lines += [
            f"## {r['model']} on {r['data']} ({r['metric']}; batch {st['batch']}, "
            f"{st['seq']} tokens, {st['steps']} steps)",
            "",
            "| configuration | " + r["metric"] + " | training memory MiB | step s | "
            "forward s | step / forward | backprop step / step | same, forward-normalized |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['name']} | {row['metric']:.4g} | {row['training_mib']:.0f} | "
                f"{row['step_s']:.3f} | {row['forward_s']:.3f} | "
                f"{row['step_over_forward']:.2f} | {row['bp_over_step']:.2f} | "
                f"{row['bp_over_step_norm']:.2f} |"
            )
        lines += [
            "",
            "| budget (of backprop) | budget MiB | planned: forecast / measured MiB | "
            f"planned {r['metric']} | best fixed within it | its MiB | its {r['metric']} "
            "| planned better |",
            "|---|---:|---:|---:|---|---:|---:|---|",
        ]
        for b in r["budgets"]:
            fixed = (
                (f"{b['best_fixed']} | {b['best_fixed_mib']:.0f} | {b['best_fixed_metric']:.4g}")
                if b["best_fixed"]
                else "none fits | | "
            )
            lines.append(
                f"| 1/{round(1 / b['fraction'])} | {b['budget_mib']:.0f} | "
                f"{b['forecast_mib']:.0f} / {b['planned_mib']:.0f} | "
                f"{b['planned_metric']:.4g} | {fixed} | "
                f"{'yes' if b['planned_wins'] else 'no'} |"
            )
        for row in [row for row in r["rows"] if row["compile"]]:
            c = row["compile"]
            lines += [
                "",
                f"Ahead-of-time graph ({row['name']}, torch.compile backend {c['backend']}): "
                f"compiled={c['compiled']}, capture + compile + first step {c['compile_s']:.1f} s; "
                f"median step eager {c['eager_step_s']:.3f} s -> compiled {row['step_s']:.3f} s "
                f"(x{c['eager_step_s'] / row['step_s']:.2f}), same process. {c.get('error') or ''}",
            ]
        lines.append("")
        _plot(key, r)
    (RESULTS / "planning.md").write_text("\n".join(lines))


def _plot(key: str, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    groups = {"planned": "o", "fixed": "s", "backprop": "*", "lora": "^"}
    for group, marker in groups.items():
        pts = [row for row in r["rows"] if row["name"].startswith(group)]
        ax.scatter(
            [p["training_mib"] for p in pts],
            [p["metric"] for p in pts],
            marker=marker,
            s=80,
            label=group,
        )
        for p in pts:
            ax.annotate(
                p["name"].removeprefix(group + "-"),
                (p["training_mib"], p["metric"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set(
        xlabel="measured training memory (MiB, log)",
        ylabel=r["metric"],
        title=f"{r['model']} on {r['data']}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(RESULTS / f"planning-{key}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    elif sys.argv[1] == "report":
        report()
    else:
        bench(sys.argv[1])
