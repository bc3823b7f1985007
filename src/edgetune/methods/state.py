"""A method's trainable state by name: what a checkpoint stores and a federated client ships.

Row keys: a tensor that holds only some output channels of a parameter is named
`<parameter name>[a:b]` (rows a..b-1 of an nn.Linear weight, shape (b - a, in)) or, for GPT-2's
Conv1D whose weight is stored (in, out), `<parameter name>[:,a:b]`. The suffix is a Python slice
of the original parameter, so `merge_trainable_state` (a checkpoint reader, a federated server)
can write it back with `full[name][index] = value`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from edgetune.errors import EdgetuneError

_KEY = re.compile(r"^(?P<name>.+)\[(?P<cols>:,)?(?P<a>\d+):(?P<b>\d+)\]$")


def row_key(name: str, rows: int, conv1d: bool = False) -> str:
    """The key of the first `rows` output channels of parameter `name`."""
    return f"{name}[:,0:{rows}]" if conv1d else f"{name}[0:{rows}]"


def parse_key(key: str) -> tuple[str, tuple[slice, ...] | None]:
    """(parameter name, index into it) for a row key; (key, None) for a whole tensor."""
    m = _KEY.match(key)
    if not m:
        return key, None
    rows = slice(int(m["a"]), int(m["b"]))
    return m["name"], ((slice(None), rows) if m["cols"] else (rows,))


def merge_trainable_state(
    full: Mapping[str, torch.Tensor], partial: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A copy of the full state dict `full` with the tensors of `partial` written in, row keys
    into their rows: how a server or checkpoint reader rebuilds whole parameters. Entries of
    `full` that share memory (tied weights) share it in the copy too."""
    # tied tensors stay tied in the copy (keyed by storage and offset, a SymInt when traced)
    clones: dict[tuple[int, int | torch.SymInt], torch.Tensor] = {}
    merged = {}
    for k, v in full.items():
        ref = (v.untyped_storage().data_ptr(), v.storage_offset())
        merged[k] = clones.setdefault(ref, v.clone())
    for key, value in partial.items():
        name, index = parse_key(key)
        if name not in merged:
            raise EdgetuneError(f"trainable tensor {key!r} names no parameter of the model")
        target = merged[name] if index is None else merged[name][index]
        if target.shape != value.shape:
            raise EdgetuneError(
                f"{key!r} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(value)
    return merged


def named_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, detached, by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_named(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy tensors into the model's parameters by name, checking names and shapes; tied
    parameters answer to every name."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in state.items():
        if name not in params:
            raise EdgetuneError(f"checkpoint tensor {name!r} does not exist in this model")
        copy_checked(params[name], value, name)


def copy_checked(target: torch.Tensor, value: torch.Tensor, key: str) -> None:
    """`target.copy_(value)` without autograd, refusing a value of another shape (a trainable
    state of another model or scheme) with a message naming the tensor."""
    if target.shape != value.shape:
        raise EdgetuneError(
            f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, "
            f"the model expects {tuple(target.shape)}"
        )
    with torch.no_grad():
        target.copy_(value)
