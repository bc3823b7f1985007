"""Export a trained model to a device runtime's file format, and check it in that runtime.

One table, `FORMATS`, maps a format name (`edgetune export --format`) to its writer and its
checker; a format is one module of this package (`gguf`: llama.cpp; `onnx`: ONNX Runtime;
`delta`: a sparse run's trained rows over its base). What every format shares:

- `RunModel` (`edgetune.export.source`): the model of a run folder, model folder or registry
  name, as one fp32 transformers model (a LoRA adapter merged), with where its base came from;
- `Exported`: the files written and, after a check, the figures measured in the runtime and
  the checks that failed (one line each).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.errors import EdgetuneError
from edgetune.export import delta, gguf, onnx
from edgetune.export.source import RunModel


@dataclass
class Exported:
    """What an export wrote, and what its check measured."""

    files: list[Path]
    figures: dict[str, float] = field(default_factory=dict)  # name -> value, in print order
    failures: list[str] = field(default_factory=list)  # one line per failed check


@dataclass(frozen=True)
class Format:
    quants: tuple[str, ...]  # the `--quant` choices, the default first
    write: Callable[[RunModel, Path, str], list[Path]]  # (model, out folder, quant) -> files
    # (model, files, quant, held-out token sequences) -> (figures, failures)
    check: Callable[[RunModel, list[Path], str, list], tuple[dict[str, float], list[str]]]
    held_out: bool = True  # whether the check reads held-out text (else it gets an empty list)


FORMATS: dict[str, Format] = {
    "gguf": Format(gguf.QUANTS, gguf.write, gguf.check),
    "onnx": Format(onnx.QUANTS, onnx.write, onnx.check),
    "delta": Format(delta.QUANTS, delta.write, delta.check, held_out=False),
}


def export(model: RunModel, fmt: str, out: Path, quant: str | None = None,
           held_out: list | None = None) -> Exported:  # fmt: skip
    """Write `model` in `fmt` under `out`; with `held_out` (token sequences) also check it."""
    if fmt not in FORMATS:
        raise EdgetuneError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    quant = quant or spec.quants[0]
    if quant not in spec.quants:
        raise EdgetuneError(
            f"{fmt} export has no quantization {quant!r}; choose from {', '.join(spec.quants)}"
        )
    result = Exported(spec.write(model, out, quant))
    if held_out is not None:
        result.figures, result.failures = spec.check(model, result.files, quant, held_out)
    return result
