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

The folder holds model.onnx, its weights (model.onnx.data), config.json and the tokenizer.
The check runs the written file in ONNX Runtime on texts and compares it with the PyTorch model
in fp32: a classifier's logits (max abs difference, labels equal); a decoder's next-token top-1
agreement and perplexity, the first half of each text read as one prompt and the rest one token
at a time through the cache, as generation reads it. An export outside the tolerances is an
error, and nothing is left in the output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.export import Exported
from edgetune.export.compare import compare
from edgetune.io import atomic_dir
from edgetune.models.anatomy import inner_model
from edgetune.models.lowbit import densify
from edgetune.models.quantized import is_held

FILE = "model.onnx"
LOGIT_TOL = 1e-4  # a classifier's logits, max abs difference from PyTorch
AGREEMENT_MIN = 0.99  # a decoder's next-token top-1 agreement with PyTorch
PPL_TOL = 0.01  # a decoder's perplexity, relative difference from PyTorch
BATCH = 32  # texts a classifier check runs at once
# the example shapes traced (distinct sizes above 1, so no axis is fixed or merged with another)
_B, _SEQ, _PAST = 2, 7, 3


def export(
    model: nn.Module,
    tokenizer: Any,
    out_dir: Path,
    *,
    check_texts: Sequence[str] | None = None,
    max_len: int = 512,
) -> Exported:
    """Write `model` (a sequence classifier or a causal LM; PEFT adapters merged, a held base
    made fp32 first, in place) to `out_dir` as ONNX with its config and tokenizer; check it in
    ONNX Runtime on `check_texts` (each cut to `max_len` tokens) when given."""
    model = _plain(model)
    decoder = _is_decoder(model)
    ort = _runtime()  # refuse before the slow export when the runtime is missing
    with atomic_dir(out_dir) as tmp:
        _write_decoder(model, tmp / FILE) if decoder else _write_classifier(model, tmp / FILE)
        config: Any = model.config  # a transformers config (nn.Module types it Tensor | Module)
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        figures: dict[str, float] = {}
        if check_texts:
            session = _session(ort, tmp / FILE)
            ids = [
                tokenizer(t, truncation=True, max_length=max_len)["input_ids"] for t in check_texts
            ]
            if decoder:
                figures = check_decoder(model, session, ids)
            else:
                figures = check_classifier(model, session, ids, tokenizer.pad_token_id or 0)
            _enforce(figures, decoder)
        names = sorted(p.name for p in tmp.iterdir())
    return Exported([out_dir / n for n in names], figures)


def _plain(model: nn.Module) -> nn.Module:
    """A plain fp32 transformers model in eval mode: a held base made dense, an adapter merged."""
    base = inner_model(model)
    if is_held(base):
        densify(base)
    if hasattr(model, "merge_and_unload"):  # a PEFT model
        model = model.merge_and_unload()  # type: ignore[operator]
    return model.float().eval()


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


def _enforce(figures: dict[str, float], decoder: bool) -> None:
    """An error naming the figure outside its tolerance."""
    if decoder:
        agree, ppl = figures["agreement"], abs(figures["ppl_change"])
        if agree < AGREEMENT_MIN or ppl > PPL_TOL:
            raise EdgetuneError(
                f"the ONNX decoder disagrees with PyTorch: top-1 agreement {agree:.2%} (at "
                f"least {AGREEMENT_MIN:.0%}), perplexity {ppl:.2%} apart (at most {PPL_TOL:.0%})"
            )
    elif figures["max_logit_diff"] > LOGIT_TOL:
        raise EdgetuneError(
            f"the ONNX classifier's logits differ from PyTorch's by "
            f"{figures['max_logit_diff']:.2e} (tolerance {LOGIT_TOL:.0e})"
        )
