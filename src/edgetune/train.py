"""The training loop: one explicit loop for every method.

finetune(cfg):  load the run's inputs once (`edgetune.pipeline`; nothing on disk yet) ->
    [plan a scheme for the budget, on the loaded model] -> the forecast, refused over budget ->
    run folder -> [resume from the newest checkpoint] -> for each optimizer step:
        batches of this step (order is a function of seed and epoch) -> method.step ->
        log (`edgetune.report.watch`) -> periodic validation -> periodic checkpoint
    -> test metrics -> model (and adapter; `edgetune.trained`), metrics.json, summary.md
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from edgetune.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    stale_temporaries,
)
from edgetune.config import RunConfig, load_config
from edgetune.data.tasks import collate, epoch_order
from edgetune.errors import EdgetuneError, MemoryStop
from edgetune.evaluate import evaluate
from edgetune.forecast import Forecast, eval_batch, fitting_hint
from edgetune.io import atomic_write_text, exclusive
from edgetune.measure.guard import MARGIN, MemoryGuard, Stop
from edgetune.measure.memory import peak_rss_mb
from edgetune.methods.base import Method
from edgetune.models.quantized import held_bytes
from edgetune.pipeline import Session, load
from edgetune.progress import progress_bar
from edgetune.report.summary import write_metrics, write_summary
from edgetune.report.watch import STARTED, Watch
from edgetune.trained import save_trained
from edgetune.units import human_bytes

# settings a resume may change (recorded in metrics.json); any other difference is refused
RESUMABLE = ("train.max_steps", "train.epochs", "train.eval_every", "train.save_every",
             "train.log_every", "train.keep_checkpoints", "train.final_eval", "train.threads",
             "train.budget", "train.device", "train.accelerator", "train.eval_batch_size",
             "train.lean_allocator", "train.merge", "out")  # fmt: skip


@dataclass
class RunResult:
    out: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def finetune(cfg: RunConfig, *, resume: bool = False, console: Console | None = None) -> RunResult:
    """Fine-tune as `cfg` says, writing the run to `cfg.out`; with `resume`, continue the run
    there (its config.yaml is the run's: `cfg` may change only the `RESUMABLE` settings)."""
    console = console or Console(stderr=True)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise EdgetuneError(f"--out {out} is a file; give a folder for the run")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out):  # a second run on the same folder is refused, not mixed in
        try:
            for tmp in stale_temporaries(out):  # left by a process killed mid-write
                shutil.rmtree(tmp, ignore_errors=True)
            changes = _check_resume(cfg, out) if resume else _check_fresh(out, console)
            session = _planned(load(cfg), console)
            for line in session.data.cut_lines(cfg.data.seq_len):  # cuts are never silent
                console.print(line, highlight=False, soft_wrap=True)
            forecast = session.forecast()
            console.print(forecast.line(), highlight=False)
            method = session.build_method()
            return _run(session, method, out, resume, changes, console, forecast)
        except BaseException:
            if created and not list_checkpoints(out):
                shutil.rmtree(out, ignore_errors=True)  # leave no half-written run folder
            raise


def _check_fresh(out: Path, console: Console) -> dict[str, Any]:
    """A new run may start in an empty folder, or in one a run was killed in before its first
    checkpoint (its config.yaml and the record of its first steps are all it left: it starts
    again); not over another run."""
    entries = {p.name for p in out.iterdir()} - {".lock"}
    if not entries:
        return {}
    if list_checkpoints(out) or (out / "metrics.json").exists():
        raise EdgetuneError(
            f"{out} already holds a run: pass --resume to continue it, or another --out"
        )
    if entries <= {"config.yaml", "checkpoints", *STARTED}:
        console.print(f"{out} holds a run that ended before its first checkpoint: starting again")
        for path in (out / name for name in entries):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return {}
    shown = ", ".join(sorted(entries)[:5])
    raise EdgetuneError(f"{out} holds files that are not an edgetune run ({shown}); give another "
                        "--out")  # fmt: skip


def _check_resume(cfg: RunConfig, out: Path) -> dict[str, Any]:
    """The run's own settings that `cfg` changes, all of them `RESUMABLE`; anything else is
    refused with each difference named (and config.yaml left as it is)."""
    if not list_checkpoints(out):
        raise EdgetuneError(
            f"nothing to resume in {out}: it has no checkpoint; start it again without --resume"
        )
    if not (out / "config.yaml").is_file():
        raise EdgetuneError(f"{out} has no config.yaml: it is not an edgetune run folder")
    before = load_config(out / "config.yaml")
    diff = before.differences(cfg)
    refused = {k: v for k, v in diff.items() if k not in RESUMABLE}
    if refused:
        listed = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in refused.items())
        raise EdgetuneError(
            f"cannot resume {out} with other settings ({listed}); resume with "
            f"`edgetune finetune --out {out} --resume` (the run's own config), changing only "
            f"{', '.join(k for k in RESUMABLE if k != 'out')}"
        )
    return {k: b for k, (_a, b) in diff.items() if k != "out"}


