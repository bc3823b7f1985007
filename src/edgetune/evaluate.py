"""Evaluation per task: accuracy and macro-F1 (classify), perplexity (lm and the text tasks),
ROUGE-1/2/L of greedy generations (summarize, chat)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from rich.progress import Progress
from torch import nn

from edgetune.data.tasks import IGNORE, Example, TaskData, batches, prompt_ids, target_text
from edgetune.methods.base import forward_loss


def macro_f1(pred: Sequence[int], gold: Sequence[int], n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions."""
    scores = []
    for c in range(n_classes):
        tp = sum(p == c and g == c for p, g in zip(pred, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(pred, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(pred, gold, strict=True))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TaskData,
    split: str,
    pad_id: int,
    batch_size: int = 32,
    tokenizer=None,
    generate_samples: int = 32,
    progress: Progress | None = None,
    chunked: bool = False,
) -> dict[str, float]:
    """Metrics of `model` on one split; generation metrics on its first `generate_samples`.
    `chunked`: a causal LM's loss a vocabulary chunk at a time (`train.chunked_loss`)."""
    was_training = model.training
    model.eval()
    examples = data.splits[split]
    task_id = progress.add_task(f"eval {split}", total=len(examples), info="") if progress else None
    if data.task == "classify":
        out = _classify(model, examples, pad_id, batch_size, len(data.labels), progress, task_id)
    else:
        out = _perplexity(model, examples, pad_id, batch_size, progress, task_id, chunked)
        if data.task in ("summarize", "chat") and tokenizer is not None and generate_samples:
            out.update(rouge(model, tokenizer, data, split, generate_samples))
    if progress is not None and task_id is not None:  # a task_id wherever there is a progress
        progress.remove_task(task_id)
    model.train(was_training)
    return out


def _classify(model, examples, pad_id, batch_size, n_classes, progress, task_id):
    pred, gold = [], []
    for batch in batches(examples, batch_size, pad_id):
        labels = batch.pop("labels")
        pred += model(**_on(model, batch)).logits.argmax(-1).tolist()
        gold += labels.tolist()
        if progress:
            progress.advance(task_id, len(labels))
    acc = sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold)
    return {"accuracy": acc, "macro_f1": macro_f1(pred, gold, n_classes), "samples": len(gold)}


def _perplexity(model, examples, pad_id, batch_size, progress, task_id, chunked):
    nll, tokens = 0.0, 0
    for batch in batches(examples, batch_size, pad_id):
        loss = forward_loss(model, _on(model, batch), chunked)
        labels = batch["labels"]
        # HF causal LMs shift labels inside; count the predicted positions the same way
        is_seq2seq = getattr(model.config, "is_encoder_decoder", False)
        n = int((labels != IGNORE).sum() if is_seq2seq else (labels[:, 1:] != IGNORE).sum())
        nll += loss.item() * n
        tokens += n
        if progress:
            progress.advance(task_id, len(labels))
    loss = nll / max(1, tokens)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}


def _on(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`batch` on the model's device (no copy on the CPU)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def generate(
    model, tokenizer, row: dict, task: str, max_new_tokens: int = 24, seq_len: int = 512
) -> str:
    """Greedy answer of the model to one row's prompt."""
    if getattr(model.config, "is_encoder_decoder", False):
        ids = tokenizer("summarize: " + row["text"], truncation=True, max_length=seq_len)[
            "input_ids"
        ]
    else:
        ids = prompt_ids(row, task, tokenizer, seq_len - max_new_tokens)
    input_ids = torch.tensor([ids], device=next(model.parameters()).device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[0] if getattr(model.config, "is_encoder_decoder", False) else out[0, len(ids) :]
    return tokenizer.decode(new, skip_special_tokens=True).strip().split("\n")[0]


def rouge(model, tokenizer, data: TaskData, split: str, n: int) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = list(data.raw[split].select(range(min(n, len(data.raw[split])))))
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for row in rows:
        scores = scorer.score(
            target_text(row, data.task), generate(model, tokenizer, row, data.task)
        )
        for k in totals:
            totals[k] += scores[k].fmeasure
    return {k: v / len(rows) for k, v in totals.items()}


__all__ = ["Example", "evaluate", "generate", "macro_f1", "rouge"]
