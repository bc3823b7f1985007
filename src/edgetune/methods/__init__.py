"""Learning rules behind one protocol, registered by name (the name used everywhere: config
value, CLI choice, docs page, test id)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.backprop import Backprop
from edgetune.methods.base import Batch, Method, MethodSettings, StepResult
from edgetune.methods.lora import Lora
from edgetune.methods.mezo import Mezo
from edgetune.methods.pepita import Pepita, mempepita
from edgetune.methods.sparse import Sparse

# name -> factory(model, settings) -> Method
METHODS: dict[str, Callable[[nn.Module, MethodSettings], Method]] = {
    "backprop": Backprop,
    "sparse": Sparse,
    "pepita": Pepita,
    "mempepita": mempepita,
    "mezo": Mezo,
    "lora": Lora,
}


def build_method(name: str, model: nn.Module, settings: MethodSettings) -> Method:
    if name not in METHODS:
        raise EdgetuneError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name](model, settings)


__all__ = ["METHODS", "Batch", "Method", "MethodSettings", "StepResult", "build_method"]
