"""Learning methods measured side by side: the logic `edgetune bench` and `benchmarks/` share.

Every measurement runs in a fresh interpreter (`edgetune.bench.worker`), so a peak resident set
belongs to one configuration only. Three kinds of worker, each loading its run through
`edgetune.pipeline`:

- `inference`: the model and data loaded as for training, then forward passes at the training
  batch without autograd: the inference peak RSS, and the forward time in eval mode (dropout
  off, the floor a training step is compared with) and in train mode (dropout on).
- `step`: one method on the loaded model; step 1 runs under torch's FLOP counter
  (FLOPs per step), step 2 under saved-tensor hooks (bytes autograd keeps for backward); the
  process's peak RSS is read after these two steps. Then `rounds` rounds alternate an eval-mode
  forward (no autograd) with a training step on the same batch, so step time and forward floor
  share the machine's load; the ratio is the median of the per-round ratios. The cost model's
  prediction for the same step comes along (`edgetune.forecast`, roofline on `this-machine`).
- `accuracy`: `edgetune.train.finetune` for `steps` optimizer steps (a fresh batch each), then
  the validation and test metrics on the first `eval_samples` rows of each split.

`sweep` picks each method's learning rate on the validation metric (a grid of factors around the
variant's default) and reports the test metric at the chosen one.
"""

from __future__ import annotations

import functools
import math
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetune.bench.worker import run_worker
from edgetune.config import RunConfig, load_config
from edgetune.errors import EdgetuneError
from edgetune.measure.timing import forward, timed
from edgetune.methods.registry import get_method
from edgetune.report.figures import metric_of


@dataclass(frozen=True)
class Setup:
    """What every method shares in one comparison."""

    model: str = "minilm-l6"
    data: str = "reuters-r8"
    task: str | None = None  # for a data file: classify | lm | ...
    batch: int = 16
    seq: int = 128
    steps: int = 100  # optimizer steps of the accuracy runs
    eval_samples: int = 500  # test rows scored after training
    rounds: int = 3  # timed step/forward rounds per step worker
    threads: int = 2


@dataclass(frozen=True)
class Variant:
    """One method with its options and learning rate."""

    label: str
    method: str
    lr: float
    options: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None  # optimizer steps of its accuracy run (None: the setup's)
    eval_before: bool = False  # its accuracy run also scores the untrained model on test
    train: dict[str, Any] = field(default_factory=dict)  # train.* settings of its runs

    @property
    def clip(self) -> bool:  # in-place updates cannot clip the global gradient norm
        return not self.options.get("in_place", False)


def minilm_variants(schemes: list[str]) -> list[Variant]:
    """The issue-3 line-up: backprop, sparse (each scheme plain, in place and without
    dropout), the forward-only rules with plain SGD, MeZO and LoRA."""
    sparse = [
        v
        for s in schemes
        for v in (
            Variant(f"sparse {s}", "sparse", 3e-4, {"scheme": s}),
            Variant(f"sparse {s} in-place", "sparse", 3e-4, {"scheme": s, "in_place": True}),
            Variant(f"sparse {s} no-dropout", "sparse", 3e-4, {"scheme": s, "dropout": False}),
        )
    ]
    return [
        Variant("backprop", "backprop", 1e-4),
        *sparse,
        Variant("pepita", "pepita", 1e-2),
        Variant("mempepita", "mempepita", 1e-2),
        Variant("mezo", "mezo", 1e-5),
        Variant("lora", "lora", 5e-4),
    ]


def smollm_variants() -> list[Variant]:
    return [
        Variant("backprop", "backprop", 5e-5),
        Variant("sparse last-2", "sparse", 1e-4, {"scheme": "last-2"}),
        Variant("lora", "lora", 5e-4),
        Variant("mezo", "mezo", 1e-6),
    ]


@dataclass(frozen=True)
class LeanTargets:
    """Issue 16's bar for a lean method, against the line-up's first variant (the reference)."""

    peak_over_inference: float  # measured step peak RSS at most this times inference's
    wall_over_reference: float  # training wall time at most this times the reference run's
    accuracy: float | None = None  # test accuracy (%) at least this (classification)
    gain_fraction: float | None = None  # LM: at least this share of the reference's ppl gain
    same_memory: float = 1.03  # a single counts as "at equal memory" up to this x the hybrid's


