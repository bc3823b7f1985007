"""edgetune's backprop loop against the Hugging Face Trainer, side by side.

Same model, same tokenized data in the same order (the Trainer reads edgetune's epoch order
sequentially: batches are padded to their longest row, so another order means other batch
widths and other activation memory), batch, sequence length, optimizer (fused AdamW, the
Trainer's default), schedule and clipping. Each run is a fresh subprocess
(`edgetune.bench.worker`, so peak RSS is its own); the two alternate, and the table reports
medians. Both load model and data through `edgetune.pipeline`. Memory twice: the peak resident
set, and the peak live heap (glibc's heap in use, sampled at every module's forward end), which
leaves out the freed blocks the allocator keeps resident. Writes
benchmarks/results/trainer_vs_hf.{json,md}.

    python benchmarks/trainer_vs_hf.py                      # MiniLM on Reuters-R8, 16 x 128
    python benchmarks/trainer_vs_hf.py --steps 30 --repeats 3
    python benchmarks/trainer_vs_hf.py --mmap-threshold 65536   # both loops, fixed glibc threshold

With `--mmap-threshold N` both workers run with MALLOC_MMAP_THRESHOLD_=N: glibc then serves every
block of N bytes or more by mmap and unmaps it when freed, instead of raising the threshold
dynamically and keeping freed blocks in its heap, so the resident peak follows the tensors
alive rather than the allocator's history (results in trainer_vs_hf-mmap.{json,md}).
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
KEYS = ("step_s_median", "heap_peak_mb", "train_peak_rss_mb", "peak_rss_mb")
SETUP = ("model", "data", "batch", "seq", "steps", "threads")  # what a worker's spec holds


def _config(spec: dict):
    from edgetune.config import load_config

    return load_config(
        None,
        {
            "model.name": spec["model"],
            "data.name": spec["data"],
            "data.seq_len": spec["seq"],
            "data.train_samples": spec["batch"] * (spec["steps"] + 1),
            "train.batch_size": spec["batch"],
            "train.max_steps": spec["steps"],
            "train.lr": 1e-4,
            "train.weight_decay": 0.01,
            "train.warmup_ratio": 0.1,
            "train.final_eval": False,
            "train.threads": spec["threads"],
        },
    )


def worker(spec: dict) -> dict:
    """One run in a fresh interpreter (`edgetune.bench.worker`): spec["loop"] is edgetune or
    hf, the other keys the setup (`SETUP`)."""
    return (worker_edgetune if spec["loop"] == "edgetune" else worker_hf)(spec)


def worker_edgetune(spec: dict) -> dict:
    from edgetune.measure.memory import HeapPeak, peak_rss_mb
    from edgetune.train import finetune

    cfg = _config(spec)
    with tempfile.TemporaryDirectory() as tmp, HeapPeak() as heap:
        cfg = cfg.with_changes({"out": str(Path(tmp) / "run")})
        m = finetune(cfg).metrics
    ends = m["time"]["loop_step_s_median"]
    return {
        "step_s_median": ends,
        "heap_peak_mb": heap.peak_mb,
        "peak_rss_mb": peak_rss_mb(),
        "train_peak_rss_mb": m["memory"]["train_peak_rss_mb"],  # before the model is saved
        "loss_mean": statistics.fmean(m["train"]["loss_history"]),  # the Trainer's training_loss
    }


def worker_hf(spec: dict) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from edgetune.data.tasks import collate, epoch_order
    from edgetune.measure.memory import HeapPeak, peak_rss_mb
    from edgetune.pipeline import load

    cfg = _config(spec)
    session = load(cfg)  # sets the run's torch threads
    # hold what the Trainer needs (the model, edgetune's training examples) and the text rows
    # (held to the end, as always), and let the validation and test tokens go: the Trainer
    # never sees them
    loaded, pad, _text = session.loaded, session.pad_id, session.data.raw
    train = session.data.splits["train"]
    del session
    train = [train[i] for i in epoch_order(len(train), cfg.train.seed, 0)]  # edgetune's order
    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    t = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=t.batch_size,
            learning_rate=t.lr,
            weight_decay=t.weight_decay,
            lr_scheduler_type="linear",
            warmup_steps=int(t.warmup_ratio * t.max_steps),
            max_steps=t.max_steps,
            max_grad_norm=t.max_grad_norm,
            optim="adamw_torch_fused",  # its default on torch >= 2.8, as edgetune's
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            disable_tqdm=True,
            logging_steps=10**6,
        )
        trainer = Trainer(
            model=loaded.model,
            args=targs,
            train_dataset=train,
            data_collator=lambda ex: collate(ex, pad),
            callbacks=[StepEnds()],
        )
        with HeapPeak() as heap:
            out = trainer.train()
    step = statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))
    peak = peak_rss_mb()  # save_strategy "no": the run's peak is its training peak
    return {"step_s_median": step, "heap_peak_mb": heap.peak_mb, "peak_rss_mb": peak,
            "train_peak_rss_mb": peak, "loss_mean": out.training_loss}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default="reuters-r8")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mmap-threshold", type=int, help="MALLOC_MMAP_THRESHOLD_ of both workers")
    args = ap.parse_args()
    from edgetune.bench.worker import run_worker

    runs: dict[str, list[dict]] = {"edgetune": [], "hf": []}
    setup = {k: getattr(args, k) for k in SETUP}
    # the workers' environment is this one's: tokenizers' own parallelism default (the
    # worker helper turns it off unless told), the threads from train.threads, and glibc's
    # mmap threshold only when asked
    env = {"TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true")}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    stem = "trainer_vs_hf-mmap" if args.mmap_threshold else "trainer_vs_hf"
    for r in range(args.repeats):
        for who in ("edgetune", "hf") if r % 2 == 0 else ("hf", "edgetune"):
            result = run_worker(f"{Path(__file__).resolve()}:worker", {**setup, "loop": who},
                                timeout=None, env=env)  # fmt: skip
            if "error" in result:
                sys.exit(f"{who} worker failed: {result['error']}")
            runs[who].append(result)
            print(who, runs[who][-1], file=sys.stderr)

    def med(who, key):
        return statistics.median(r[key] for r in runs[who])

    summary = {
        "setup": vars(args),
        "runs": runs,
        "edgetune": {k: med("edgetune", k) for k in KEYS},
        "hf_trainer": {k: med("hf", k) for k in KEYS},
    }
    summary["ratio"] = {k: summary["edgetune"][k] / summary["hf_trainer"][k] for k in KEYS}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    e, h, q = summary["edgetune"], summary["hf_trainer"], summary["ratio"]
    table = "\n".join(
        [
            f"{args.model} on {args.data}, batch {args.batch} x {args.seq} tokens, "
            f"{args.steps} steps, {args.repeats} alternating runs each, medians; glibc mmap "
            f"threshold: {args.mmap_threshold or 'default (dynamic)'}",
            "",
            "| loop | step time (s) | peak live heap (MiB) | peak RSS while training (MiB) | "
            "peak RSS of the run (MiB) |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {r['step_s_median']:.3f} | {r['heap_peak_mb']:.1f} | "
                f"{r['train_peak_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
                for name, r in (("edgetune backprop", e), ("HF Trainer", h))
            ),
            f"| ratio edgetune / Trainer | {q['step_s_median']:.3f} | {q['heap_peak_mb']:.4f} | "
            f"{q['train_peak_rss_mb']:.3f} | {q['peak_rss_mb']:.3f} |",
            "",
            "Peak live heap: glibc's heap in use plus mmapped chunks (`mallinfo2`), sampled at "
            "the end of every module's forward while training (`edgetune.measure.memory."
            "HeapPeak`): the memory the loop holds, without the freed blocks glibc keeps "
            "resident for reuse, which make the resident peaks vary from run to run. The "
            "Trainer saves nothing (save_strategy no), so its run peak is its training peak; "
            "edgetune's run peak also covers writing the final checkpoint and model.",
        ]
    )
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
