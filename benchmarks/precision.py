"""The precision the device keeps: a low-precision frozen base, bf16 compute, 1B in 2 GB.

Every configuration runs in a fresh process (`edgetune.bench.worker`), one after another in
one run, so each peak resident set is its own:

- baseline: the runtime without weights (imports, data, tokenizer, tokenized splits, and what
  a first forward and backward leave resident, from a tiny model's step): what the forecast's
  step tensors come on top of;
- SmolLM2-135M on `brown`, batch 4 x 128: fp32 inference (a no-grad forward over the test
  blocks), LoRA over the fp32 base (30 steps), LoRA over the GGUF file's own blocks (Q4_1,
  never held in fp32) with and without the lean options (activation checkpointing, chunked
  loss, lean allocator), and over a q4_0 base (the file's blocks quantized again); held-out
  perplexity on the test blocks at the end (batch 4);
- MiniLM on Reuters-R8 (the demo's setup): backprop steps in fp32 and bf16 autocast
  alternated in one process (medians), and the demo run in both dtypes (test accuracy);
- llama-1b (Llama-3.2-1B's shape, random weights) LoRA over a q4_0 base, batch 1 x 256, with
  the lean options: peak resident set and step time.

Predicted whole-process peak = baseline + the forecast's step peak (weights included).
Writes benchmarks/results/precision.{json,md,png}.

    python benchmarks/precision.py                 # everything (about 40 minutes here)
    python benchmarks/precision.py --only smollm2  # or minilm, llama (precision-smollm2.*)
    python benchmarks/precision.py --only smollm2 llama --update  # these sections anew in
                                                   # precision.*, the others kept as they were
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WORKER = f"{__file__}:worker"
SECTIONS = ("smollm2", "minilm", "llama")
LEAN = {"train.checkpointing": True, "train.chunked_loss": True, "train.lean_allocator": True}
SMOL = {"model.name": "smollm2-135m", "data.name": "brown", "data.seq_len": 128,
        "train.batch_size": 4, "train.max_steps": 30, "train.method": "lora",
        "train.lr": 1e-3, "data.eval_samples": 200, "train.eval_batch_size": 4}  # fmt: skip
LLAMA = {"model.name": "llama-1b", "model.random_init": True, "model.weights": "q4_0",
         "data.name": "brown", "data.seq_len": 256, "train.batch_size": 1,
         "train.max_steps": 3, "train.method": "lora", "train.final_eval": False,
         **LEAN}  # fmt: skip
DEMO = {"model.name": "minilm-l6", "data.name": "reuters-r8", "data.seq_len": 64,
        "data.train_samples": 3200, "train.batch_size": 16, "train.lr": 1.5e-4,
        "train.warmup_ratio": 0.1, "train.method": "backprop"}  # fmt: skip


# -- workers (fresh processes) --------------------------------------------------------------
def worker(spec: dict) -> dict:
    return {"baseline": _baseline, "infer": _infer, "train": _train,
            "alternate": _alternate}[spec["kind"]](spec)  # fmt: skip


def _baseline(spec: dict) -> dict:
    """The runtime a run holds besides its weights and step: imports, data, tokenizer."""
    import torch  # noqa: F401  # what every run imports
    import transformers  # noqa: F401
    from transformers import AutoTokenizer

    from edgetune.config import load_config
    from edgetune.data.load import load_data
    from edgetune.data.tasks import tokenize
    from edgetune.measure.memory import peak_rss_mb, rss_mb, trim_heap
    from edgetune.models.bundled import bundled_path
    from edgetune.pipeline import quiet_libraries

    quiet_libraries()
    cfg = load_config(None, spec["config"])
    text = load_data(cfg.data)
    tokenizer = AutoTokenizer.from_pretrained(bundled_path("smollm2-135m"))
    data = tokenize(text, tokenizer, cfg.data, "decoder")
    del text  # as the pipeline does: the corpus lives on as tokens only
    _warm_up()
    trim_heap()
    return {"rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(), "blocks": len(data.splits["train"])}


def _warm_up() -> None:
    """A step of a tiny causal LM (a few thousand weights): what the runtime keeps once it has
    run a forward and a backward (autograd's engine, the kernels' caches, thread pools)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    config = LlamaConfig(**sizes)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()


def _infer(spec: dict) -> dict:
    """A no-grad forward over the test blocks (batch as the runs train): the inference peak."""
    import torch

    from edgetune.config import load_config
    from edgetune.data.tasks import batches
    from edgetune.measure.memory import peak_rss_mb
    from edgetune.models.quantized import held_bytes
    from edgetune.pipeline import load

    session = load(load_config(None, spec["config"]))
    t = session.cfg.train
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches(session.data.splits["test"], t.batch_size, session.pad_id):
            session.model(**batch)
    held = held_bytes(session.model)
    return {"peak_rss_mb": peak_rss_mb(), "weights_mb": (held["packed"] + held["dense"]) / 2**20,
            "forward_s": time.perf_counter() - start}  # fmt: skip