def _planned(session: Session, console: Console) -> Session:
    """With a budget or device and a method whose update scheme is unset, the session under
    the scheme planned for the budget on its own model and data (docs/planning.md); for a
    method with a count of top blocks by backprop (`blocks_option`, unset too), the most
    blocks that fit instead."""
    cfg = session.cfg
    option = cfg.spec.scheme_option
    if option is None or getattr(cfg.method, option) is not None:
        return session
    if not (cfg.train.budget or cfg.train.device):
        return session
    blocks = cfg.spec.blocks_option
    if blocks is not None:  # a count of top blocks by backprop, not a scheme, is planned
        if getattr(cfg.method, blocks) is not None:
            return session
        from edgetune.plan.planner import plan_blocks

        around = session.overhead().total
        k, cost = plan_blocks(session.step_inputs(), cfg.train.method, cfg.method,
                              cfg.train.budget, cfg.train.device, around)  # fmt: skip
        peak = human_bytes(around + cost.memory.peak)
        console.print(f"planned for the budget: {blocks}={k} (peak {peak}; kept in the run's "
                      "config.yaml)")  # fmt: skip
        return session.with_config(cfg.with_changes({f"method.{blocks}": k}))
    from edgetune.plan.planner import make_plan

    plan, _ = make_plan(session, cfg.train.budget, cfg.train.device, console=console)
    console.print(f"planned scheme for the budget: {plan.scheme.name}, "
                  f"{len(plan.scheme.updates)} units (kept in the run's config.yaml)")  # fmt: skip
    return session.with_config(cfg.with_changes({f"method.{option}": plan.scheme}))


