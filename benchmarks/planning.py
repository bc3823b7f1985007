"""Planned sparse schemes against fixed built-in schemes, full backprop and LoRA, measured.

    .venv/bin/python benchmarks/planning.py minilm           # MiniLM-L6 on Reuters-R8, all of it
    .venv/bin/python benchmarks/planning.py smollm2          # SmolLM2-135M on `instructions`
    .venv/bin/python benchmarks/planning.py minilm refs      # only backprop, LoRA, fixed schemes
    .venv/bin/python benchmarks/planning.py minilm plans     # only analysis, plans, planned runs
    .venv/bin/python benchmarks/planning.py minilm compiled  # the planned 1/4 scheme compiled
    .venv/bin/python benchmarks/planning.py report           # JSON + Markdown + plots

`refs` and `plans` can run side by side (two cores): `plans` waits for the backprop run, whose
measured memory sets the budgets, `compiled` for the planned 1/4 run. Run them one after the
other (`planning.py minilm` does) for step times free of the other process's load.

Per model: (1) contribution analysis (cached); (2) full backprop in a fresh subprocess: its
*training memory* = peak resident set during the steps minus the resident set with the model
and data loaded and the (memory-mapped) weights paged in by one inference forward (the
high-water mark reset there through /proc/self/clear_refs, glibc's mmap threshold fixed as in
tests/cost/_rss_step.py); (3) budgets of 1/2, 1/4 and 1/8 of that; for each the planner gets
the budget in bytes (it plans with the cost model's forecasts, as `edgetune plan --budget`
does) and judges its best shortlisted schemes by a short joint fine-tune on validation data;
a second plan (`fast`) also holds the forecast step within `max_step` forwards (the cost
model's FLOPs, `edgetune plan --max-step`); (4) every configuration (planned, fixed
built-ins, backprop, LoRA) trained the same steps on the same batches in its own fresh
subprocess (`edgetune.bench.worker`), timed (median step; median inference forward on the
same batches, after every step in the same process, with the step's loss: a causal LM's
logits at the labelled positions only, as in the step), its memory measured, then evaluated
on the test split. Results per configuration are cached in benchmarks/results/planning-runs/,
so a rerun resumes. One torch thread per process. Every run loads its model and data through
`edgetune.pipeline`; the forecasts take the share of positions the loss scores over the
contribution analysis' training batches (as the planner always has here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = RESULTS / "planning-runs"
FRACTIONS = (0.5, 0.25, 0.125)
PARTS = ("refs", "plans", "compiled")

SETUPS = {
    "minilm": {
        "model": "minilm-l6", "data": "reuters-r8", "labels": 8, "seq": 64, "batch": 16,
        "steps": 100,
        "eval_samples": None, "metric": "accuracy", "lr": 1e-3, "lr_backprop": 2e-4,
        "fixed": ["bias-only", "last-1", "last-2", "last-3", "last-4"],
        "sparse_options": {"dropout": False}, "max_step": 1.25,
        "analysis": {"steps": 16, "batch_size": 8, "eval_examples": 128, "lr": 1e-3,
                     "fraction_layers": [2, 5]},
        "verify": 4,
    },
    "smollm2": {
        "model": "smollm2-135m", "data": "instructions", "seq": 64, "batch": 2, "steps": 30,
        "eval_samples": 60, "metric": "perplexity", "lr": 1e-3, "lr_backprop": 5e-5,
        "fixed": ["last-1", "last-4", "last-8"],
        "sparse_options": {}, "max_step": 1.25,
        "analysis": {"steps": 6, "batch_size": 2, "eval_examples": 16, "lr": 1e-3,
                     "layers": [14, 22, 29], "fraction_layers": []},
        "verify": 3,
    },
}  # fmt: skip


# -- the worker: one configuration in a fresh interpreter --------------------------------------


def worker(spec: dict) -> dict:
    """One configuration (`run` runs it in a fresh interpreter, `edgetune.bench.worker`)."""
    import torch

    from edgetune.config import load_config
    from edgetune.data.tasks import batches, epoch_order
    from edgetune.evaluate import evaluate
    from edgetune.measure.memory import resident_growth
    from edgetune.measure.timing import inference_seconds
    from edgetune.pipeline import load

    cfg = load_config(
        None,
        {
            "model.name": spec["model"],
            "data.name": spec["data"],
            "data.seq_len": spec["seq"],
            "data.eval_samples": spec["eval_samples"],
            "train.method": spec["method"],
            "train.batch_size": spec["batch"],
            "train.lr": spec["lr"],
            "train.max_steps": spec["steps"],
            "train.weight_decay": 0.0,
            "train.schedule": "linear",
            "train.max_grad_norm": 1.0,
            "train.seed": 0,
            "train.threads": 1,
            **{f"method.{k}": v for k, v in spec["options"].items()},
        },
    )
    session = load(cfg)
    model, pad = session.model, session.pad_id
    order = epoch_order(len(session.data.splits["train"]), 0, 0)[: spec["steps"] * spec["batch"]]
    train = list(batches(session.data.splits["train"], spec["batch"], pad, order))

    def page_in():  # the (memory-mapped) weights are not training memory
        with torch.no_grad():
            model.eval()(**train[0])
        model.train()

    state = {"method": None, "compile": None}
    steps, forwards, losses = [], [], []

    def train_steps():
        # the run's settings (lr, `steps` steps, no weight decay, linear schedule, clipping at
        # 1, seed 0) with a warm-up of 2 steps
        method = state["method"] = session.build_method(warmup_steps=2)
        for i, batch in enumerate(train):
            if spec.get("compile") and i == len(train) // 2:
                # first half eager, second half compiled: the per-step gain side by side
                from edgetune.plan.compile import compile_step

                report = state["compile"] = compile_step(method, batch).__dict__
                report["eager_step_s"] = statistics.median(steps[2:])
                steps.clear()
            t = time.perf_counter()
            losses.append(method.step([batch]).loss)
            steps.append(time.perf_counter() - t)
            # an inference forward on the same batch, side by side (the step's loss with it)
            forwards.append(inference_seconds(method.model, batch))

    training = resident_growth(page_in, train_steps)
    method, compile_report = state["method"], state["compile"]
    if compile_report is not None:  # evaluate eagerly: eval shapes would recompile the graph
        from edgetune.plan.compile import release

        release(method)
    metrics = evaluate(method.model, session.data, "test", pad, generate_samples=0)
    warm = steps[2:] or steps
    return {
        **spec,
        "training_bytes": training,
        "step_s": statistics.median(warm),
        "forward_s": statistics.median(forwards[2:] or forwards),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "metrics": metrics,
        "compile": compile_report,
    }


def run(spec: dict, name: str) -> dict:
    """One configuration in a fresh subprocess, cached by name."""
    from edgetune.bench.worker import run_worker

    path = RUNS / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    # one OpenMP thread, glibc's mmap threshold fixed (tests/cost/_rss_step.py)
    out = run_worker(f"{Path(__file__).resolve()}:worker", spec, threads=1,
                     timeout=None, env={"MALLOC_MMAP_THRESHOLD_": "65536"})  # fmt: skip
    if "error" in out:
        raise RuntimeError(f"{name} failed: {out['error']}")
    result = {"name": name, **out}
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


# -- one model: references, analysis, budgets, planned runs -----------------------------------


def _common(key: str) -> dict:
    s = SETUPS[key]
    return {k: s[k] for k in ("model", "data", "seq", "batch", "steps", "eval_samples")}


def _inputs(key: str, scored: float):
    """The cost model's inputs of `key`'s runs (`scored`: the share of positions the loss
    scores, `_table`)."""
    from edgetune.forecast import StepInputs, model_shape

    s = SETUPS[key]
    head = "lm" if s["metric"] == "perplexity" else "classifier"
    return StepInputs(model_shape(s["model"]), s["batch"], s["seq"], head=head,
                      n_labels=s.get("labels", 0), scored=scored)  # fmt: skip


def _planner(key: str, scored: float):
    """The exact forecast of any sparse scheme of `key`'s runs."""
    from edgetune.plan.planner import Planner

    return Planner(_inputs(key, scored), "sparse", SETUPS[key]["sparse_options"])


