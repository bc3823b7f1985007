"""ONNX export for ONNX Runtime, checked there against PyTorch after it is written.

torch.onnx's dynamo exporter (torch.export, then onnxscript) writes an fp32 graph with dynamic
batch and sequence axes. Inputs and outputs carry the names optimum and onnxruntime-genai use:

- a sequence classifier (MiniLM/BERT, DistilBERT, ALBERT, Llama with a classification head):
  input_ids, attention_mask (batch, seq) -> logits (batch, labels);
- a causal LM (Llama/SmolLM2 and the other decoders transformers caches for), with its KV
  cache: input_ids, position_ids (batch, seq), attention_mask (batch, past + seq),
  past_key_values.{i}.key / .value (batch, kv_heads, past, head_dim)
  -> logits (batch, seq, vocab), present.{i}.key / .value (batch, kv_heads, past + seq,
  head_dim). A prompt goes in with empty pasts (past = 0); each next call passes the presents
  back with the new tokens.

`write` puts model.onnx, its weights (model.onnx.data), config.json and the tokenizer in one
folder, `OUT/<name>-onnx/` (written to a temporary folder first). `check` runs the written file in
ONNX Runtime on held-out token sequences and compares it with the PyTorch model in fp32: a
classifier's logits (max abs difference, labels equal); a decoder's next-token top-1 agreement
and perplexity (`edgetune.export.compare`), the first half of each text read as one prompt and
the rest one token at a time through the cache, as generation reads it. A figure outside its
tolerance is a failure line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.export.compare import AGREEMENT_MIN, PPL_TOL, compare
from edgetune.export.source import RunModel
from edgetune.io import atomic_dir

QUANTS = ("fp32",)
FILE = "model.onnx"
LOGIT_TOL = 1e-4  # a classifier's logits, max abs difference from PyTorch
BATCH = 32  # texts a classifier check runs at once
# the example shapes traced (distinct sizes above 1, so no axis is fixed or merged with another)
_B, _SEQ, _PAST = 2, 7, 3


def write(model: RunModel, out: Path, quant: str) -> list[Path]:
    """Write `model` (a sequence classifier or a causal LM) as `out/<name>-onnx/`: the graph,
    its weights, its config and tokenizer; returns the files."""
    net = model.model
    decoder = _is_decoder(net)
    _runtime()  # refuse before the slow export when the runtime is missing
    folder = out / f"{model.name}-onnx"
    with atomic_dir(folder) as tmp:
        _write_decoder(net, tmp / FILE) if decoder else _write_classifier(net, tmp / FILE)
        config: Any = net.config  # a transformers config (nn.Module types it Tensor | Module)
        config.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        names = sorted(p.name for p in tmp.iterdir())
    return [folder / n for n in names]


def check(model: RunModel, files: list[Path], quant: str,
          sequences: list) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    """The written graph in ONNX Runtime against the PyTorch model on `sequences` (token ids):
    `check_classifier`'s or `check_decoder`'s figures, and a line per figure outside its
    tolerance."""
    net = model.model
    decoder = _is_decoder(net)
    session = _session(_runtime(), next(f for f in files if f.name == FILE))
    if decoder:
        figures = check_decoder(net, session, sequences)
    else:
        figures = check_classifier(net, session, sequences, model.tokenizer.pad_token_id or 0)
    return figures, _failures(figures, decoder)


def _is_decoder(model: nn.Module) -> bool:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return False
    config: Any = model.config
    can_generate = getattr(model, "can_generate", lambda: False)()
    if can_generate and not getattr(config, "is_encoder_decoder", False):
        return True
    raise EdgetuneError(
        f"ONNX export covers sequence classifiers and causal LMs; {name} is neither"
    )


def _runtime() -> Any:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError:
        raise EdgetuneError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'edgetune[export]'"
        ) from None
    return onnxruntime


# -- Writing --------------------------------------------------------------------------------


class _Classifier(nn.Module):
    """The logits alone (a transformers model returns an output object)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class _Decoder(nn.Module):
    """A causal LM over flat cache tensors: (keys, values) of each layer in, the grown ones
    out, since an ONNX graph takes tensors, not transformers' cache object."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return (
            out.logits,
            *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)],
        )


def _write_classifier(model: nn.Module, path: Path) -> None:
    ids = torch.randint(0, _vocab(model), (_B, _SEQ))
    axes = {0: "batch", 1: "seq"}
    _torch_export(
        _Classifier(model).eval(), (ids, torch.ones_like(ids)), path,
        ["input_ids", "attention_mask"], ["logits"], (axes, axes),
    )  # fmt: skip


def _write_decoder(model: nn.Module, path: Path) -> None:
    # the cache's shapes, read from the model itself: (batch, kv_heads, past, head_dim) a layer
    ids = torch.randint(0, _vocab(model), (_B, _PAST))
    with torch.no_grad():
        past = [t for layer in model(input_ids=ids, use_cache=True).past_key_values.layers
                for t in (layer.keys, layer.values)]  # fmt: skip
    ids = torch.randint(0, _vocab(model), (_B, _SEQ))
    mask = torch.ones(_B, _PAST + _SEQ, dtype=torch.long)
    positions = torch.arange(_PAST, _PAST + _SEQ).expand(_B, _SEQ)
    names = [f"{i // 2}.{('key', 'value')[i % 2]}" for i in range(len(past))]
    seq, total, cached = {0: "batch", 1: "seq"}, {0: "batch", 1: "total"}, {0: "batch", 2: "past"}
    _torch_export(
        _Decoder(model).eval(), (ids, mask, positions, *past), path,
        ["input_ids", "attention_mask", "position_ids", *[f"past_key_values.{n}" for n in names]],
        ["logits", *[f"present.{n}" for n in names]],
        (seq, total, seq, tuple(cached for _ in past)),
    )  # fmt: skip


def _torch_export(module, args, path, inputs, outputs, axes) -> None:
    try:
        torch.onnx.export(
            module, args, str(path), dynamo=True, verbose=False, external_data=True,
            input_names=inputs, output_names=outputs, dynamic_shapes=axes,
        )  # fmt: skip
    except Exception as e:  # torch.export's and the translator's errors have no common type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        name = type(module.model).__name__
        raise EdgetuneError(f"torch.onnx could not export {name}: {first}") from None


def _vocab(model: nn.Module) -> int:
    return model.get_input_embeddings().num_embeddings  # type: ignore[operator]


# -- Checking in ONNX Runtime ----------------------------------------------------------------


def _session(ort: Any, path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_classifier(
    model: nn.Module, session: Any, ids: Sequence[Sequence[int]], pad_id: int
) -> dict[str, float]:
    """Logits of ONNX Runtime and PyTorch on the same padded batches: max abs difference and
    how many labels (argmax) agree."""
    diff, equal = 0.0, 0
    for start in range(0, len(ids), BATCH):
        rows = ids[start : start + BATCH]
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)], mask[i, : len(r)] = r, 1
        (got,) = session.run(None, {"input_ids": input_ids, "attention_mask": mask})
        want = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask))
        want = want.logits.numpy()
        diff = max(diff, float(np.abs(got - want).max()))
        equal += int((got.argmax(-1) == want.argmax(-1)).sum())
    return {
        "texts": len(ids),
        "labels_equal": equal,
        "label_agreement": equal / len(ids),
        "max_logit_diff": diff,
    }


@torch.no_grad()
def check_decoder(model: nn.Module, session: Any, ids: Sequence[Sequence[int]]) -> dict[str, float]:
    """Next-token logits of ONNX Runtime through its cache (half of each text as a prompt, the
    rest a token at a time) against PyTorch's over the whole text (`edgetune.export.compare`:
    top-1 agreement, both perplexities, max abs difference), over every position that has a
    next token."""
    rows = [np.asarray(row) for row in ids if len(row) >= 2]
    if not rows:
        raise EdgetuneError("the check texts hold no text of two tokens or more")
    return compare(
        rows,
        reference=lambda row: model(input_ids=torch.as_tensor(row[None])).logits[0].numpy(),
        runtime=lambda row: cached_logits(session, row.tolist(), prompt=max(1, len(row) // 2)),
    )


def cached_logits(session: Any, row: Sequence[int], prompt: int) -> np.ndarray:
    """(seq, vocab) logits of one text from an exported decoder: its first `prompt` tokens in
    one call with empty pasts, then one token a call with the presents fed back."""
    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    # empty pasts: (1, kv_heads, 0, head_dim), the fixed sizes read from the graph
    past = [
        np.zeros((1, inputs[n].shape[1], 0, inputs[n].shape[3]), np.float32) for n in past_names
    ]
    out, start = [], 0
    for end in [prompt, *range(prompt + 1, len(row) + 1)]:
        feed = {
            "input_ids": np.asarray([row[start:end]], np.int64),
            "attention_mask": np.ones((1, end), np.int64),
            "position_ids": np.arange(start, end, dtype=np.int64)[None],
            **dict(zip(past_names, past, strict=True)),
        }
        logits, *past = session.run(None, feed)
        out.append(logits[0])
        start = end
    return np.concatenate(out)


def _failures(figures: dict[str, float], decoder: bool) -> list[str]:
    """A line per figure outside its tolerance."""
    failures = []
    if decoder:
        if figures["agreement"] < AGREEMENT_MIN:
            failures.append(f"top-1 agreement {figures['agreement']:.2%} < "
                            f"{AGREEMENT_MIN:.0%} in ONNX Runtime")  # fmt: skip
        if abs(figures["ppl_change"]) > PPL_TOL:
            failures.append(f"perplexity in ONNX Runtime differs by {figures['ppl_change']:+.2%} "
                            f"(beyond {PPL_TOL:.0%}) from PyTorch")  # fmt: skip
    elif figures["max_logit_diff"] > LOGIT_TOL:
        failures.append(f"the classifier's logits in ONNX Runtime differ from PyTorch's by "
                        f"{figures['max_logit_diff']:.2e} (tolerance {LOGIT_TOL:.0e})")  # fmt: skip
    return failures
