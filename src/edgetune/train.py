"""The training loop: one explicit loop for every method.

finetune(cfg):  resolve data, model and method (nothing on disk yet) -> run folder ->
    [resume from the newest checkpoint] -> for each optimizer step:
        batches of this step (order is a function of seed and epoch) -> method.step ->
        log -> periodic validation -> periodic checkpoint
    -> test metrics -> model, metrics.json, summary.md
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgetune.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from edgetune.config import RunConfig
from edgetune.data.load import load_data
from edgetune.data.tasks import TaskData, collate, epoch_order, tokenize
from edgetune.errors import EdgetuneError
from edgetune.evaluate import evaluate
from edgetune.forecast import forecast_run
from edgetune.io import atomic_dir, atomic_write_text
from edgetune.measure.memory import peak_rss_mb
from edgetune.methods import Method, MethodSettings, build_method
from edgetune.models.loader import LoadedModel, load_model
from edgetune.report.summary import write_metrics, write_summary


@dataclass
class Prepared:
    """Everything a run needs, resolved before anything is written to disk."""

    cfg: RunConfig
    loaded: LoadedModel
    data: TaskData
    method: Method
    total_steps: int
    micro_per_epoch: int


@dataclass
class RunResult:
    out: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def load_inputs(cfg: RunConfig) -> tuple[LoadedModel, TaskData]:
    """The model and the tokenized data of a run (the classifier head learns the labels' names)."""
    text = load_data(cfg.data)
    loaded = load_model(
        cfg.model.name,
        text.task,
        num_labels=len(text.labels) or None,
        random_init=cfg.model.random_init,
        seed=cfg.train.seed,
    )
    data = tokenize(text, loaded.tokenizer, cfg.data.seq_len, loaded.kind)
    if data.labels:
        loaded.model.config.id2label = dict(enumerate(data.labels))
        loaded.model.config.label2id = {n: i for i, n in enumerate(data.labels)}
    return loaded, data


def prepare(cfg: RunConfig) -> Prepared:
    """Load data, model and method, validating every input."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    loaded, data = load_inputs(cfg)
    t = cfg.train
    micro_per_epoch = math.ceil(len(data.splits["train"]) / t.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // t.grad_accum)
    total = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    settings = MethodSettings(
        lr=t.lr,
        total_steps=total,
        weight_decay=t.weight_decay,
        warmup_steps=int(t.warmup_ratio * total),
        schedule=t.schedule,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        options=cfg.method,
    )
    method = build_method(t.method, loaded.model, settings)
    return Prepared(cfg, loaded, data, method, total, micro_per_epoch)


def finetune(cfg: RunConfig, *, resume: bool = False, console: Console | None = None) -> RunResult:
    """Fine-tune as `cfg` says, writing the run to `cfg.out`."""
    console = console or Console(stderr=True)
    out = Path(cfg.out)
    if not resume and out.exists() and any(out.iterdir()):
        raise EdgetuneError(
            f"{out} already holds a run: pass --resume to continue it, or another --out"
        )
    if resume and not list_checkpoints(out):
        raise EdgetuneError(f"nothing to resume in {out}: it has no checkpoint")
    if (
        cfg.train.method == "sparse"
        and "scheme" not in cfg.method
        and (cfg.train.budget or cfg.train.device)
    ):
        cfg.method["scheme"] = str(_plan_on_the_fly(cfg, console))
    p = prepare(cfg)
    forecast = forecast_run(p, cfg.train.budget, cfg.train.device)
    console.print(forecast.line(), highlight=False)
    created = not out.exists()
    try:
        return _run(p, out, resume, console)
    except BaseException:
        if created and not list_checkpoints(out):
            shutil.rmtree(out, ignore_errors=True)  # leave no half-written run folder
        raise


def _plan_on_the_fly(cfg: RunConfig, console: Console) -> Path:
    """`--method sparse --budget B` without a scheme: plan one (contribution analysis, cached)
    and keep it as a YAML file the run's config points to."""
    import hashlib

    from edgetune.paths import cache_dir
    from edgetune.plan.search import plan_scheme

    scheme = plan_scheme(cfg, cfg.train.budget, cfg.train.device, console=console,
                         whole_peak=True)  # fmt: skip
    key = hashlib.md5(cfg.to_yaml().encode()).hexdigest()[:12]
    path = cache_dir() / "plans" / f"{scheme.name}-{key}.yaml"
    scheme.save(path)
    console.print(f"planned scheme for the budget: {path}")
    return path


def _identity(cfg: RunConfig) -> dict[str, str]:
    return {"model": cfg.model.name, "method": cfg.train.method, "data": cfg.data.name}


def _run(p: Prepared, out: Path, resume: bool, console: Console) -> RunResult:
    cfg, method, data, t = p.cfg, p.method, p.data, p.cfg.train
    pad_id = p.loaded.tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    metrics: dict[str, Any] = {"run": {"total_steps": p.total_steps, **_identity(cfg)}}

    step, history, step_times, step_ends = 0, [], [], []
    if resume:
        ckpt = load_checkpoint(list_checkpoints(out)[-1], _identity(cfg))
        method.load_trainable_state(ckpt.trainable)
        method.load_state_dict(ckpt.state["method"])
        torch.set_rng_state(ckpt.state["torch_rng"])
        step, history = ckpt.step, ckpt.state["history"].tolist()
        console.print(f"resuming {out} from step {step}")

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        if t.eval_before and not resume:
            metrics["test_before"] = evaluate(
                method.model, data, "test", pad_id, progress=progress, tokenizer=p.loaded.tokenizer
            )
            console.print(f"before training, test: {_fmt(metrics['test_before'])}")
        bar = progress.add_task(f"train {t.method}", total=p.total_steps, completed=step, info="")
        orders: dict[int, list[int]] = {}
        while step < p.total_steps:
            micro = []
            for j in range(t.grad_accum):
                epoch, within = divmod(step * t.grad_accum + j, p.micro_per_epoch)
                if epoch not in orders:
                    orders = {epoch: epoch_order(len(data.splits["train"]), t.seed, epoch)}
                idx = orders[epoch][within * t.batch_size : (within + 1) * t.batch_size]
                micro.append(collate([data.splits["train"][i] for i in idx], pad_id))
            start = time.perf_counter()
            result = method.step(micro)
            step_ends.append(time.perf_counter())
            step_times.append(step_ends[-1] - start)
            step += 1
            history.append(result.loss)
            rate = 1.0 / statistics.median(step_times[-20:])
            progress.update(bar, advance=1, info=f"loss {result.loss:.4f}  {rate:.2f} step/s")

            if t.eval_every and (step % t.eval_every == 0 or step == p.total_steps):
                val = evaluate(
                    method.model,
                    data,
                    "validation",
                    pad_id,
                    progress=progress,
                    tokenizer=p.loaded.tokenizer,
                )
                metrics.setdefault("validation_history", []).append({"step": step, **val})
                console.print(f"step {step}: validation {_fmt(val)}")
            if (t.save_every and step % t.save_every == 0) or step == p.total_steps:
                state = {
                    "method": method.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "history": torch.tensor(history, dtype=torch.float64),
                }
                save_checkpoint(
                    out, step, _identity(cfg), method.trainable_state(), state, t.keep_checkpoints
                )
        progress.remove_task(bar)
        train_peak = peak_rss_mb()  # before evaluation and saving
        if t.final_eval:
            metrics["eval"] = evaluate(
                method.model, data, "test", pad_id, progress=progress, tokenizer=p.loaded.tokenizer
            )
            console.print(f"after training, test: {_fmt(metrics['eval'])}")

    metrics["train"] = {
        "steps": step,
        "loss_first": history[0] if history else None,
        "loss_last": history[-1] if history else None,
        "loss_history": [float(x) for x in history],
    }
    metrics["time"] = {
        "step_s_median": statistics.median(step_times) if step_times else None,
        # whole-loop time per step (batching, logging included): interval between step ends
        "loop_step_s_median": statistics.median(
            b - a for a, b in zip(step_ends, step_ends[1:], strict=False)
        )
        if len(step_ends) > 1
        else None,
        "steps_timed": len(step_times),
        "train_s": sum(step_times),
    }
    metrics["memory"] = {"peak_rss_mb": peak_rss_mb(), "train_peak_rss_mb": train_peak}
    model = method.export_model()
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp)
        p.loaded.tokenizer.save_pretrained(tmp)
    write_metrics(out / "metrics.json", metrics)
    write_summary(out / "summary.md", cfg, metrics)
    return RunResult(out, metrics)


def _fmt(m: dict[str, float]) -> str:
    keys = [k for k in ("accuracy", "macro_f1", "perplexity", "rougeL") if k in m]
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys)
