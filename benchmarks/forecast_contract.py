"""The forecast as a contract: what `finetune` prints before step 1 against what the run does.

Each configuration is a real `finetune` run in a fresh process (`edgetune.bench.worker`), one
after another in one run of this script, with the final evaluation off (the training peak is
what the forecast describes; the evaluation has its own, `eval_batch`):

- MiniLM (the bundled weights) on Reuters-R8, batch 16 x 64, every method;
- SmolLM2-135M (bundled) on `brown`, batch 4 x 128: every method, and LoRA over the GGUF file's
  own Q4_1 blocks with the lean options;
- t5-small (random weights) on `email-subjects` summaries, batch 8 x 128 -> 32.

Per run: the forecast's whole-process peak (runtime measured on this machine + what the load
kept + the step's peak) against the measured peak resident set of training; the forecast's
step time on `this-machine` (its kernels timed by `edgetune bench hardware`'s tables, measured
again at the start of this script) against the median measured step; the expected total time
the run states before step 1 and after 10 % of its steps (`eta_s` in metrics.jsonl) against
its real total.

Writes benchmarks/results/forecast_contract.{json,md,png}.

    python benchmarks/forecast_contract.py                  # about 20 minutes here, idle
    python benchmarks/forecast_contract.py --only minilm --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WORKER = f"{__file__}:worker"
LEAN = {"train.checkpointing": True, "train.chunked_loss": True, "train.lean_allocator": True}
MINILM = {"model.name": "minilm-l6", "data.name": "reuters-r8", "data.seq_len": 64,
          "train.batch_size": 16, "train.lr": 1e-4}  # fmt: skip
SMOL = {"model.name": "smollm2-135m", "data.name": "brown", "data.seq_len": 128,
        "train.batch_size": 4, "train.lr": 1e-4}  # fmt: skip
T5 = {"model.name": "t5-small", "model.random_init": True, "data.name": "email-subjects",
      "data.task": "summarize", "data.seq_len": 128, "data.target_len": 32,
      "train.batch_size": 8, "train.lr": 1e-4}  # fmt: skip
RUNS = {
    "minilm": {
        "backprop": {**MINILM, "train.method": "backprop"},
        "sparse qkv-ffn1-2": {**MINILM, "train.method": "sparse", "method.scheme": "qkv-ffn1-2"},
        "lora": {**MINILM, "train.method": "lora"},
        "mezo": {**MINILM, "train.method": "mezo", "train.lr": 1e-6},
        "pepita": {**MINILM, "train.method": "pepita", "train.lr": 1e-3},
        "mempepita": {**MINILM, "train.method": "mempepita", "train.lr": 1e-3},
        "forward_grad": {**MINILM, "train.method": "forward_grad", "train.lr": 1e-4},
        "hybrid": {**MINILM, "train.method": "hybrid"},
    },
    "smollm2": {
        "backprop": {**SMOL, "train.method": "backprop"},
        "lora": {**SMOL, "train.method": "lora", "train.lr": 1e-3},
        "sparse last-2": {**SMOL, "train.method": "sparse", "method.scheme": "last-2"},
        "mezo": {**SMOL, "train.method": "mezo", "train.lr": 1e-6},
        "pepita": {**SMOL, "train.method": "pepita", "train.lr": 1e-3},
        "mempepita": {**SMOL, "train.method": "mempepita", "train.lr": 1e-3},
        "forward_grad": {**SMOL, "train.method": "forward_grad", "train.lr": 1e-4},
        "hybrid": {**SMOL, "train.method": "hybrid"},
        "lora, GGUF Q4_1 base, lean": {**SMOL, "train.method": "lora", "train.lr": 1e-3,
                                       "model.weights": "gguf", **LEAN},
    },
    "t5": {
        "backprop": {**T5, "train.method": "backprop"},
        "lora": {**T5, "train.method": "lora", "train.lr": 1e-3},
        "mezo": {**T5, "train.method": "mezo", "train.lr": 1e-6},
    },
}  # fmt: skip


def worker(spec: dict) -> dict:
    """One run; what it forecast and what it measured."""
    from edgetune.config import load_config
    from edgetune.train import finetune

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = load_config(None, {**spec["config"], "out": str(out), "train.final_eval": False,
                                 "train.max_steps": spec["steps"]})  # fmt: skip
        m = finetune(cfg).metrics
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"forecast": m["forecast"], "memory": m["memory"], "time": m["time"],
            "steps": [{k: r[k] for k in ("step", "step_s", "eta_s", "rss_mb")}
                      for r in records if "step_s" in r]}  # fmt: skip


def _row(model: str, name: str, r: dict) -> dict:
    f, steps = r["forecast"], r["steps"]
    times = [s["step_s"] for s in steps]
    total = sum(times)
    at = max(1, len(steps) // 10)  # the step at 10 % of the run
    eta10 = sum(times[:at]) + steps[at - 1]["eta_s"]
    latency = f.get("step_s")
    return {
        "model": model, "run": name,
        "peak_predicted_mb": f["process_peak_mb"],
        "peak_measured_mb": r["memory"]["train_peak_rss_mb"],
        "runtime_mb": f["runtime_mb"], "loaded_mb": f["loaded_mb"], "step_peak_mb": f["peak_mb"],
        "step_predicted_s": latency, "step_measured_s": statistics.median(times),
        "total_s": total,
        "eta_step1_s": None if latency is None else latency * len(steps),
        "eta_10pct_s": eta10, "eta_10pct_at": at,
    }  # fmt: skip


def _err(pred: float | None, meas: float) -> float | None:
    return None if pred is None else pred / meas - 1


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# The forecast as a contract",
        "",
        f"Load average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} "
        f"after; {result['threads']} threads; {result['steps']} steps a run; this machine's "
        f"runtime {result['runtime_mb']:.0f} MiB, fp32 GEMM peak "
        f"{result['gemm_fp32'] / 1e9:.1f} GFLOP/s. Error = predicted / measured - 1. Targets: "
        "peak within 10 %, step time within 20 %.",
        "",
        "| model | run | process peak predicted | measured | error | runtime + loaded + step "
        "| step s predicted | measured | error | ETA error at step 1 | at 10 % |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['run']} | failed: {r['error']} |||||||||")
            continue
        pe = _err(r["peak_predicted_mb"], r["peak_measured_mb"])
        se = _err(r["step_predicted_s"], r["step_measured_s"])
        e1 = _err(r["eta_step1_s"], r["total_s"])
        e10 = _err(r["eta_10pct_s"], r["total_s"])

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x * 100:+.0f} %"

        sp = "-" if r["step_predicted_s"] is None else f"{r['step_predicted_s']:.3f}"
        lines.append(
            f"| {r['model']} | {r['run']} | {r['peak_predicted_mb']:,.0f} MiB | "
            f"{r['peak_measured_mb']:,.0f} MiB | {pct(pe)} | {r['runtime_mb']:.0f} + "
            f"{r['loaded_mb']:.0f} + {r['step_peak_mb']:.0f} | {sp} | "
            f"{r['step_measured_s']:.3f} | {pct(se)} | {pct(e1)} | {pct(e10)} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    names = [f"{r['model']}\n{r['run']}" for r in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.9), 8))
    x = range(len(rows))
    pairs = [("peak_predicted_mb", "peak_measured_mb", "MiB"),
             ("step_predicted_s", "step_measured_s", "s")]  # fmt: skip
    for ax, (pk, mk, unit) in zip(axes, pairs, strict=True):
        ax.bar([i - 0.2 for i in x], [r[pk] or 0 for r in rows], 0.4, label="forecast")
        ax.bar([i + 0.2 for i in x], [r[mk] for r in rows], 0.4, label="measured")
        ax.set_xticks(list(x), names, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel(f"{'process peak' if unit == 'MiB' else 'step time'} ({unit})")
        ax.legend()
    axes[0].set_title("What finetune forecasts before step 1, and what the run measures")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(RUNS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from edgetune.bench.tables import write_json_md
    from edgetune.bench.worker import run_worker
    from edgetune.measure.gemm import measure_this_machine
    from edgetune.measure.runtime import runtime

    torch.set_num_threads(args.threads)
    result: dict = {"load_before": os.getloadavg(), "threads": args.threads, "steps": args.steps}
    result["gemm_fp32"] = measure_this_machine()["peak_flops"]["fp32"]
    rt = runtime(fresh=True)
    assert rt is not None
    result["runtime_mb"] = rt.bytes / 2**20
    rows = []
    for model, runs in RUNS.items():
        if args.only not in (None, model):
            continue
        for name, config in runs.items():
            print(f"-- {model}: {name}", flush=True)
            r = run_worker(WORKER, {"config": {**config, "train.threads": args.threads},
                                    "steps": args.steps}, threads=args.threads)  # fmt: skip
            rows.append({"model": model, "run": name, **r} if "error" in r
                        else _row(model, name, r))  # fmt: skip
    result["rows"] = rows
    result["load_after"] = os.getloadavg()
    name = "forecast_contract" if args.only is None else f"forecast_contract-{args.only}"
    paths = write_json_md(result, RESULTS, name, table(result))
    png = RESULTS / f"{name}.png"
    plot(result, png)
    for p in [*paths, png]:
        print(p)


if __name__ == "__main__":
    main()
