"""Writers of a fine-tuned model for the runtimes devices use, each checked in that runtime
after it is written: ONNX for ONNX Runtime (`edgetune.export.onnx`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Exported:
    """What an export wrote, and the figures of its check in the runtime (empty: unchecked)."""

    files: list[Path]
    figures: dict[str, float] = field(default_factory=dict)