def _run(
    session: Session,
    method: Method,
    out: Path,
    resume: bool,
    changes: dict[str, Any],
    console: Console,
    forecast: Forecast,
) -> RunResult:
    cfg, data, t = session.cfg, session.data, session.cfg.train
    tokenizer, pad_id, total = session.loaded.tokenizer, session.pad_id, session.total_steps
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"run": {"total_steps": total, **cfg.identity}}
    if data.cuts:  # what fitting examples into data.seq_len cut, per split
        metrics["data_cuts"] = {split: c.as_dict() for split, c in data.cuts.items()}

    step, history, step_times, step_ends = 0, [], [], []
    if resume:
        ckpt = load_checkpoint(list_checkpoints(out)[-1], cfg.identity)
        method.load_trainable_state(ckpt.trainable)
        method.load_state_dict(ckpt.state["method"])
        torch.set_rng_state(ckpt.state["torch_rng"])
        step, history = ckpt.step, ckpt.state["history"].tolist()
        metrics.update(json.loads(ckpt.state.get("metrics", "{}")))
        if changes:
            metrics.setdefault("resumed", []).append({"step": step, "changes": changes})
        console.print(f"resuming {out} from step {step}"
                      + (f" with {', '.join(f'{k}={v}' for k, v in changes.items())}"
                         if changes else ""))  # fmt: skip
    atomic_write_text(out / "config.yaml", cfg.to_yaml())

    # the evaluation's batch: the configured one, or the largest whose forward fits the budget
    eval_size, eval_peak = t.eval_batch_size, None
    if t.final_eval or t.eval_every or t.eval_before:
        eval_size, eval_peak = eval_batch(session.step_inputs(), forecast.cost, forecast.budget,
                                          t.eval_batch_size, forecast.overhead)  # fmt: skip
        console.print(f"evaluation: batch {eval_size}, peak {eval_peak / 2**20:,.1f} MiB",
                      highlight=False)  # fmt: skip

    progress = progress_bar(console, keep=True)
    placement = session.placement
    held = held_bytes(session.model)  # the weights as they train (before any export merge)
    console.print(f"computing on {placement.describe()}", highlight=False)

    def evaluated(split: str) -> dict[str, float]:
        with placement.compute():
            return evaluate(method.model, data, split, pad_id, eval_size,
                            tokenizer=tokenizer, progress=progress,
                            chunked=t.chunked_loss)  # fmt: skip

    def checkpoint() -> None:
        """Save the run at `step`, a step's end, and its curves."""
        kept = {k: metrics[k] for k in ("test_before", "validation_history", "resumed")
                if k in metrics}  # fmt: skip
        state = {
            "method": method.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": torch.tensor(history, dtype=torch.float64),
            "metrics": json.dumps(kept),
        }
        save_checkpoint(out, step, cfg.identity, method.trainable_state(), state,
                        t.keep_checkpoints)  # fmt: skip
        watch.plot()

    guard = MemoryGuard.for_run(forecast.budget, forecast.limit_name)
    if guard is not None:
        console.print(f"memory guard: {guard.limit_name}", highlight=False)
    with progress, Watch(cfg, console, total, step, forecast) as watch:
        if t.eval_before and not resume:
            metrics["test_before"] = evaluated("test")
            console.print(f"before training, test: {_fmt(metrics['test_before'])}")
        bar = progress.add_task(f"train {t.method}", total=total, completed=step, info="")
        orders: dict[int, list[int]] = {}
        while step < total:
            # -- the micro-batches of this step (the epoch's order: a function of seed, epoch)
            micro = []
            for j in range(t.grad_accum):
                epoch, within = divmod(step * t.grad_accum + j, session.micro_per_epoch)
                if epoch not in orders:
                    orders = {epoch: epoch_order(len(data.splits["train"]), t.seed, epoch)}
                idx = orders[epoch][within * t.batch_size : (within + 1) * t.batch_size]
                micro.append(placement.batch(collate([data.splits["train"][i] for i in idx],
                                                     pad_id)))  # fmt: skip
            # -- the method's step
            if guard is not None:
                guard.before_step()
            start = time.perf_counter()
            with placement.compute():
                result = method.step(micro)
            step_ends.append(time.perf_counter())
            step_times.append(step_ends[-1] - start)
            step += 1
            history.append(result.loss)
            progress.update(bar, advance=1, **watch.step(step, result, step_times[-1]))
            # -- validation, checkpoint
            if t.eval_every and (step % t.eval_every == 0 or step == total):
                val = evaluated("validation")
                metrics.setdefault("validation_history", []).append({"step": step, **val})
                watch.validation(step, val)
                console.print(f"step {step}: validation {_fmt(val)}")
            due = (t.save_every and step % t.save_every == 0) or step == total
            if due:
                checkpoint()
            # -- the memory guard: stop, saved, before the next step would not fit
            stop = guard.after_step() if guard is not None and step < total else None
            if stop is not None:
                if not due:
                    checkpoint()
                raise MemoryStop(_stopped(session, forecast, stop, step, out))
        train_peak = peak_rss_mb()  # before evaluation and saving
        if t.final_eval:
            metrics["eval"] = evaluated("test")
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
    # training is over: the method may merge in place
    save_trained(method, out, tokenizer, cfg.model.name, merge=t.merge)
    # the whole run's peak, the end (evaluation, export, saving) included
    metrics["memory"] = {"peak_rss_mb": peak_rss_mb(), "train_peak_rss_mb": train_peak,
                         "weights_mb": (held["packed"] + held["dense"]) / 2**20}  # fmt: skip
    m = forecast.cost.memory
    metrics["forecast"] = {"peak_mb": m.peak / 2**20, "weights_mb": m.weights / 2**20,
                           "process_peak_mb": forecast.peak / 2**20,
                           "runtime_mb": forecast.overhead.runtime / 2**20,
                           "loaded_mb": forecast.overhead.loaded / 2**20,
                           "step_s": forecast.latency_s,
                           "flops": forecast.cost.flops, "eval_batch": eval_size,
                           "eval_peak_mb": eval_peak / 2**20 if eval_peak is not None else None,
                           "compute": placement.describe()}  # fmt: skip
    write_metrics(out / "metrics.json", metrics)
    write_summary(out / "summary.md", cfg, metrics)
    return RunResult(out, metrics)


def _stopped(session: Session, forecast: Forecast, stop: Stop, step: int, out: Path) -> str:
    """The one line of a run the memory guard stopped: why, what is saved, what would fit
    (the forecast's alternatives, with the room this step measured)."""
    others = max(0.0, stop.in_use - stop.own)  # other processes in the cgroup
    missed = max(0.0, stop.own + stop.growth - forecast.peak)  # what the forecast left out
    room = stop.limit * (1 - MARGIN) - others - missed - forecast.overhead.total
    cfg = session.cfg
    hint = fitting_hint(session.step_inputs(), forecast.cost, room, forecast.overhead.total,
                        (cfg.train.method, cfg.method))  # fmt: skip
    return (f"stopped after step {step} of {session.total_steps} before running out of memory: "
            f"{stop.line()}; the run is saved: `edgetune finetune --out {out} --resume` "
            f"continues it when there is room; {hint}")  # fmt: skip


def _fmt(m: dict[str, float]) -> str:
    keys = [k for k in ("accuracy", "macro_f1", "perplexity", "rougeL") if k in m]
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys)