def lean_minilm_variants(steps: int = 600) -> list[Variant]:
    """The demo's backprop run (the reference), then methods near inference memory and at one
    block's memory, each hybrid beside the singles of its memory."""
    head = {"backprop_blocks": 0, "zo_trainable": "lora", "zo_lr": 1e-3}
    top = {"backprop_blocks": 1, "zo_trainable": "lora", "zo_lr": 1e-3}
    pepita = {"layers": "head", "optimizer": "adamw"}
    return [
        Variant("backprop (demo)", "backprop", 1.5e-4, steps=200, eval_before=True),
        Variant("sparse head", "sparse", 1e-3, {"scheme": "last-0"}, steps=steps),
        Variant("mezo lora", "mezo", 1e-3, {"trainable": "lora"}, steps=steps),
        Variant("mempepita head adamw", "mempepita", 1e-3, pepita, steps=steps),
        Variant("hybrid head + zo lora", "hybrid", 1e-3, head, steps=steps),
        Variant("sparse last-1", "sparse", 3e-4, {"scheme": "last-1"}, steps=steps),
        Variant("hybrid last-1 + zo lora", "hybrid", 3e-4, top, steps=steps),
    ]


def lean_smollm_variants(steps: int = 150) -> list[Variant]:
    """LoRA by backprop over every block for 30 steps (the reference); then, all with the
    chunked loss (no whole logits): zeroth-order over LoRA factors (twice the steps), and at
    two budgets LoRA by backprop on the top blocks alone and the hybrid of that top over
    zeroth-order LoRA below."""
    chunked = {"chunked_loss": True}
    units = ["qkv", "attn_out", "ffn1", "ffn2"]
    zo = {"top_trainable": "lora", "zo_trainable": "lora", "zo_lr": 1e-3}
    out = [
        Variant("lora (backprop)", "lora", 1e-3, steps=30, eval_before=True),
        Variant("mezo lora", "mezo", 1e-3, {"trainable": "lora"}, steps=2 * steps, train=chunked),
    ]
    for k, targets in ((2, ["qkv"]), (4, units)):
        label = f"last-{k}" + (" all units" if targets == units else "")
        out += [
            Variant(
                f"lora {label}",
                "lora",
                1e-3,
                {"layers": f"last-{k}", "target_modules": targets},
                steps=steps,
                train=chunked,
            ),
            Variant(
                f"hybrid lora {label} + zo lora",
                "hybrid",
                1e-3,
                {**zo, "backprop_blocks": k, "target_modules": targets},
                steps=steps,
                train=chunked,
            ),
        ]
    return out


def mixes_rules(method: str, options: dict[str, Any]) -> bool:
    """Whether a run's blocks learn by more than one rule (a backward top over a zeroth-order
    bottom): a hybrid plan, as the method's own rule says."""
    spec = get_method(method)
    return spec.rule_for(spec.parse(options)).below is not None


def lean_verdicts(summary: dict[str, Any], targets: LeanTargets) -> dict[str, Any]:
    """Per row: peak over inference, training wall time over the reference's, the test metric
    and whether the row meets `targets`; `goal_metric`, the test metric the target asks for
    (an LM's: the perplexity at that share of the reference's gain); per hybrid: the singles at
    equal or less measured peak memory and whether the hybrid's test metric beats all of them."""
    rows = summary["rows"]
    ref = rows[0].get("accuracy_run", {})
    ref_s = ref.get("train_s")
    before = metric_of({"eval": ref.get("test_before")})
    ref_metric = metric_of(ref)
    # the gain in log-perplexity (the loss) the reference made, and the perplexity at the share
    gain = math.log(before[1] / ref_metric[1]) if before and ref_metric else None
    goal: float | None = targets.accuracy
    if targets.gain_fraction is not None and before and gain is not None:
        goal = math.exp(math.log(before[1]) - targets.gain_fraction * gain)
    mixed = {r["label"]: mixes_rules(r["method"], r["options"]) for r in rows}
    out: dict[str, dict[str, Any]] = {}
    for r in rows[1:]:
        acc = r.get("accuracy_run", {})
        m = metric_of(acc)
        if "error" in r or m is None or not ref_s:
            out[r["label"]] = {"meets": False, "hybrid": mixed[r["label"]]}
            continue
        v: dict[str, Any] = {
            "peak_over_inference": r["peak_over_inference"],
            "wall_over_reference": acc["train_s"] / ref_s,
            "metric": m[1],
            "hybrid": mixed[r["label"]],
        }
        ok = (v["peak_over_inference"] <= targets.peak_over_inference
              and v["wall_over_reference"] <= targets.wall_over_reference)  # fmt: skip
        if targets.accuracy is not None:
            ok = ok and m[1] >= targets.accuracy
        if targets.gain_fraction is not None and before and gain is not None:
            share = (math.log(before[1]) - math.log(m[1])) / gain if gain else None
            v["gain_fraction"] = share
            ok = ok and share is not None and share >= targets.gain_fraction
        v["meets"] = ok
        out[r["label"]] = v
    higher = ref_metric is None or "%" in ref_metric[0]
    hybrids = {}
    for r in rows[1:]:
        h = out[r["label"]]
        if not h["hybrid"] or "metric" not in h:
            continue
        cap = r["peak_rss_mb"] * targets.same_memory
        singles = [x for x in rows[1:] if not mixed[x["label"]] and "metric" in out[x["label"]]
                   and x["peak_rss_mb"] <= cap]  # fmt: skip
        better = [(h["metric"] > out[x["label"]]["metric"]) == higher for x in singles]
        hybrids[r["label"]] = {"singles": [x["label"] for x in singles],
                               "beats_all": bool(singles) and all(better)}  # fmt: skip
    return {"targets": asdict(targets), "reference_train_s": ref_s,
            "reference_metric": ref_metric and ref_metric[1],
            "before_metric": before and before[1], "goal_metric": goal, "rows": out,
            "hybrids": hybrids}  # fmt: skip


