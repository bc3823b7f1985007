"""The one way a run's inputs are made: config -> data -> model -> tokenized splits -> method.

    session = pipeline.load(cfg)            # data, model and tokens, loaded once
    method = session.build_method()         # the configured rule on the loaded model

`finetune`, `eval`, `plan`, the federated client and server, `edgetune bench` and every script
in `benchmarks/` load through here, so they all see the same model, the same splits, the same
labels and the same number of steps. A `Session` never changes its config: `with_config` gives
a session of another method's settings over the same loaded model and data (on-the-fly
planning plans on the model it then trains).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn

from edgetune.config import RunConfig
from edgetune.cost import Precision, shape_from_config
from edgetune.cost.device import THIS_MACHINE
from edgetune.data.load import load_data
from edgetune.data.tasks import TaskData, batches, epoch_order, tokenize
from edgetune.errors import EdgetuneError
from edgetune.families import ENCODER
from edgetune.forecast import Forecast, Overhead, StepInputs, check_budget, predict
from edgetune.measure.memory import (
    anonymous_bytes,
    anonymous_rss,
    cgroup_limit,
    lean_allocator,
    trim_heap,
)
from edgetune.measure.runtime import runtime
from edgetune.methods.base import Method, MethodSettings, scored_share
from edgetune.methods.label_words import LabelWords
from edgetune.methods.registry import build_method
from edgetune.models.loader import LoadedModel, load_model
from edgetune.models.quantized import bytes_per_weight
from edgetune.placement import Placement, place


def quiet_libraries() -> None:
    """No progress bars or load reports from transformers (and from `datasets`, quieted where a
    data source imports it: `edgetune.data.rows.datasets_quiet`): edgetune shows its own
    progress, and a report of a new classifier head's missing weights is expected."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    # PEFT still asks transformers 5 for `is_gradient_checkpointing` (deprecated, same meaning)
    warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)


@dataclass(frozen=True)
class Session:
    """A run's loaded inputs: its config, the model and tokenizer, the tokenized splits."""

    cfg: RunConfig
    loaded: LoadedModel
    data: TaskData
    resident: float = 0.0
    """Bytes the load left resident besides the weights (tokenizer, tokenized data, what
    loading kept), measured as it loaded."""

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def pad_id(self) -> int:
        return self.loaded.tokenizer.pad_token_id

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def micro_per_epoch(self) -> int:
        """Micro-batches in one pass over the training split."""
        return math.ceil(len(self.data.splits["train"]) / self.cfg.train.batch_size)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run: `max_steps`, else `epochs` passes."""
        t = self.cfg.train
        per_epoch = max(1, self.micro_per_epoch // t.grad_accum)
        return t.max_steps or max(1, math.ceil(t.epochs * per_epoch))

    @cached_property
    def placement(self) -> Placement:
        """Where the run computes and in which dtype (`train.accelerator`, `train.dtype`)."""
        return place(self.cfg.train.accelerator, self.cfg.train.dtype)

    @cached_property
    def scored(self) -> float:
        """Share of the positions of the run's first training batches that the loss scores
        (a causal LM forms logits there only), for the forecast."""
        train = self.data.splits["train"]
        order = epoch_order(len(train), self.cfg.train.seed, 0)[: 8 * self.cfg.train.batch_size]
        return scored_share(self.model, batches(train, self.cfg.train.batch_size, self.pad_id,
                                                order))  # fmt: skip

    def method_settings(self, **changes) -> MethodSettings:
        """The method's settings for this run (the loop's schedule over `total_steps`)."""
        t, total = self.cfg.train, self.total_steps
        settings = MethodSettings(
            lr=t.lr,
            total_steps=total,
            weight_decay=t.weight_decay,
            warmup_steps=int(t.warmup_ratio * total),
            schedule=t.schedule,
            max_grad_norm=t.max_grad_norm,
            seed=t.seed,
            options=self.cfg.method,
            loss_scale=self.placement.dtype == "fp16",
            chunked_loss=t.chunked_loss,
        )
        return replace(settings, **changes)

    def build_method(self, model: nn.Module | None = None, **changes) -> Method:
        """The configured method on `model` (default: the loaded model itself, which it then
        trains), with `method_settings(**changes)`."""
        model = self.model if model is None else model
        if self.cfg.train.checkpointing:
            checkpoint_blocks(model)
        return build_method(self.cfg.train.method, model, self.method_settings(**changes))

    def step_inputs(self) -> StepInputs:
        """What the cost model needs of this run: its model's own config, micro-batch, task
        and labels, and the share of positions its loss scores."""
        cfg = self.cfg
        # a transformers config (nn.Module types a module's attributes Tensor | Module)
        config: Any = self.model.config
        return StepInputs(
            shape_from_config(config.to_dict(), cfg.model.name),
            batch=cfg.train.batch_size,
            seq=cfg.data.seq_len,
            head="classifier" if self.task == "classify" else "lm",
            n_labels=len(self.data.labels),
            tgt_seq=cfg.data.target_tokens,
            scored=self.scored,
            precision=Precision(activations=self.placement.dtype),
            held_bytes=bytes_per_weight(self.model),
            checkpointing=cfg.train.checkpointing,
            chunked_loss=cfg.train.chunked_loss,
            lean_allocator=cfg.train.lean_allocator,
        )

    def forecast(self) -> Forecast:
        """The forecast of one step of this run under its budget or device (with the run's
        total time), refused naming what would fit when it does not fit."""
        cfg = self.cfg
        inputs = self.step_inputs()
        cost = predict(inputs, cfg.train.method, cfg.method)
        return check_budget(cost, inputs, cfg.train.budget, cfg.train.device, self.total_steps,
                            run=(cfg.train.method, cfg.method),
                            overhead=self.overhead(), enforced=enforced_limit(),
                            clock=THIS_MACHINE)  # fmt: skip

    def overhead(self) -> Overhead:
        """The process around the step: this machine's runtime (measured once, cached) and
        what this session's load left resident besides the weights."""
        rt = runtime()
        assert rt is not None  # runtime() measures what is not cached
        return Overhead(rt.bytes, self.resident, rt.source)

    def with_config(self, cfg: RunConfig) -> Session:
        """This session under another config of the same model and data (another method, its
        options, the schedule): nothing is loaded again."""
        for section in ("model", "data"):
            if getattr(cfg, section) != getattr(self.cfg, section):
                raise EdgetuneError(f"a session's {section} cannot change; load another")
        if cfg.train.seed != self.cfg.train.seed:
            raise EdgetuneError("a session's seed cannot change (it drew the new weights)")
        return replace(self, cfg=cfg)