def _sparse_spec(key: str, scheme, path: Path | None, scored: float) -> dict:
    """A sparse configuration of `scheme` (saved to `path`, if given) with its forecast
    (`scored`: the share of positions the loss scores, `_table`)."""
    from edgetune.plan.planner import forecast_numbers

    s = SETUPS[key]
    if path is not None:
        scheme.save(path)
    fc = forecast_numbers(_planner(key, scored).cost(scheme))
    options = {"scheme": str(path), **s["sparse_options"]}
    spec = {**_common(key), "method": "sparse", "options": options, "lr": s["lr"]}
    return {**spec, "forecast": fc, "lowest_layer": scheme.lowest_layer()}


def _table(key: str):
    """The contribution analysis of `key` (cached in RUNS/cache; measured on first use) on
    the run loaded through the pipeline: (table, settings, scored share, session)."""
    from edgetune.pipeline import load
    from edgetune.plan.analysis import analysis_scored, analyze
    from edgetune.plan.table import AnalysisSettings

    settings = AnalysisSettings(**SETUPS[key]["analysis"])
    session = load(_config(key))
    table = analyze(session, settings, cache=RUNS / "cache")
    return table, settings, analysis_scored(session, settings), session


def refs(key: str) -> None:
    """Full backprop, LoRA and the fixed built-in schemes (an LM's tied head left frozen)."""
    from edgetune.forecast import predict
    from edgetune.scheme import UpdateScheme

    s = SETUPS[key]
    common = _common(key)
    scored = _table(key)[2]
    inputs = _inputs(key, scored)
    m = predict(inputs, "backprop").memory
    spec = {**common, "method": "backprop", "options": {}, "lr": s["lr_backprop"]}
    run({**spec, "forecast": {"training_bytes": float(m.peak - m.weights)}}, f"{key}-backprop")
    run({**common, "method": "lora", "options": {}, "lr": s["lr"]}, f"{key}-lora")
    n = inputs.shape.n_layers
    for name in s["fixed"]:
        scheme = UpdateScheme.builtin(name, n)
        if s["metric"] == "perplexity":
            scheme = UpdateScheme(tuple(u for u in scheme.updates if u.unit != "head"), name)
        path = RUNS / f"{key}-fixed-{name}.yaml"
        run(_sparse_spec(key, scheme, path, scored), f"{key}-fixed-{name}")


