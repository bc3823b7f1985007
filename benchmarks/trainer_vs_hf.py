"""edgetune's backprop loop against the Hugging Face Trainer, side by side.

Same model, same tokenized data in the same order (the Trainer reads edgetune's epoch order
sequentially: batches are padded to their longest row, so another order means other batch
widths and other activation memory), batch, sequence length, optimizer (fused AdamW, the
Trainer's default), schedule and clipping. Each run is a fresh subprocess (so peak RSS is its
own); the two alternate, and the table reports medians. Memory twice: the peak resident set,
and the peak live heap (glibc's heap in use, sampled at every module's forward end), which
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
KEYS = ("step_s_median", "heap_peak_mb", "train_peak_rss_mb", "peak_rss_mb")


def _config(args):
    from edgetune.config import load_config

    return load_config(
        None,
        [
            f"model.name={args.model}",
            f"data.name={args.data}",
            f"data.seq_len={args.seq}",
            f"data.train_samples={args.batch * (args.steps + 1)}",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            "train.lr=1e-4",
            "train.weight_decay=0.01",
            "train.warmup_ratio=0.1",
            "train.final_eval=false",
            f"train.threads={args.threads}",
        ],
    )


def worker_edgetune(args) -> dict:
    from edgetune.measure.memory import HeapPeak, peak_rss_mb
    from edgetune.train import finetune

    cfg = _config(args)
    with tempfile.TemporaryDirectory() as tmp, HeapPeak() as heap:
        cfg.out = str(Path(tmp) / "run")
        m = finetune(cfg).metrics
    ends = m["time"]["loop_step_s_median"]
    return {
        "step_s_median": ends,
        "heap_peak_mb": heap.peak_mb,
        "peak_rss_mb": peak_rss_mb(),
        "train_peak_rss_mb": m["memory"]["train_peak_rss_mb"],  # before the model is saved
        "loss_mean": statistics.fmean(m["train"]["loss_history"]),  # the Trainer's training_loss
    }


def worker_hf(args) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging

    from edgetune.data.load import load_data
    from edgetune.data.tasks import collate, epoch_order, tokenize
    from edgetune.measure.memory import HeapPeak, peak_rss_mb
    from edgetune.models.loader import load_model

    logging.set_verbosity_error()
    cfg = _config(args)
    torch.set_num_threads(args.threads)
    text = load_data(cfg.data)
    loaded = load_model(cfg.model.name, text.task, num_labels=len(text.labels) or None, seed=0)
    train = tokenize(text, loaded.tokenizer, cfg.data.seq_len, loaded.kind).splits["train"]
    train = [train[i] for i in epoch_order(len(train), cfg.train.seed, 0)]  # edgetune's order
    pad = loaded.tokenizer.pad_token_id
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
    ap.add_argument("--worker", choices=["edgetune", "hf"])
    args = ap.parse_args()
    if args.worker:
        result = (worker_edgetune if args.worker == "edgetune" else worker_hf)(args)
        print(json.dumps(result))
        return

    runs: dict[str, list[dict]] = {"edgetune": [], "hf": []}
    skip = ("worker", "repeats", "mmap_threshold")
    passthrough = [f"--{k}={v}" for k, v in vars(args).items() if k not in skip]
    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    stem = "trainer_vs_hf-mmap" if args.mmap_threshold else "trainer_vs_hf"
    for r in range(args.repeats):
        for who in ("edgetune", "hf") if r % 2 == 0 else ("hf", "edgetune"):
            proc = subprocess.run(
                [sys.executable, __file__, f"--worker={who}", *passthrough],
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"{who} worker failed:\n{proc.stderr[-3000:]}")
            runs[who].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(who, runs[who][-1], file=sys.stderr)

    def med(who, key):
        return statistics.median(r[key] for r in runs[who])

    summary = {
        "setup": {k: v for k, v in vars(args).items() if k != "worker"},
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