def run_config(setup: Setup, v: Variant, kind: str) -> RunConfig:
    """The run config of one worker run."""
    steps = v.steps or setup.steps
    rows = setup.batch * steps if kind == "accuracy" else setup.batch
    settings: dict[str, Any] = {
        "model.name": setup.model, "data.name": setup.data, "data.task": setup.task,
        "data.seq_len": setup.seq, "data.train_samples": rows,
        "data.eval_samples": setup.eval_samples if kind == "accuracy" else setup.batch,
        "train.method": v.method, "train.batch_size": setup.batch,
        "train.max_steps": steps if kind == "accuracy" else 1000, "train.lr": v.lr,
        "train.threads": setup.threads, "train.final_eval": kind == "accuracy",
    }  # fmt: skip
    if kind == "accuracy":
        settings["train.eval_every"] = steps  # validation after the last step
        settings["train.eval_before"] = v.eval_before
        settings["train.eval_batch_size"] = setup.batch  # the run's peak stays the training's
    if not v.clip:
        settings["train.max_grad_norm"] = None
    settings.update({f"method.{k}": val for k, val in v.options.items()})
    settings.update({f"train.{k}": val for k, val in v.train.items()})
    return load_config(None, settings)


# -- workers (run in the fresh interpreter) ---------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(s for s in f if s.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _prepared(setup: Setup, v: Variant, kind: str):
    from edgetune.data.tasks import collate
    from edgetune.pipeline import load

    session = load(run_config(setup, v, kind))
    train = session.data.splits["train"]
    batch = collate([train[i] for i in range(setup.batch)], session.pad_id)
    return session, batch


def worker_inference(setup: Setup) -> dict[str, Any]:
    from edgetune.measure.memory import peak_rss_mb

    session, batch = _prepared(setup, Variant("inference", "backprop", 1e-4), "step")
    model, base = session.model, _rss_mb()
    forward(model, batch)
    forward(model, batch)
    peak = peak_rss_mb()
    ev: list[float] = []
    tr: list[float] = []
    for r in range(setup.rounds):
        pair = [(ev, False), (tr, True)]
        for times, mode in pair if r % 2 == 0 else pair[::-1]:
            times.append(timed(functools.partial(forward, model, batch, mode)))
    return {"base_rss_mb": base, "peak_rss_mb": peak, "forward_eval_s": statistics.median(ev),
            "forward_train_s": statistics.median(tr)}  # fmt: skip


def _prediction(session) -> dict[str, Any]:
    """The cost model's FLOPs, peak memory and `this-machine` latency for this step."""
    from edgetune.cost import bytes_moved, load_device, step_time
    from edgetune.forecast import predict

    cfg = session.cfg
    c = predict(session.step_inputs(), cfg.train.method, cfg.method)
    latency = step_time(c, load_device("this-machine"))
    return {"flops": c.flops, "matmul_flops": 2 * c.macs, "peak_mb": c.memory.peak / 2**20,
            "latency_s": latency, "bytes_moved": bytes_moved(c, c.passes)}  # fmt: skip