def _config(key: str):
    """The analysis' run config of `key` (the sparse method: the analysis plans its scheme)."""
    from edgetune.config import load_config

    s = SETUPS[key]
    return load_config(
        None,
        {
            "model.name": s["model"],
            "data.name": s["data"],
            "data.seq_len": s["seq"],
            "train.batch_size": s["batch"],
            "train.method": "sparse",
        },
    )


def plans(key: str) -> None:
    """Contribution analysis, then per budget two plans (each judged on validation data) and
    their runs: `planned` within the memory budget, `fast` within it and `max_step` forwards
    per step (the cost model's FLOPs)."""
    import torch

    from edgetune.errors import EdgetuneError
    from edgetune.plan.analysis import measure_schemes
    from edgetune.plan.planner import forecast_numbers, plan_from_table
    from edgetune.plan.table import scheme_key, summed_gain
    from edgetune.report.figures import plot_gains

    torch.set_num_threads(1)
    s = SETUPS[key]
    table, settings, scored, session = _table(key)
    plot_gains(table, RESULTS / f"planning-gains-{key}.png")
    bp_path = RUNS / f"{key}-backprop.json"
    while not bp_path.is_file():  # `refs` measures it, maybe in another process
        time.sleep(10)
    bp = json.loads(bp_path.read_text())
    planner = _planner(key, scored)

    judged: list[dict] = []

    def judge(schemes):  # the planner's verification, recorded for the report
        gains = measure_schemes(session, schemes, settings, RUNS / "cache")
        judged.extend(
            {
                "scheme": sc.name,
                "lowest_layer": sc.lowest_layer(),
                "summed_gain": summed_gain(table, sc),
                "measured_gain": g,
                "forecast_bytes": forecast_numbers(planner.cost(sc))["training_bytes"],
            }
            for sc, g in zip(schemes, gains, strict=True)
        )
        return gains

    done: dict[str, dict] = {}  # the same scheme at two budgets is trained once
    for kind, max_step in (("planned", None), ("fast", s["max_step"])):
        for frac in FRACTIONS:
            budget = frac * bp["training_bytes"]
            judged.clear()  # what this budget's search judges, its halves' included
            try:
                plan = plan_from_table(table, planner, budget, max_step, judge=judge,
                                       top=s["verify"])  # fmt: skip
            except EdgetuneError as e:  # nothing fits this budget: say so, plan the others
                print(f"{key} {kind} at {frac:g} of backprop's memory: {e}", flush=True)
                continue
            name = f"{key}-{kind}-{frac:g}"
            path = RUNS / f"{name}.yaml"
            before = path.read_text() if path.is_file() else None
            spec = _sparse_spec(key, plan.scheme, path, scored)
            if path.read_text() != before:  # another plan than the cached run's: measure anew
                (RUNS / f"{name}.json").unlink(missing_ok=True)
            spec.update(budget_bytes=budget, fraction=frac, plan=plan.scheme.name,
                        max_step=max_step, predicted_gain=plan.gain,
                        measured_gain=plan.measured_gain, shortlist=list(judged))  # fmt: skip
            same = done.get(scheme_key(plan.scheme))
            if same is not None and not (RUNS / f"{name}.json").is_file():
                (RUNS / f"{name}.json").write_text(json.dumps({**same, **spec, "name": name}))
            done[scheme_key(plan.scheme)] = run(spec, name)


