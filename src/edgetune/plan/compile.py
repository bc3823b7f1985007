"""Ahead-of-time training graph: capture a method's forward and backward once, before the loop.

PockEngine derives the forward, backward and optimizer graphs at compile time and removes every
gradient the scheme does not need. In PyTorch 2 the same happens when the model's forward is
wrapped by `torch.compile`: TorchDynamo captures the forward graph, AOTAutograd traces the joint
forward+backward graph *for the inputs that require grad only* (the scheme's parameters; frozen
weights are constants to it), partitions it into a forward and a backward graph and
dead-code-eliminates the rest, and Inductor compiles both to C++ kernels on CPU. The pruned
backward thus exists before the first optimizer step.

    report = compile_step(method, sample_batch)      # captures, compiles, warms up
    ... method.step(batches) as usual ...
    release(method)                                  # back to eager (before export_model)

`compile_step` runs one forward and backward on a sample batch to trigger both compilations and
times them; the gradients of that warm-up are discarded and the RNG state restored, so the
training run is the same as without it (up to the kernels' float rounding). If capture or
compilation fails anywhere, it warns, restores the eager forward and reports the error: the
run goes on eagerly. The optimizer stays eager (torch's fused AdamW kernels already run as one
op per parameter group; `in_place` sparse updates run in gradient hooks, which compiled
backward graphs call like eager ones).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from edgetune.methods.base import Batch, Method, forward_loss


@dataclass
class CompileReport:
    """What `compile_step` did: whether the compiled forward is in place, the backend, the
    seconds the capture, compilation and warm-up step took, and the error of a fallback."""

    compiled: bool
    backend: str
    compile_s: float
    error: str | None = None


def compile_step(
    method: Method,
    sample: Batch,
    backend: str | Callable = "inductor",
    dynamic: bool | None = False,
) -> CompileReport:
    """Compile `method.model`'s forward (and so its pruned backward) with `backend`; on any
    failure warn and keep the eager forward. `dynamic=False` specializes on the sample's
    shapes (batches of other shapes recompile once each); None lets torch decide."""
    model, name = method.model, getattr(backend, "__name__", str(backend))
    release(method)
    model.forward = torch.compile(model.forward, backend=backend, dynamic=dynamic)
    rng = torch.get_rng_state()
    start = time.perf_counter()
    try:
        forward_loss(model, sample).backward()
    except Exception as e:  # dynamo/inductor raise many types; any of them means "run eager"
        release(method)
        root: BaseException = e
        # dynamo wraps the backend's own error (BackendCompilerFailed.inner_exception)
        while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None:
            root = inner
        lines = str(root).strip().splitlines()
        message = f"{type(root).__name__}: {lines[0] if lines else ''}"
        warnings.warn(
            f"could not compile the training step ({message}); training eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        return CompileReport(False, name, time.perf_counter() - start, message)
    finally:
        torch.set_rng_state(rng)
        for p in model.parameters():
            p.grad = None
    return CompileReport(True, name, time.perf_counter() - start)


def release(method: Method) -> None:
    """Back to the eager forward (the class's own `forward`)."""
    method.model.__dict__.pop("forward", None)


def is_compiled(method: Method) -> bool:
    return "forward" in method.model.__dict__
