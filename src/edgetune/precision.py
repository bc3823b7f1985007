"""Precision vocabulary: the formats a frozen base's weights are held in and the dtypes a step
computes in. Pure data, read alike by the config, the cost model and the runtime
(`edgetune.models.quantized`).

Weight formats (`model.weights`):

    fp32 bf16 fp16   dense tensors of that dtype
    q8_0             GGUF Q8_0: blocks of 32 int8 values and one fp16 scale (34 bytes / 32)
    q4_0             GGUF Q4_0: blocks of 32 4-bit values and one fp16 scale (18 bytes / 32)
    q4_1             GGUF Q4_1: blocks of 32 4-bit values, fp16 scale and minimum (20 / 32)
    int8             one int8 per weight and one fp32 scale per output row (absmax)
    gguf             a GGUF file's own blocks, kept as they are (the model must be a .gguf)

Only the frozen base's linear and embedding matrices take the format; norms, biases and
whatever trains stay fp32. The q-formats share GGUF's block layout byte for byte, so a base read
from a GGUF file is held without conversion.
"""

from __future__ import annotations

from edgetune.errors import EdgetuneError

# bytes per weight of each held format (int8's per-row scale is left out: 4 bytes per row)
WEIGHT_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "int8": 1.0,
}
WEIGHT_FORMATS = (*WEIGHT_BYTES, "gguf")
QUANTIZED = ("q8_0", "q4_0", "q4_1", "int8")  # formats dequantized layer by layer
COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "auto")
ACCELERATORS = ("auto", "cpu", "cuda", "mps")
# elements of dense weight a quantized layer forms at once (8 MiB in fp32): its forward and
# backward dequantize a matrix in row chunks of at most this size
CHUNK = 1 << 21


def dense_chunk(rows: int, cols: int) -> int:
    """Elements of dense weight a quantized (rows, cols) matrix forms at once."""
    return min(rows, max(1, CHUNK // max(1, cols))) * cols


def check_weights(name: str) -> str:
    if name not in WEIGHT_FORMATS:
        raise EdgetuneError(
            f"unknown model.weights {name!r}; choose from {', '.join(WEIGHT_FORMATS)}"
        )
    return name


def check_choice(key: str, value: str, known: tuple[str, ...]) -> str:
    if value not in known:
        raise EdgetuneError(f"unknown {key} {value!r}; choose from {', '.join(known)}")
    return value