def compiled(key: str) -> None:
    """The planned 1/4 scheme, 6 steps eager then 6 compiled ahead of time, same process."""
    from edgetune.scheme import UpdateScheme

    path = RUNS / f"{key}-planned-0.25.yaml"
    while not (RUNS / f"{key}-planned-0.25.json").is_file():  # `plans` plans and runs it
        time.sleep(10)
    spec = _sparse_spec(key, UpdateScheme.load(path), path, _table(key)[2])
    run({**spec, "steps": 12, "compile": True}, f"{key}-compiled-0.25")


# -- report: JSON, Markdown, plots ------------------------------------------------------------


def summarize(key: str) -> dict | None:
    """Rows of one model and, per budget, the planned scheme against the best fixed one."""
    s = SETUPS[key]
    runs = {p.stem[len(key) + 1 :]: json.loads(p.read_text()) for p in RUNS.glob(f"{key}-*.json")}
    if "backprop" not in runs:
        return None
    higher = s["metric"] == "accuracy"
    bp, rows, budgets = runs["backprop"], [], []
    for name, r in sorted(runs.items()):
        fc = r.get("forecast")
        rows.append(
            {
                "name": name if r["steps"] == s["steps"] else f"{name} ({r['steps']} steps)",
                "metric": r["metrics"][s["metric"]],
                "training_mib": r["training_bytes"] / 2**20,
                "forecast_mib": fc["training_bytes"] / 2**20 if fc else None,
                "lowest_layer": r.get("lowest_layer"),
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
    planned_runs = [r for n, r in runs.items() if n.startswith(("planned-", "fast-"))]
    for planned in sorted(planned_runs, key=lambda r: (-r["fraction"], r["name"])):
        budget, frac = planned["budget_bytes"], planned["fraction"]
        # the best fixed scheme whose measured memory is at most max(budget, the planned one's)
        fits = [r for r in fixed if r["training_bytes"] <= max(budget, planned["training_bytes"])]
        best = (max if higher else min)(fits, key=lambda r: r["metrics"][s["metric"]], default=None)
        pm = planned["metrics"][s["metric"]]
        bm = best["metrics"][s["metric"]] if best else None
        # the issue's comparison: at the plan's own measured memory (within 5 %, the spread of
        # repeated measurements)
        alike = [r for r in fixed if r["training_bytes"] <= 1.05 * planned["training_bytes"]]
        same = (max if higher else min)(alike, key=lambda r: r["metrics"][s["metric"]],
                                        default=None)  # fmt: skip
        sm = same["metrics"][s["metric"]] if same else None
        budgets.append(
            {
                "fraction": frac,
                "budget_mib": budget / 2**20,
                "kind": planned["name"][len(key) + 1 :].split("-")[0],
                "max_step": planned.get("max_step"),
                "plan": planned["plan"],
                "lowest_layer": planned["lowest_layer"],
                "planned_mib": planned["training_bytes"] / 2**20,
                "forecast_mib": planned["forecast"]["training_bytes"] / 2**20,
                "within_budget": planned["training_bytes"] <= budget,
                "planned_metric": pm,
                "planned_step_over_forward": planned["step_s"] / planned["forward_s"],
                "planned_step_forecast": planned["forecast"].get("step_forwards"),
                "best_fixed": best["name"][len(key) + 7 :] if best else None,
                "best_fixed_mib": best["training_bytes"] / 2**20 if best else None,
                "best_fixed_metric": bm,
                "planned_wins": bm is None or (pm > bm if higher else pm < bm),
                "same_fixed": same["name"][len(key) + 7 :] if same else None,
                "same_fixed_mib": same["training_bytes"] / 2**20 if same else None,
                "same_fixed_metric": sm,
                "planned_wins_same": sm is None or (pm > sm if higher else pm < sm),
                "shortlist": planned.get("shortlist", []),
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


def _f(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def report() -> None:
    out = {k: v for k in SETUPS if (v := summarize(k))}
    (RESULTS / "planning.json").write_text(json.dumps(out, indent=1))
    lines = [
        "# Planned sparse schemes vs fixed schemes, backprop and LoRA",
        "",
        "Generated by `benchmarks/planning.py` (one torch thread per process, 2-core machine, "
        "one configuration at a time). Training memory = peak RSS during the steps minus RSS "
        "with model and data loaded and the weights paged in by one inference forward, in a "
        "fresh process per row; forecast = the cost model's training memory (peak - weights) "
        "that the planner plans with. Step and forward: medians in the same process (the "
        "forward after every step, on its batch, with the step's loss); the last column "
        "divides backprop's step/forward by this row's (robust to load changing between "
        "rows). Best fixed: the fixed built-in of best metric whose measured memory is "
        "at most max(budget, the planned scheme's measured memory); at the plan's memory: "
        "the fixed built-in of best metric whose measured memory is at most 1.05x the plan's "
        "(the spread of repeated measurements). Search `memory`: the "
        "plan within the memory budget (`planned-F`); `memory, step <= S`: within it and a "
        "forecast step of at most S forwards (`fast-F`, `edgetune plan --max-step S`).",
        "",
    ]
    for key, r in out.items():
        st = r["setup"]
        test = f"first {st['eval_samples']}" if st["eval_samples"] else "all"
        lines += [
            f"## {r['model']} on {r['data']} ({r['metric']} on {test} test rows; batch "
            f"{st['batch']}, {st['seq']} tokens, {st['steps']} steps)",
            "",
            "| configuration | " + r["metric"] + " | training memory MiB | forecast MiB | "
            "lowest block | step s | forward s | step / forward | backprop step / step | "
            "same, forward-normalized |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['name']} | {row['metric']:.4g} | {row['training_mib']:.0f} | "
                f"{_f(row['forecast_mib'], '.0f')} | {_f(row['lowest_layer'], 'd')} | "
                f"{row['step_s']:.3f} | {row['forward_s']:.3f} | "
                f"{row['step_over_forward']:.2f} | {row['bp_over_step']:.2f} | "
                f"{row['bp_over_step_norm']:.2f} |"
            )
        lines += [
            "",
            "| budget (of backprop) | budget MiB | search | plan (lowest block) | planned: "
            f"forecast / measured MiB | planned {r['metric']} | planned step / fwd: forecast / "
            f"measured | best fixed within the budget: MiB, {r['metric']} | planned better | "
            f"best fixed at the plan's memory: MiB, {r['metric']} | planned better |",
            "|---|---:|---|---|---:|---:|---:|---|---|---|---|",
        ]
        for b in r["budgets"]:
            fixed = (
                f"{b['best_fixed']}: {b['best_fixed_mib']:.0f}, {b['best_fixed_metric']:.4g}"
                if b["best_fixed"]
                else "none fits"
            )
            same = (
                f"{b['same_fixed']}: {b['same_fixed_mib']:.0f}, {b['same_fixed_metric']:.4g}"
                if b["same_fixed"]
                else "none"
            )
            over = "" if b["within_budget"] else " (over)"
            search = "memory" if b["max_step"] is None else f"memory, step <= {b['max_step']:g}"
            lines.append(
                f"| 1/{round(1 / b['fraction'])} | {b['budget_mib']:.0f} | {search} | "
                f"{b['plan']} ({b['lowest_layer']}) | {b['forecast_mib']:.0f} / "
                f"{b['planned_mib']:.0f}{over} | {b['planned_metric']:.4g} | "
                f"{_f(b['planned_step_forecast'], '.2f')} / {b['planned_step_over_forward']:.2f} | "
                f"{fixed} | {'yes' if b['planned_wins'] else 'no'} | {same} | "
                f"{'yes' if b['planned_wins_same'] else 'no'} |"
            )
        lines += [
            "",
            "Schemes the planner judged per budget (the shortlist's best scheme by summed gain "
            "for lowest blocks spread over the depths, at this budget and, recursively, at its "
            "half, quarter, ...; each fine-tuned jointly under the analysis' protocol on "
            "validation data, each once; the best measured one was planned):",
            "",
            "| budget | search | scheme | lowest block | forecast MiB | summed gain | "
            "measured gain |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for b in r["budgets"]:
            for j in b["shortlist"]:
                lines.append(
                    f"| 1/{round(1 / b['fraction'])} | {b['kind']} | {j['scheme']} | "
                    f"{j['lowest_layer']} | {j['forecast_bytes'] / 2**20:.0f} | "
                    f"{j['summed_gain']:.3f} | "
                    f"{j['measured_gain']:.3f} |"
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
    groups = {"planned": "o", "fast": "D", "fixed": "s", "backprop": "*", "lora": "^"}
    for group, marker in groups.items():
        pts = [row for row in r["rows"] if row["name"].startswith(group)]
        ax.scatter(
            [p["training_mib"] for p in pts],
            [p["metric"] for p in pts],
            marker=marker,
            s=80,
            label=group,
        )
        labels: dict[tuple[float, float], list[str]] = {}  # one label per point, names joined
        for p in pts:
            labels.setdefault((p["training_mib"], p["metric"]), []).append(
                p["name"].removeprefix(group + "-")
            )
        for xy, names in labels.items():
            ax.annotate(", ".join(names), xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    for b in r["budgets"]:
        ax.axvline(b["budget_mib"], color="grey", lw=0.8, ls=":")
        ax.annotate(f"1/{round(1 / b['fraction'])}", (b["budget_mib"], 0.02), fontsize=7,
                    xycoords=("data", "axes fraction"))  # fmt: skip
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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("target", choices=[*SETUPS, "report"], help="a model's runs, or the report")
    ap.add_argument("parts", nargs="*", metavar="part",
                    help=f"of a model's runs: {', '.join(PARTS)} (default: refs plans, and "
                    "compiled for minilm)")  # fmt: skip
    args = ap.parse_args()
    if args.target == "report":
        report()
        return
    for part in args.parts:
        if part not in PARTS:
            ap.error(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
    parts = args.parts or ["refs", "plans"] + (["compiled"] if args.target == "minilm" else [])
    for part in parts:
        {"refs": refs, "plans": plans, "compiled": compiled}[part](args.target)


if __name__ == "__main__":
    main()