def _train(spec: dict) -> dict:
    from edgetune.config import load_config
    from edgetune.train import finetune

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, {**spec["config"], "out": str(Path(tmp) / "run")})
        m = finetune(cfg).metrics
    return {"memory": m["memory"], "forecast": m["forecast"], "time": m["time"],
            "eval": m.get("eval"), "loss_first": m["train"]["loss_first"],
            "loss_last": m["train"]["loss_last"]}  # fmt: skip


def _alternate(spec: dict) -> dict:
    """Backprop steps on the same model, fp32 and bf16 autocast alternated: median times."""
    import torch

    from edgetune.config import load_config
    from edgetune.data.tasks import collate
    from edgetune.pipeline import load

    session = load(load_config(None, spec["config"]))
    method = session.build_method()
    train = session.data.splits["train"]
    bs = session.cfg.train.batch_size
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(2 * spec["steps"] + 2):
        dtype = "bf16" if i % 2 else "fp32"
        batch = collate(train[(i * bs) % len(train) :][:bs], session.pad_id)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else _null()
        start = time.perf_counter()
        with ctx:
            method.step([batch])
        if i >= 2:  # the first of each is a warm-up
            times[dtype].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _null():
    import contextlib

    return contextlib.nullcontext()


# -- the run --------------------------------------------------------------------------------
def _run(label: str, spec: dict, threads: int) -> dict:
    from edgetune.bench.worker import run_worker

    print(f"-- {label}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    out = run_worker(WORKER, spec, threads=threads, timeout=None)
    out["wall_s"] = time.perf_counter() - start
    if "error" in out:
        print(f"   failed: {out['error']}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    ap.add_argument(
        "--update",
        action="store_true",
        help="with --only: write them into precision.* and keep its other sections",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alternations", type=int, default=12)
    ap.add_argument("--rows", nargs="+", help="SmolLM2 rows to run, by label (default: all)")
    ap.add_argument("--steps", type=int, default=30, help="SmolLM2 training steps")
    ap.add_argument("--eval-samples", type=int, default=200, help="SmolLM2 test blocks")
    args = ap.parse_args()
    th = args.threads
    if args.rows and args.update:
        ap.error("--update writes whole sections; --rows runs part of one")
    only = args.only or list(SECTIONS)
    SMOL.update({"train.max_steps": args.steps, "data.eval_samples": args.eval_samples})
    result: dict = {"load_before": os.getloadavg(), "threads": th, "cpu_bf16": _cpu_bf16()}
    base = _run("baseline", {"kind": "baseline", "config": SMOL}, th)
    result["baseline"] = base
    if "smollm2" in only:
        runs = {
            "fp32 inference": {"kind": "infer", "config": SMOL},
            "LoRA, fp32 base": {"kind": "train", "config": SMOL},
            "LoRA, fp32 base, lean": {"kind": "train", "config": {**SMOL, **LEAN}},
            "LoRA, GGUF Q4_1 blocks": {"kind": "train",
                                       "config": {**SMOL, "model.weights": "gguf"}},
            "LoRA, GGUF Q4_1 blocks, lean": {
                "kind": "train", "config": {**SMOL, "model.weights": "gguf", **LEAN}},
            "LoRA, q4_0 base, lean": {
                "kind": "train", "config": {**SMOL, "model.weights": "q4_0", **LEAN}},
        }  # fmt: skip
        unknown = set(args.rows or []) - set(runs)
        if unknown:
            ap.error(f"unknown rows {sorted(unknown)}; the rows: {', '.join(runs)}")
        result["smollm2"] = {k: _run(k, v, th) for k, v in runs.items()
                             if not args.rows or k in args.rows}  # fmt: skip
    if "minilm" in only:
        result["minilm"] = {
            "alternated": _run("MiniLM fp32/bf16 alternated",
                               {"kind": "alternate", "config": DEMO,
                                "steps": args.alternations}, th),
            "demo fp32": _run("demo fp32", {"kind": "train", "config": DEMO}, th),
            "demo bf16": _run("demo bf16", {"kind": "train",
                                            "config": {**DEMO, "train.dtype": "bf16"}}, th),
        }  # fmt: skip
    if "llama" in only:
        result["llama"] = {
            "LoRA, q4_0 base, lean": _run("llama-1b", {"kind": "train", "config": LLAMA}, th)
        }
    result["load_after"] = os.getloadavg()
    from edgetune.bench.tables import write_json_md

    name = "precision" if args.only is None or args.update else "precision-" + "-".join(only)
    if args.update:
        old = json.loads((RESULTS / f"{name}.json").read_text())
        kept = [s for s in SECTIONS if s not in only and s in old]
        # a kept section keeps the baseline it was predicted on
        based = {s: old.get("based", {}).get(s, old["baseline"]["rss_mb"]) for s in kept}
        result = {**{s: old[s] for s in kept}, **result, "kept": kept, "based": based}
    paths = write_json_md(result, RESULTS, name, table(result))
    png = RESULTS / f"{name}.png"
    plot(result, png)
    for p in [*paths, png]:
        print(p)


def _cpu_bf16() -> bool:
    from edgetune.placement import cpu_has_bf16

    return cpu_has_bf16()


def _base(r: dict, section: str) -> float:
    """The runtime baseline a section's predictions add to: this run's, or a kept section's."""
    return r.get("based", {}).get(section, r["baseline"].get("rss_mb", 0.0))


def _whole(run: dict, baseline: float) -> float | None:
    f = run.get("forecast")
    return None if not f else baseline + f["peak_mb"]


def table(r: dict) -> str:
    base = r["baseline"].get("rss_mb", 0.0)
    lines = [
        "# The precision the device keeps",
        "",
        f"Load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after; "
        f"{r['threads']} threads; native bf16: {r['cpu_bf16']}. Runtime baseline (imports, "
        f"data, tokenizer; no weights): {base:.0f} MiB. Predicted peak = baseline + the "
        "forecast's step peak. Lean: activation checkpointing, chunked loss, lean allocator.",
        "",
    ]
    if r.get("kept"):
        kept = ", ".join(f"{s} (baseline {_base(r, s):.0f} MiB)" for s in r["kept"])
        lines += [f"Kept from an earlier run of this benchmark: {kept}.", ""]
    if "smollm2" in r:
        s = r["smollm2"]
        base = _base(r, "smollm2")
        infer = s["fp32 inference"].get("peak_rss_mb")
        lines += [
            f"## SmolLM2-135M, LoRA on brown, batch 4 x 128, {SMOL['train.max_steps']} steps",
            "",
            "| run | peak RSS MiB | x fp32 inference | predicted MiB | error | weights MiB |"
            " step s | test ppl |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, run in s.items():
            if "error" in run:
                lines.append(f"| {label} | failed: {run['error'][:80]} | | | | | | |")
                continue
            peak = run.get("peak_rss_mb") or run["memory"]["peak_rss_mb"]
            weights = run.get("weights_mb") or run["memory"]["weights_mb"]
            pred = _whole(run, base)
            err = f"{(pred - peak) / peak * 100:+.0f} %" if pred else ""
            step = run["time"]["step_s_median"] if "time" in run else None
            ppl = (run.get("eval") or {}).get("perplexity")
            lines.append(
                f"| {label} | {peak:.0f} | {peak / infer:.2f} | "
                f"{'' if pred is None else f'{pred:.0f}'} | {err} | {weights:.0f} | "
                f"{'' if step is None else f'{step:.2f}'} | "
                f"{'' if ppl is None else f'{ppl:.2f}'} |"
            )
        lines.append("")
    if "minilm" in r:
        m = r["minilm"]
        alt = m["alternated"]
        lines += ["## MiniLM on Reuters-R8, backprop, batch 16 x 64", ""]
        if "error" not in alt:
            lines.append(f"Alternated in one process: fp32 {alt['fp32']:.3f} s/step, bf16 "
                         f"{alt['bf16']:.3f} s/step: bf16 speed-up {alt['fp32'] / alt['bf16']:.2f}"
                         " (medians; below 1: slower).")  # fmt: skip
        for k in ("demo fp32", "demo bf16"):
            run = m[k]
            if "error" in run:
                lines.append(f"- {k}: not finished ({run['error'][:120]})")
            else:
                lines.append(f"- {k}: test accuracy {run['eval']['accuracy']:.4f}, "
                             f"{run['time']['step_s_median']:.3f} s/step, peak "
                             f"{run['memory']['peak_rss_mb']:.0f} MiB")  # fmt: skip
        lines.append("")
    if "llama" in r:
        run = r["llama"]["LoRA, q4_0 base, lean"]
        base = _base(r, "llama")
        lines += ["## llama-1b (Llama-3.2-1B shape, random weights), LoRA over q4_0, 1 x 256", ""]
        if "error" in run:
            lines.append(f"failed: {run['error']}")
        else:
            peak = run["memory"]["peak_rss_mb"]
            pred = _whole(run, base)
            train = run["memory"]["train_peak_rss_mb"]
            lines.append(f"Peak RSS {peak:.0f} MiB (training {train:.0f}); "
                         f"predicted {pred:.0f} MiB ({(pred - peak) / peak * 100:+.0f} %); "
                         f"weights {run['memory']['weights_mb']:.0f} MiB; "
                         f"{run['time']['step_s_median']:.1f} s/step.")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "smollm2" not in r:
        return
    s = {k: v for k, v in r["smollm2"].items() if "error" not in v}
    labels = list(s)
    peaks = [v.get("peak_rss_mb") or v["memory"]["peak_rss_mb"] for v in s.values()]
    base = _base(r, "smollm2")
    preds = [_whole(v, base) or 0.0 for v in s.values()]
    fig, ax = plt.subplots(figsize=(9, 4))
    y = range(len(labels))
    ax.barh([i + 0.2 for i in y], peaks, height=0.4, label="measured peak RSS")
    ax.barh([i - 0.2 for i in y], preds, height=0.4, label="predicted (baseline + forecast)")
    ax.axvline(base, color="grey", ls=":", label="runtime baseline")
    ax.set_yticks(list(y), labels)
    ax.set_xlabel("MiB")
    ax.set_title("SmolLM2-135M, batch 4 x 128: peak resident memory")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
