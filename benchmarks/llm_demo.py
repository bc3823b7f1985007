"""SmolLM2 instruction fine-tuning with a planned sparse scheme, in the manner of PockEngine's
Llama-2 demo: answers before and after on held-out prompts, and the time per iteration of full
backprop against the planned scheme.

    .venv/bin/python benchmarks/llm_demo.py [--steps 30]

Data: the `instructions` set (`edgetune.data.instructions`: "Write a subject line for this
email." and "Which topic is this Reuters story?" turns through SmolLM2's chat template, loss on
the answer only), loaded once through `edgetune.pipeline`. The scheme is planned by a short
contribution analysis of the top blocks (cached; each candidate trains a copy of the loaded
model) within 1/4 of full backprop's forecast training memory. Full backprop runs a few steps
on the same batches in the same process for the time per iteration (median, side by side with
an inference forward on the same batch). Writes benchmarks/results/llm_demo.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from edgetune.config import load_config
from edgetune.data.chat import answer_of, prompt_of
from edgetune.data.tasks import batches, epoch_order
from edgetune.evaluate import generate
from edgetune.forecast import StepInputs, model_shape, predict
from edgetune.measure.timing import inference_seconds
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings
from edgetune.pipeline import load
from edgetune.plan.analysis import analysis_scored, analyze
from edgetune.plan.planner import Planner, plan_from_table
from edgetune.plan.table import AnalysisSettings
from edgetune.units import human_bytes

RESULTS = Path(__file__).resolve().parent / "results"
MODEL, DATA, SEQ, BATCH = "smollm2-135m", "instructions", 96, 1
PROMPTS = 4  # held-out prompts shown before and after (alternating email / Reuters)


def timed_steps(method, train: list[dict], n: int) -> tuple[list[float], list[float]]:
    """Seconds per optimizer step and per inference forward on the same batches."""
    steps, forwards = [], []
    for batch in train[:n]:
        t = time.perf_counter()
        method.step([batch])
        steps.append(time.perf_counter() - t)
        forwards.append(inference_seconds(method.model, batch))
    return steps, forwards


def answers(model, tokenizer, rows: list[dict]) -> list[str]:
    model.eval()
    with torch.no_grad():
        out = [generate(model, tokenizer, r, "chat", max_new_tokens=16, seq_len=SEQ) for r in rows]
    model.train()
    return out


def main(steps: int, bp_steps: int) -> None:
    torch.set_num_threads(1)
    cfg = load_config(
        None,
        {
            "model.name": MODEL,
            "data.name": DATA,
            "data.seq_len": SEQ,
            "train.batch_size": BATCH,
            "train.method": "sparse",  # the analysis plans the sparse method's scheme
        },
    )
    session = load(cfg)
    analysis = AnalysisSettings(
        steps=2,
        batch_size=BATCH,
        eval_examples=8,
        lr=1e-3,
        layers=[24, 29],
        fractions=(1.0,),
    )
    table = analyze(session, analysis, cache=RESULTS / "planning-runs" / "cache")
    scored = analysis_scored(session, analysis)
    inputs = StepInputs(model_shape(MODEL), BATCH, SEQ, head="lm", n_labels=table.n_labels,
                        scored=scored)  # fmt: skip
    bp = predict(inputs, "backprop").memory
    bp_bytes = bp.peak - bp.weights
    plan = plan_from_table(table, Planner(inputs, "sparse", {}), bp_bytes / 4)
    plan.save(RESULTS / "llm_demo-scheme.yaml")

    data, model = session.data, session.model
    pad, tok = session.pad_id, session.loaded.tokenizer
    order = epoch_order(len(data.splits["train"]), 0, 0)[: steps * BATCH]
    train = list(batches(data.splits["train"], BATCH, pad, order))
    rows = list(data.raw["test"].select(range(PROMPTS)))
    before = answers(model, tok, rows)

    backprop = build_method(
        "backprop", copy.deepcopy(model), MethodSettings(lr=5e-5, total_steps=steps)
    )
    bp_step, bp_fwd = timed_steps(backprop, train, bp_steps)
    del backprop
    settings = MethodSettings(
        lr=1e-3,
        total_steps=steps,
        warmup_steps=2,
        weight_decay=0.0,
        options={"scheme": plan.scheme},
    )
    sparse = build_method("sparse", model, settings)
    sp_step, sp_fwd = timed_steps(sparse, train, len(train))
    after = answers(sparse.model, tok, rows)

    med = statistics.median
    result = {
        "model": MODEL,
        "data": DATA,
        "seq": SEQ,
        "batch": BATCH,
        "steps": steps,
        "scheme": plan.scheme.to_dict(),
        "forecast": plan.forecast,
        "backprop_forecast_training_bytes": bp_bytes,
        "backprop_step_s": med(bp_step[1:]),
        "backprop_forward_s": med(bp_fwd[1:]),
        "planned_step_s": med(sp_step[2:]),
        "planned_forward_s": med(sp_fwd[2:]),
        "prompts": [
            {
                "prompt": prompt_of(r["messages"])[-1]["content"],
                "reference": answer_of(r["messages"]),
                "before": b,
                "after": a,
            }
            for r, b, a in zip(rows, before, after, strict=True)
        ],
    }
    (RESULTS / "llm_demo.json").write_text(json.dumps(result, indent=1))
    write_report(result)


def write_report(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [f"{u['unit']}@{u['layer']}" for u in r["scheme"]["updates"]]
    lines = [
        "# SmolLM2-135M instruction fine-tuning with a planned sparse scheme",
        "",
        f"`benchmarks/llm_demo.py`: {r['steps']} steps, batch {r['batch']}, {r['seq']} tokens, "
        "one torch thread on a shared 2-core CPU.",
        "",
        f"Planned scheme (1/4 of backprop's forecast training memory, "
        f"{human_bytes(r['backprop_forecast_training_bytes'])}): {', '.join(trained)}; "
        f"forecast {human_bytes(r['forecast']['training_bytes'])}.",
        "",
        "| | backprop | planned sparse |",
        "|---|---:|---:|",
        f"| s / iteration (median) | {r['backprop_step_s']:.2f} | {r['planned_step_s']:.2f} |",
        f"| inference forward s (same batch) | {r['backprop_forward_s']:.2f} | "
        f"{r['planned_forward_s']:.2f} |",
        f"| iteration / forward | {r['backprop_step_s'] / r['backprop_forward_s']:.2f} | "
        f"{r['planned_step_s'] / r['planned_forward_s']:.2f} |",
        "",
        "| prompt (end) | reference | before | after |",
        "|---|---|---|---|",
    ]
    for p in r["prompts"]:
        cells = [p["prompt"][-70:], p["reference"], p["before"], p["after"]]
        lines.append(
            "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
        )
    (RESULTS / "llm_demo.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    names = ["backprop", "planned sparse", "forward alone"]
    values = [r["backprop_step_s"], r["planned_step_s"], r["planned_forward_s"]]
    ax.bar(names, values, color=["tab:red", "tab:blue", "tab:grey"])
    ax.set(ylabel="seconds per iteration (median)", title="SmolLM2-135M, instructions")
    fig.savefig(RESULTS / "llm_demo.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps of the planned run")
    ap.add_argument("--bp-steps", type=int, default=3, help="backprop steps timed")
    a = ap.parse_args()
    main(a.steps, a.bp_steps)
