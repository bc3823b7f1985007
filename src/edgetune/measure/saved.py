"""Bytes autograd keeps for backward, measured with `torch.autograd.graph.saved_tensors_hooks`.

Every tensor a backward node saves passes through the pack hook. We count each storage once
(q, k and v projections save the same input; a view saves its base) and leave out parameters
and buffers (weights are counted by the cost model's `weights`, not its activations). The count
is of storages alive at the end of the forward, which is what a training step must hold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def saved_bytes(loss_fn: Callable[[], torch.Tensor], model: nn.Module | None = None) -> int:
    """Bytes of the distinct, non-parameter storages autograd saves while running
    `loss_fn()`. The graph is freed afterwards (no backward is run)."""
    skip = set()
    if model is not None:
        skip = {t.untyped_storage().data_ptr() for t in model.parameters()}
        skip |= {t.untyped_storage().data_ptr() for t in model.buffers()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in skip and not isinstance(t, nn.Parameter) and st.nbytes() > 0:
            seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss
    return sum(seen.values())
