"""Build a model whose frozen base is held in a low-precision format, one module at a time.

The model is first made on the meta device (no memory); then, module by module, each weight
comes from its source and, for linear and embedding matrices, goes straight into the format
(`edgetune.models.quantized`). At no moment does the whole model exist in fp32: the high-water
mark is the held model plus one matrix.

Sources:
- `GGUFSource`: a GGUF file read with the `gguf` package (memory-mapped). With `gguf` as the
  format, the file's own Q8_0/Q4_0/Q4_1/F16/BF16 blocks are kept as they are (rows reordered
  for Llama's q and k, as llama.cpp's converter permuted them); another format, or a block type
  edgetune does not compute with (the K-quants), is dequantized one tensor at a time and
  quantized again.
- `SafetensorsSource`: a transformers folder, read tensor by tensor (`safe_open`).
- no source (`random_init`): each matrix drawn as transformers draws it (normal, the config's
  `initializer_range`) a slice at a time and held; the rest by the model's own initializer.

Weights the source lacks (a new classifier head) are drawn from the run's seed and stay fp32:
they train.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.models.anatomy import describe, set_module
from edgetune.models.quantized import (
    BLOCK_BYTES,
    Packed,
    QuantEmbedding,
    QuantLinear,
    holds,
    join,
    quantize,
    requantize,
)
from edgetune.precision import dense_chunk

PERMUTED = ("llama",)  # GGUF architectures whose q and k rows llama.cpp's converter permuted
KEPT = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1", "F16": "fp16", "BF16": "bf16"}


class Source(Protocol):
    def has(self, name: str) -> bool: ...
    def dense(self, name: str) -> torch.Tensor: ...
    def packed(self, name: str, fmt: str) -> Packed: ...


class SafetensorsSource:
    """A transformers folder's safetensors files; names are tried as they are and without the
    task model's `prefix` (a base model's checkpoint under a task head)."""

    def __init__(self, folder: Path, prefix: str) -> None:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise EdgetuneError(f"{folder} has no .safetensors weights to read tensor by tensor")
        self.prefix = prefix + "."
        self.where: dict[str, Any] = {}
        for f in files:
            handle = safe_open(str(f), framework="pt")
            for key in handle.keys():  # noqa: SIM118  # a safe_open handle is not a dict
                self.where[key] = handle

    def _key(self, name: str) -> str | None:
        if name in self.where:
            return name
        if name.startswith(self.prefix) and name[len(self.prefix) :] in self.where:
            return name[len(self.prefix) :]
        return None

    def has(self, name: str) -> bool:
        return self._key(name) is not None

    def dense(self, name: str) -> torch.Tensor:
        key = self._key(name)
        assert key is not None
        return self.where[key].get_tensor(key).float()

    def packed(self, name: str, fmt: str) -> Packed:
        return quantize(self.dense(name), fmt)


class GGUFSource:
    """A GGUF file's tensors under transformers' names (the `gguf` package's name map)."""

    def __init__(self, path: Path, config: Any) -> None:
        import gguf

        self.reader = gguf.GGUFReader(str(path))
        field = self.reader.fields.get("general.architecture")
        self.arch = str(field.contents()) if field is not None else ""
        archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
        if self.arch not in archs:
            raise EdgetuneError(f"{path.name}: unknown GGUF architecture {self.arch!r}")
        layers = int(config.num_hidden_layers)
        self.names = gguf.get_tensor_name_map(archs[self.arch], layers)
        self.tensors = {t.name: t for t in self.reader.tensors}
        heads = config.num_attention_heads
        self.heads = (heads, getattr(config, "num_key_value_heads", None) or heads)

    def _tensor(self, name: str):
        stem, dot, suffix = name.rpartition(".")
        mapped = self.names.get_name(stem) if dot else None
        return self.tensors.get(f"{mapped}.{suffix}") if mapped else None

    def has(self, name: str) -> bool:
        return self._tensor(name) is not None

    def _order(self, name: str, rows: int) -> torch.Tensor | None:
        """Row order undoing llama.cpp's q/k permutation (None: rows as stored)."""
        if self.arch not in PERMUTED:
            return None
        if name.endswith("q_proj.weight"):
            heads = self.heads[0]
        elif name.endswith("k_proj.weight"):
            heads = self.heads[1]
        else:
            return None
        idx = torch.arange(rows).reshape(heads, rows // heads // 2, 2)
        return idx.transpose(1, 2).reshape(-1)

    def dense(self, name: str) -> torch.Tensor:
        import gguf

        t = self._tensor(name)
        kind = t.tensor_type.name
        if kind in ("F32", "F16", "BF16"):
            data = torch.from_numpy(np.array(t.data))
            w = (data.view(torch.bfloat16) if kind == "BF16" else data).float()
        elif kind in KEPT:
            return self._packed(name, t).dense()
        else:
            try:
                w = torch.from_numpy(gguf.quants.dequantize(np.array(t.data), t.tensor_type))
            except NotImplementedError:
                raise EdgetuneError(
                    f"{name}: GGUF type {kind} cannot be read (the gguf package has no "
                    f"dequantizer for it); edgetune reads {', '.join(KEPT)}, F32 and the "
                    "K-quants: convert the file with llama-quantize"
                ) from None
        w = w.reshape(*reversed([int(n) for n in t.shape]))
        order = self._order(name, w.shape[0]) if w.dim() == 2 else None
        return w if order is None else w[order]

    def _packed(self, name: str, t) -> Packed:
        """The tensor's blocks as they are in the file (a view of the memory-mapped file, or
        a reordered copy for Llama's q and k), rows in transformers' order."""
        cols, rows = (int(n) for n in t.shape)
        with warnings.catch_warnings():  # the map is read-only, and nothing writes to it
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            raw = torch.from_numpy(t.data).reshape(rows, -1)  # (rows, bytes per row)
        fmt = KEPT[t.tensor_type.name]
        if fmt in ("fp16", "bf16"):
            dtype = torch.float16 if fmt == "fp16" else torch.bfloat16
            p = Packed(fmt, rows, cols, raw.view(dtype))
        else:
            p = Packed(fmt, rows, cols, raw.reshape(rows, cols // 32, BLOCK_BYTES[fmt]))
        order = self._order(name, rows)
        return p if order is None else p.reordered(order)

    def packed(self, name: str, fmt: str) -> Packed:
        t = self._tensor(name)
        target = "q8_0" if fmt == "gguf" else fmt  # a block type edgetune does not compute with
        if t.tensor_type.name not in KEPT:
            return quantize(self.dense(name), target)
        blocks = self._packed(name, t)
        return blocks if fmt == "gguf" else requantize(blocks, target)


def _is_matrix(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, nn.Linear | nn.Embedding | Conv1D)


def _task_head(model: nn.Module) -> set[str]:
    """Modules of a classification head and the pooler that feeds it: they train (LoRA's
    `modules_to_save`, a scheme's head), so they are never held. An LM head is not among them:
    frozen (or tied to the embedding table), it is held."""
    try:
        anatomy = describe(model)
    except EdgetuneError:  # a family edgetune has no layout for: hold what the source has
        return set()
    if anatomy.task != "classify":
        return set()
    return {n for n, _ in model.named_modules()
            if any(n == h or n.startswith(h + ".") for h in anatomy.head)}  # fmt: skip


def materialize(model: nn.Module, fmt: str, source: Source | None, seed: int) -> None:
    """Give every meta parameter of `model` its value from `source` (or the model's initializer),
    holding the linear and embedding matrices the source provides in `fmt` (all of them with no
    source), except a classifier's head; a matrix whose rows are not whole blocks stays fp32."""
    from transformers.pytorch_utils import Conv1D

    done: dict[int, Any] = {}  # id of a meta parameter -> its Packed or its new Parameter
    init = getattr(model, "_init_weights", None)
    task_head = _task_head(model)
    torch.manual_seed(seed)
    for name, module in list(model.named_modules()):
        own = dict(module.named_parameters(recurse=False))
        if not own or not any(p.is_meta for p in own.values()):
            continue
        weight = own.get("weight")
        wname = f"{name}.weight" if name else "weight"
        from_source = source is not None and source.has(wname)
        tied = weight is not None and id(weight) in done
        holdable = from_source or tied or source is None
        if _is_matrix(module) and weight is not None and name not in task_head and holdable:
            cols = weight.shape[0] if isinstance(module, Conv1D) else weight.shape[1]
            if holds(fmt, cols):
                _hold(model, name, module, fmt, source, done)
                continue
        _fill(module, name, source, done, init)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise EdgetuneError(f"the model's weights lack {', '.join(left[:3])}")


def _fill(module: nn.Module, name: str, source, done: dict[int, Any], init) -> None:
    """The module's own parameters in fp32: from the source, a tied twin, or the initializer."""
    before = dict(module.named_parameters(recurse=False))
    module.to_empty(device="cpu", recurse=False)
    missing = False
    for pname, param in module.named_parameters(recurse=False):
        old = before[pname]
        full = f"{name}.{pname}" if name else pname
        if id(old) in done and isinstance(done[id(old)], nn.Parameter):
            setattr(module, pname, done[id(old)])
        elif source is not None and source.has(full):
            with torch.no_grad():
                param.copy_(source.dense(full).reshape(param.shape))
        else:
            missing = True
        done[id(old)] = getattr(module, pname)
    if missing and init is not None:
        init(module)


def _random_packed(model: nn.Module, module: nn.Module, fmt: str) -> Packed:
    """A random matrix as transformers initializes a linear or embedding weight (normal, the
    config's `initializer_range`), held in `fmt`; drawn `CHUNK` elements at a time, so a large
    embedding table never exists whole in fp32."""
    from transformers.pytorch_utils import Conv1D

    weight: Any = module.weight
    rows, cols = weight.shape[::-1] if isinstance(module, Conv1D) else weight.shape
    std = float(getattr(model.config, "initializer_range", 0.02))
    step = max(1, dense_chunk(rows, cols) // cols)
    return join([quantize(torch.randn(min(step, rows - r), cols) * std, fmt)
                 for r in range(0, rows, step)])  # fmt: skip


def _hold(model, name, module, fmt, source, done) -> None:
    """Replace a linear, Conv1D or embedding module by its held twin."""
    from transformers.pytorch_utils import Conv1D

    weight = module.weight
    wname = f"{name}.weight" if name else "weight"
    packed = done.get(id(weight))
    if not isinstance(packed, Packed):
        if source is not None and source.has(wname) and isinstance(module, Conv1D):
            packed = quantize(source.dense(wname).t(), fmt)  # stored (in, out)
        elif source is not None and source.has(wname):
            packed = source.packed(wname, fmt)
        else:  # random init: drawn and held a slice of rows at a time
            packed = _random_packed(model, module, fmt)
        done[id(weight)] = packed
    bias = getattr(module, "bias", None)
    if bias is not None:
        bname = f"{name}.bias"
        if source is not None and source.has(bname):
            bias = source.dense(bname)
        else:
            bias = torch.zeros(bias.shape)
    if isinstance(module, nn.Embedding):
        set_module(model, name, QuantEmbedding(packed, module.padding_idx))
    else:
        set_module(model, name, QuantLinear(packed, bias))


def densify(model: nn.Module) -> nn.Module:
    """`model` with every held module replaced by its fp32 twin, in place, one at a time (tied
    matrices stay tied): a plain transformers model again, to save."""
    dense: dict[int, nn.Parameter] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            twin: nn.Module = module.dense_linear()
        elif isinstance(module, QuantEmbedding):
            twin = module.dense_embedding()
        else:
            continue
        key = id(module.packed)
        if key in dense:
            twin.weight = dense[key]
        dense[key] = cast(nn.Parameter, twin.weight)
        set_module(model, name, twin)
    return model
