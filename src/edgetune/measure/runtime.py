"""The runtime's own resident memory: what a training process holds before its model, data and
step tensors. The interpreter, torch, transformers and edgetune's modules, and what a first
forward, backward and optimizer step leave resident (autograd's engine, the kernels' caches,
thread pools): about 360 MiB on a CPU with PyTorch 2.13 (`datasets`, pandas and pyarrow are
not among them: only a data source that needs them imports them).

Measured once per machine and software set, in a fresh process (`measure_runtime`), and
cached in `<cache_dir>/runtime.json` under a key that names the Python, torch, transformers and
edgetune versions and the processor architecture, so an upgrade measures again. The forecast
adds it to the step's peak (`edgetune.forecast.Overhead`), which makes the printed peak the
process's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgetune.errors import EdgetuneError
from edgetune.io import atomic_write_text
from edgetune.paths import cache_dir

FILE = "runtime.json"
# what a fresh process measures: a training process's imports, then one step of a tiny
# causal LM (a few thousand weights) with AdamW, then the heap trimmed as a run's load trims it
_PROBE = """
import json, torch
import edgetune.train  # noqa: F401  (everything a run imports)
from transformers import LlamaConfig, LlamaForCausalLM
from edgetune.measure.memory import rss_mb, trim_heap
torch.set_num_threads({threads})
config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)
model = LlamaForCausalLM(config)
opt = torch.optim.AdamW(model.parameters())
ids = torch.randint(0, 64, (2, 16))
model(input_ids=ids, labels=ids).loss.backward()
opt.step()
del model, opt, ids
trim_heap()
print(json.dumps({{"rss_mb": rss_mb()}}))
"""


@dataclass(frozen=True)
class Runtime:
    """The runtime's resident bytes and where the figure comes from."""

    bytes: float
    source: str


def software_key() -> str:
    """What the runtime's footprint depends on: Python, the libraries, the architecture."""

    def v(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "none"

    parts = [f"python {platform.python_version()}", f"torch {v('torch')}",
             f"transformers {v('transformers')}", f"edgetune {v('edgetune')}",
             platform.machine()]  # fmt: skip
    return ", ".join(parts)


def cache_path() -> Path:
    return cache_dir() / FILE


def runtime(measure: bool = True, fresh: bool = False) -> Runtime | None:
    """This machine's runtime footprint for the installed software: the cached figure, else
    (or, `fresh`, in any case) measured now in a fresh process (a few seconds) and cached;
    None where it is not cached and `measure` is false."""
    key, path = software_key(), cache_path()
    known = _read(path)
    if (key not in known or fresh) and measure:
        known[key] = measure_runtime()
        atomic_write_text(path, json.dumps(known, indent=1))
    if key not in known:
        return None
    entry = known[key]
    return Runtime(float(entry["rss_mb"]) * 2**20,
                   f"measured {entry['when']} ({path})")  # fmt: skip


def measure_runtime(threads: int | None = None) -> dict:
    """Resident memory of a fresh process that imported the training code and ran one tiny
    step: {"rss_mb", "when", "threads"}."""
    threads = threads or os.cpu_count() or 1
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE.format(threads=threads)],
                              capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
        rss = json.loads(done.stdout.strip().splitlines()[-1])["rss_mb"]
    except (subprocess.SubprocessError, OSError, ValueError, IndexError, KeyError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        last = detail.strip().splitlines()[-1] if detail.strip() else type(e).__name__
        raise EdgetuneError(
            f"could not measure the runtime's memory in a fresh process: {last}"
        ) from None
    return {"rss_mb": rss, "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "threads": threads}  # fmt: skip


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a corrupt cache is measured again
    return data if isinstance(data, dict) else {}