def worker_step(setup: Setup, v: Variant) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgetune.measure.memory import peak_rss_mb
    from edgetune.measure.saved import saved_bytes

    session, batch = _prepared(setup, v, "step")
    method = session.build_method()
    base = _rss_mb()
    with FlopCounterMode(display=False) as counter:
        loss = method.step([batch]).loss

    def step_as_loss_fn() -> torch.Tensor:  # saved_bytes wants a closure returning a tensor
        method.step([batch])
        return torch.zeros(())

    saved = saved_bytes(step_as_loss_fn, method.model)
    peak = peak_rss_mb()
    steps: list[float] = []
    fwds: list[float] = []
    for r in range(setup.rounds):
        pair = [
            (steps, lambda: method.step([batch])),
            (fwds, lambda: forward(method.model, batch)),
        ]
        for times, fn in pair if r % 2 == 0 else pair[::-1]:
            times.append(timed(fn))
    trainable = sum(t.numel() for t in method.trainable_state().values())
    return {
        "base_rss_mb": base, "peak_rss_mb": peak, "flops_per_step": counter.get_total_flops(),
        "saved_bytes": saved, "trainable_params": trainable, "first_loss": loss,
        "step_s": statistics.median(steps), "forward_eval_s": statistics.median(fwds),
        "step_over_forward": statistics.median(s / f for s, f in zip(steps, fwds, strict=True)),
        "predicted": _prediction(session),
    }  # fmt: skip


