"""Where a run computes and in which dtype: `train.accelerator` and `train.dtype` resolved on
this machine, and the autocast context a step and an evaluation run in.

- accelerator `auto`: CUDA if torch sees a GPU, else Apple's MPS, else the CPU; a named one that
  is not there is refused with what torch does see.
- dtype `auto`: bf16 where the processor computes it natively (CUDA with bf16, a CPU with
  AVX512-BF16 or AMX, an Arm CPU with its BF16 extension), else fp32. bf16 and fp16 run through
  autocast: weights, gradients and optimizer state stay fp32 (the master copies), matrix
  products compute in the low dtype. fp16 needs loss scaling (`loss_scaler`); bf16 does not.
  Frozen weights held in a low-precision format (`model.weights`) are dequantized straight
  into the compute dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from edgetune.errors import EdgetuneError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_device(name: str) -> torch.device:
    """The torch device of `train.accelerator`."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise EdgetuneError(
            f"train.accelerator=cuda, but this torch ({torch.__version__}) sees no CUDA GPU; "
            f"use auto or cpu{' or mps' if mps else ''}"
        )
    if name == "mps" and not mps:
        other = " or cuda" if cuda else ""
        raise EdgetuneError(f"train.accelerator=mps, but this machine has no Apple GPU that "
                            f"torch can use; use auto or cpu{other}")  # fmt: skip
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> str:
    """The compute dtype of `train.dtype` on `device` (`auto` chosen as the module says)."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_bf16() else "fp32"
        return "fp16"  # MPS computes fp16 natively
    return name


@dataclass(frozen=True)
class Placement:
    """A run's device and compute dtype, and why (`reason`, printed when `auto` chose)."""

    device: torch.device
    dtype: str
    reason: str = ""

    def compute(self) -> contextlib.AbstractContextManager:
        """The context a forward runs in: autocast to the compute dtype, or nothing for fp32."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.dtype])

    def batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch` on this device (no copy on the CPU)."""
        return {k: v.to(self.device) for k, v in batch.items()}

    def describe(self) -> str:
        return f"{self.device.type}, {self.dtype}" + (f" ({self.reason})" if self.reason else "")


def place(accelerator: str, dtype: str) -> Placement:
    """`train.accelerator` and `train.dtype` resolved on this machine."""
    device = resolve_device(accelerator)
    chosen = resolve_dtype(dtype, device)
    reason = ""
    if dtype == "auto":
        native = chosen != "fp32"
        reason = f"auto: {'native ' + chosen if native else 'no native bf16 on this processor'}"
    elif chosen == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        reason = "no native bf16 on this processor: emulated, slower than fp32"
    return Placement(device, chosen, reason)


def loss_scaler(model: torch.nn.Module, enabled: bool) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 compute (small gradients would flush to zero in fp16's
    range), on the model's device; None when not `enabled`."""
    if not enabled:
        return None
    device = next(model.parameters()).device
    return torch.amp.GradScaler(device.type)
