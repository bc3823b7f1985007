"""Next-token figures of a runtime against a reference over the same token sequences:
top-1 agreement, both perplexities and the largest logit difference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Logits = Callable[[np.ndarray], np.ndarray]  # ids (T,) -> logits (T, vocab)
# what an export check asks of a runtime against PyTorch on the same weights
AGREEMENT_MIN = 0.99  # next-token top-1 agreement (a quantized GGUF file: `gguf.agreement_floor`)
PPL_TOL = 0.01  # perplexity, relative difference


def compare(
    sequences: Sequence[np.ndarray], reference: Logits, runtime: Logits
) -> dict[str, float]:
    """Over every position but each sequence's last (whose next token is unknown): the share
    where both pick the same top-1 token, the perplexity of the actual next tokens under each,
    and the largest absolute logit difference."""
    positions = agree = 0
    nll = {"reference": 0.0, "runtime": 0.0}
    largest = 0.0
    for ids in sequences:
        target = torch.as_tensor(ids[1:], dtype=torch.long)
        logits = {"reference": reference(ids), "runtime": runtime(ids)}
        ref, run = (torch.as_tensor(logits[k][:-1], dtype=torch.float32) for k in logits)
        agree += int((ref.argmax(-1) == run.argmax(-1)).sum())
        for k, x in (("reference", ref), ("runtime", run)):
            nll[k] += float(torch.nn.functional.cross_entropy(x, target, reduction="sum"))
        largest = max(largest, float((ref - run).abs().max()))
        positions += len(target)
    ppl = {k: float(np.exp(v / positions)) for k, v in nll.items()}
    return {
        "positions": positions,
        "agreement": agree / positions,
        "ppl_reference": ppl["reference"],
        "ppl_runtime": ppl["runtime"],
        "ppl_change": ppl["runtime"] / ppl["reference"] - 1,
        "max_logit_diff": largest,
    }