def worker_accuracy(setup: Setup, v: Variant) -> dict[str, Any]:
    from rich.console import Console

    from edgetune.train import finetune

    with tempfile.TemporaryDirectory() as tmp:
        cfg = run_config(setup, v, "accuracy").with_changes({"out": str(Path(tmp) / "run")})
        m = finetune(cfg, console=Console(stderr=True, quiet=True)).metrics
    t = m["train"]
    return {"eval": m["eval"], "validation": m["validation_history"][-1],
            "loss_first": t["loss_first"], "loss_last": t["loss_last"],
            "loop_step_s": m["time"]["step_s_median"], "steps": t["steps"],
            **({"test_before": m["test_before"]} if "test_before" in m else {}),
            "train_s": m["time"]["train_s"],
            "train_peak_rss_mb": m["memory"]["train_peak_rss_mb"]}  # fmt: skip


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The entry of every worker process (`edgetune.bench.worker`)."""
    setup = Setup(**spec["setup"])
    if spec["kind"] == "inference":
        return worker_inference(setup)
    v = Variant(**spec["variant"])
    return (worker_step if spec["kind"] == "step" else worker_accuracy)(setup, v)


def run(kind: str, setup: Setup, v: Variant | None = None) -> dict[str, Any]:
    """One worker in a fresh interpreter (its failure comes back as {"error": ...})."""
    spec = {"kind": kind, "setup": asdict(setup), "variant": v and asdict(v)}
    return run_worker("edgetune.bench.methods:worker", spec, threads=setup.threads)


# -- comparison -------------------------------------------------------------------------------
def compare(setup: Setup, variants: list[Variant], repeats: int = 1,
            accuracy: set[str] | None = None, log=print) -> dict[str, Any]:  # fmt: skip
    """Every variant's step worker (and an inference worker) `repeats` times, the order
    reversed every other repeat; then one accuracy run for each variant whose label is in
    `accuracy` (None: every variant). Returns the summary dict."""
    runs: dict[str, list[dict]] = {"inference": [], **{v.label: [] for v in variants}}
    order: list[Variant | None] = [None, *variants]
    for r in range(repeats):
        for v in order if r % 2 == 0 else order[::-1]:
            res = run("step" if v else "inference", setup, v)
            runs[v.label if v else "inference"].append(res)
            log(f"{v.label if v else 'inference'}: {res}")
    if any("error" in x for x in runs["inference"]):
        raise EdgetuneError(f"the inference measurement failed: {runs['inference']}")
    acc = {}
    for v in variants:
        if accuracy is None or v.label in accuracy:
            acc[v.label] = run("accuracy", setup, v)
            log(f"{v.label} accuracy: {acc[v.label]}")
    return summarize(setup, variants, runs, acc)


def sweep(setup: Setup, variants: list[Variant], factors: list[float],
          log=print) -> dict[str, Any]:  # fmt: skip
    """Accuracy runs of every variant at lr x each factor; per variant the run with the best
    validation metric (accuracy up, perplexity down) and its test metric."""
    rows = []
    for v in variants:
        tried = []
        for f in factors:
            lr = float(f"{v.lr * f:.3g}")
            res = run("accuracy", setup, Variant(v.label, v.method, lr, v.options))
            tried.append({"lr": lr, **res})
            log(f"{v.label} lr {lr:g}: {res}")
        ok = [t for t in tried if "error" not in t]
        row: dict[str, Any] = {"label": v.label, "method": v.method, "tried": tried}
        if ok:
            key, sign = _selection_key(ok[0]["validation"])
            row["chosen"] = max(ok, key=lambda t: sign * t["validation"][key])
        rows.append(row)
    return {"setup": asdict(setup), "factors": factors, "rows": rows}


def _selection_key(validation: dict[str, Any]) -> tuple[str, int]:
    return ("accuracy", 1) if "accuracy" in validation else ("perplexity", -1)


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if "error" not in r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(setup: Setup, variants: list[Variant], runs: dict[str, list[dict]],
              acc: dict[str, dict]) -> dict[str, Any]:  # fmt: skip
    inf = {k: _median(runs["inference"], k) for k in ("peak_rss_mb", "forward_eval_s",
                                                     "forward_train_s", "base_rss_mb")}  # fmt: skip
    rows = []
    for v in variants:
        ok = [r for r in runs[v.label] if "error" not in r]
        row: dict[str, Any] = {"label": v.label, "method": v.method, "lr": v.lr,
                               "options": v.options}  # fmt: skip
        if not ok:
            row["error"] = runs[v.label][0]["error"]
        else:
            for k in ("peak_rss_mb", "step_s", "forward_eval_s", "step_over_forward",
                      "flops_per_step", "saved_bytes", "trainable_params"):  # fmt: skip
                row[k] = _median(ok, k)
            row["predicted"] = ok[0]["predicted"]
            row["above_inference_mb"] = row["peak_rss_mb"] - inf["peak_rss_mb"]
            row["peak_over_inference"] = row["peak_rss_mb"] / inf["peak_rss_mb"]
            row["tokens_per_s"] = setup.batch * setup.seq / row["step_s"]
            row["flops_per_s"] = row["flops_per_step"] / row["step_s"]
        if v.label in acc:
            row["accuracy_run"] = acc[v.label]
        rows.append(row)
    # the reference of the `_vs_backprop` columns: the line-up's first variant (backprop)
    bp = next((r for r in rows[:1] if "error" not in r), None)
    for r in rows:
        if bp and "error" not in r:
            grown = bp["above_inference_mb"]  # 0 when backprop never rose above inference
            r["above_inference_vs_backprop"] = r["above_inference_mb"] / grown if grown else None
            r["step_vs_backprop"] = r["step_s"] / bp["step_s"]
    return {"setup": asdict(setup), "inference": inf, "rows": rows, "runs": runs}


# -- hardware ---------------------------------------------------------------------------------
def hardware(summary: dict[str, Any], gemm: dict[str, Any]) -> dict[str, Any]:
    """Per measured step: achieved FLOP/s (torch's flop counter over the step time), model FLOP
    utilization against this machine's fp32 GEMM peak, tokens/s, and the cost model's step
    time on `this-machine` (its kernels timed in `gemm`, the tables the profile now holds)
    against the measured step time, beside the roofline's at the peak and bandwidth of `gemm`."""
    from edgetune.cost import EFFICIENCY

    peak, bw = gemm["peak_flops"]["fp32"], gemm["bandwidth"]
    rows = []
    for r in summary["rows"]:
        if "error" in r:
            continue
        p = r["predicted"]
        pred = p.get("latency_s")
        roof = max(p["flops"] / (peak * EFFICIENCY), p.get("bytes_moved", 0.0) / (bw * EFFICIENCY))
        rows.append({
            "label": r["label"], "step_s": r["step_s"], "flops_per_step": r["flops_per_step"],
            "flops_per_s": r["flops_per_s"], "mfu": r["flops_per_s"] / peak,
            "tokens_per_s": r["tokens_per_s"], "predicted_step_s": pred,
            "predicted_over_measured": None if pred is None else pred / r["step_s"],
            "roofline_step_s": roof, "roofline_over_measured": roof / r["step_s"],
        })  # fmt: skip
    return {"setup": summary["setup"], "gemm": gemm, "rows": rows}
