"""The cost model (`edgetune.cost`) against measurement on real-size models with random weights.

Models: MiniLM-L6 (BERT, 8-label classifier), SmolLM2-135M (Llama, LM head), T5-small
(encoder-decoder, LM head), built from the registry's configs with eager attention (what the
cost model describes) and dropout 0 (dropout masks are not modelled). Checks (issue 4):

- parameter counts: `n_params` == sum(p.numel()) (exact);
- FLOPs: 2 x forward and backward MACs vs `FlopCounterMode` (5 %), backprop and a sparse scheme;
- activations: `memory.activations` vs bytes saved for backward (saved-tensor hooks; 10 %),
  backprop and the sparse scheme (requires_grad set by the real `sparse` method);
- peak memory: predicted `memory.peak - weights - optimizer state` vs the growth of the resident
  high-water mark over two training steps of the real method in a fresh interpreter (15 %),
  for backprop, sparse, mezo, pepita, mempepita and forward_grad (over LoRA). As
  tests/cost/_rss_step.py: a warm-up step on a 1 x 8 batch makes weights, optimizer state and
  library buffers resident, then the
  high-water mark is reset (/proc/self/clear_refs, Linux) and glibc's mmap threshold is fixed
  (MALLOC_MMAP_THRESHOLD_=65536) so freed blocks leave the resident set.

Writes benchmarks/results/cost_vs_measured.{json,md}.

    python benchmarks/cost_vs_measured.py
    python benchmarks/cost_vs_measured.py --models minilm-l6 --rss-methods backprop,mezo
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
# model -> (head, labels, batch and lengths for FLOPs/activations, for the RSS steps, scheme)
CONFIGS: dict[str, dict[str, Any]] = {
    "minilm-l6": {"head": "classifier", "labels": 8, "flops": (2, 128, 0), "rss": (16, 128, 0),
                  "scheme": "qkv-ffn1-2"},
    "smollm2-135m": {"head": "lm", "labels": 2, "flops": (2, 128, 0), "rss": (4, 128, 0),
                     "scheme": "last-2"},
    "t5-small": {"head": "lm", "labels": 2, "flops": (2, 128, 32), "rss": (8, 128, 32),
                 "scheme": "last-2"},
}  # fmt: skip
RSS_METHODS = ["backprop", "sparse", "mezo", "pepita", "mempepita", "forward_grad"]


def build(name: str):
    """The registry model with random weights, eager attention, dropout off."""
    import torch
    import transformers as T

    from edgetune.models.registry import SPECS

    T.logging.set_verbosity_error()
    c = CONFIGS[name]
    cfg = SPECS[name].config()
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout_rate",
                "attention_dropout", "classifier_dropout"):  # fmt: skip
        if hasattr(cfg, key):
            setattr(cfg, key, 0.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    if c["head"] == "classifier":
        cfg.num_labels = c["labels"]
        model = T.AutoModelForSequenceClassification.from_config(cfg)
    elif cfg.is_encoder_decoder:
        model = T.AutoModelForSeq2SeqLM.from_config(cfg)
    else:
        model = T.AutoModelForCausalLM.from_config(cfg)
    return model.eval(), cfg


def batch_for(cfg, head: str, labels: int, b: int, t: int, tgt: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=g)
    if head == "classifier":
        return {"input_ids": ids, "labels": torch.randint(0, labels, (b,), generator=g)}
    if cfg.is_encoder_decoder:
        return {"input_ids": ids, "labels": torch.randint(0, cfg.vocab_size, (b, tgt), generator=g)}
    return {"input_ids": ids, "labels": ids.clone()}


def method_for(name: str, model, scheme: str | None = None, lr: float = 1e-4):
    from edgetune.methods import build_method
    from edgetune.methods.base import MethodSettings

    options = {"scheme": scheme} if name == "sparse" else {}
    return build_method(name, model, MethodSettings(lr=lr, total_steps=10, options=options))


def predict(name: str, cfg, method: str, b: int, t: int, tgt: int, scheme=None, optimizer=None):
    """The cost model's step (`edgetune.forecast.predict`) on the built model's own config;
    `scheme`: the real method's resolved scheme; `optimizer`: None for the method's own."""
    from edgetune.cost import shape_from_config
    from edgetune.forecast import StepInputs, predict

    c = CONFIGS[name]
    inputs = StepInputs(shape_from_config(cfg.to_dict(), name), b, t, head=c["head"],
                        n_labels=c["labels"], tgt_seq=tgt, optimizer=optimizer)  # fmt: skip
    return predict(inputs, method, {"scheme": scheme} if scheme is not None else {})


def static_checks(name: str) -> dict[str, Any]:
    """Parameter count, FLOPs and saved bytes, backprop and the sparse scheme."""
    from edgetune.cost import n_params, shape_from_config
    from edgetune.measure.flops import count_flops
    from edgetune.measure.saved import saved_bytes

    c = CONFIGS[name]
    b, t, tgt = c["flops"]
    out: dict[str, Any] = {}
    for method in ("backprop", "sparse"):
        model, cfg = build(name)
        if method == "backprop":
            shape = shape_from_config(cfg.to_dict(), name)
            out["params"] = {"predicted": n_params(shape, c["head"], c["labels"]),
                             "measured": sum(p.numel() for p in model.parameters())}  # fmt: skip
            scheme = None
        else:
            scheme = method_for("sparse", model, c["scheme"]).scheme
        model.eval()
        batch = batch_for(cfg, c["head"], c["labels"], b, t, tgt)

        def loss_fn(model=model, batch=batch):
            return model(**batch).loss

        flops = count_flops(loss_fn)
        saved = saved_bytes(loss_fn, model)
        p = predict(name, cfg, method, b, t, tgt, scheme)
        trained = sum(q.numel() for q in model.parameters() if q.requires_grad)
        out[method] = {
            "scheme": scheme.name if scheme else None,
            "fwd_flops": {"predicted": 2 * p.fwd_macs, "measured": flops.forward},
            "bwd_flops": {"predicted": 2 * p.bwd_macs, "measured": flops.backward},
            "activations": {"predicted": p.memory.activations, "measured": saved},
            "trained_params": {"predicted": p.trained_params, "measured": trained},
        }
        del model
        gc.collect()
    return out


def rss_worker(spec: dict[str, str]) -> dict[str, float]:
    """Run in a fresh interpreter (`rss_check`): growth of the resident high-water mark over
    two steps of `spec["method"]` on `spec["model"]`."""
    import torch

    from edgetune.measure.memory import resident_growth

    name, method = spec["model"], spec["method"]
    torch.set_num_threads(1)
    c = CONFIGS[name]
    b, t, tgt = c["rss"]
    model, cfg = build(name)
    m = method_for(method, model, c["scheme"], lr=1e-6)
    small = batch_for(cfg, c["head"], c["labels"], 1, 8, min(tgt, 8) if tgt else 0)
    full = batch_for(cfg, c["head"], c["labels"], b, t, tgt)
    growth = resident_growth(lambda: (m.step([small]), m.step([small])),
                             lambda: (m.step([full]), m.step([full])))  # fmt: skip
    opt = {"mezo": None, "pepita": "sgd", "mempepita": "sgd"}.get(method, "adamw")
    p = predict(name, cfg, method, b, t, tgt, getattr(m, "scheme", None), opt)
    mem = p.memory
    return {"measured": growth, "predicted": mem.peak - mem.weights - mem.optimizer,
            "predicted_peak": mem.peak, "weights": mem.weights}  # fmt: skip


def rss_check(name: str, method: str) -> dict[str, Any]:
    """`rss_worker` in a fresh interpreter (one thread, glibc's mmap threshold fixed); a
    failure comes back as {"error": ...}."""
    from edgetune.bench.worker import run_worker

    return run_worker(f"{__file__}:rss_worker", {"model": name, "method": method}, threads=1,
                      timeout=1800, env={"MALLOC_MMAP_THRESHOLD_": "65536"})  # fmt: skip


def _err(d: dict) -> float | None:
    return None if not d.get("measured") else d["predicted"] / d["measured"] - 1


def table(results: dict[str, Any]) -> str:
    lines = [
        "Predicted (edgetune.cost) vs measured, random-weight models, eager attention, dropout "
        "off, fp32. Error = predicted / measured - 1. Tolerances: parameters exact, FLOPs 5 %, "
        "activations 10 %, peak RSS 15 %.",
        "",
        "| model | check | method | predicted | measured | error | within |",
        "|---|---|---|---:|---:|---:|---|",
    ]

    def row(model, check, method, d, unit, tol):
        if "error" in d and isinstance(d["error"], str):
            lines.append(
                f"| {model} | {check} | {method} | - | failed: {d['error'][:80]} | - | - |"
            )
            return
        e = _err(d)
        ok = e is not None and abs(e) <= tol
        scale = {"M": 1e6, "GFLOP": 1e9, "MiB": 2**20}[unit]
        lines.append(
            f"| {model} | {check} | {method} | {d['predicted'] / scale:.3f} {unit} | "
            f"{d['measured'] / scale:.3f} {unit} | {'-' if e is None else f'{e * 100:+.1f} %'} | "
            f"{'yes' if ok else 'NO'} |"
        )

    for model, r in results.items():
        row(model, "parameters", "-", r["static"]["params"], "M", 0.0)
        for method in ("backprop", "sparse"):
            s = r["static"][method]
            label = method if method == "backprop" else f"sparse {s['scheme']}"
            row(model, "trained parameters", label, s["trained_params"], "M", 0.0)
            row(model, "forward FLOPs", label, s["fwd_flops"], "GFLOP", 0.05)
            row(model, "backward FLOPs", label, s["bwd_flops"], "GFLOP", 0.05)
            row(model, "saved activations", label, s["activations"], "MiB", 0.10)
        for method, d in r["rss"].items():
            row(model, "peak RSS growth (2 steps)", method, d, "MiB", 0.15)
    sizes = ", ".join(
        f"{m}: FLOPs/activations batch {c['flops'][0]} x {c['flops'][1]}"
        + (f" (target {c['flops'][2]})" if c["flops"][2] else "")
        + f", RSS batch {c['rss'][0]} x {c['rss'][1]}, sparse scheme {c['scheme']}"
        for m, c in CONFIGS.items()
        if m in results
    )
    return "\n".join(lines) + f"\n\nShapes: {sizes}.\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default=",".join(CONFIGS))
    ap.add_argument("--rss-methods", default=",".join(RSS_METHODS))
    args = ap.parse_args()
    from edgetune.io import atomic_write_text

    results: dict[str, Any] = {}
    for name in args.models.split(","):
        results[name] = {"static": static_checks(name), "rss": {}}
        print(name, json.dumps(results[name]["static"]), file=sys.stderr, flush=True)
        for method in filter(None, args.rss_methods.split(",")):
            results[name]["rss"][method] = rss_check(name, method)
            print(name, method, results[name]["rss"][method], file=sys.stderr, flush=True)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "cost_vs_measured.json", json.dumps(results, indent=1))
    text = table(results)
    atomic_write_text(RESULTS / "cost_vs_measured.md", text)
    print(text)


if __name__ == "__main__":
    main()