def enforced_limit() -> tuple[float, str] | None:
    """The memory limit the kernel enforces on this process (its cgroup's), named."""
    limit = cgroup_limit()
    return None if limit is None else (float(limit), "the cgroup's memory limit")


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing: each block keeps only its input for the backward and runs its
    forward again there (transformers' own, non-reentrant)."""
    inner: Any = model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise EdgetuneError(f"train.checkpointing: {type(model).__name__} cannot recompute its "
                            "blocks (transformers does not support it for this model)")  # fmt: skip
    inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _check_length(cfg: RunConfig, model: nn.Module) -> None:
    """Refuse a sequence longer than the positions the model has (a learned position table
    has no row for it; a rotary model was never trained that far)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and cfg.data.seq_len > limit:
        raise EdgetuneError(
            f"data.seq_len {cfg.data.seq_len} is longer than the {limit} positions of "
            f"{cfg.model.name}; give --seq-len {limit} or less"
        )


def load(cfg: RunConfig, splits: tuple[str, ...] | None = None) -> Session:
    """Load `cfg`'s data, model and tokenized splits (all, or those named), validating every
    input. New weights (a classifier head, or all with `random_init`) are drawn from the run's
    seed, so a resumed run rebuilds the same model."""
    quiet_libraries()
    if cfg.train.lean_allocator:
        lean_allocator()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    trim_heap()
    before = anonymous_rss()
    text = load_data(cfg.data)
    loaded = load_model(
        cfg.model.name,
        text.task,
        num_labels=len(text.labels) or None,
        random_init=cfg.model.random_init,
        seed=cfg.train.seed,
        weights=cfg.model.weights,
        adapter=cfg.model.adapter,
        label_words=cfg.data.label_words is not None,
    )
    _check_length(cfg, loaded.model)
    data = tokenize(text, loaded.tokenizer, cfg.data, loaded.kind, splits)
    del text  # the rows live on in `data.raw` only where evaluation generates from them
    if data.word_ids is not None:  # classes scored through the LM head (`data.label_words`)
        mask = loaded.tokenizer.mask_token_id if loaded.kind == ENCODER else None
        loaded.model = LabelWords(loaded.model, data.word_ids, mask)
    if data.labels:  # the classifier head learns the labels' names
        config: Any = loaded.model.config
        config.id2label = dict(enumerate(data.labels))
        config.label2id = {n: i for i, n in enumerate(data.labels)}
    trim_heap()  # the transients of loading and tokenizing are freed: give their pages back
    after = anonymous_rss()
    model = loaded.model
    written = anonymous_bytes([*model.parameters(), *model.buffers()])  # weights not mapped
    resident = 0.0 if before is None or after is None else max(0.0, after - before - written)
    session = Session(cfg, loaded, data, resident)
    device = session.placement.device
    if device.type != "cpu":
        loaded.model.to(device)
    return session
