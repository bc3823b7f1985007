"""Device profiles (data files with a source for every number) and the roofline latency model.

Profiles live in `edgetune/cost/devices/<name>.toml`: memory available (bytes), peak FLOP/s per
dtype, memory bandwidth (bytes/s) and power (W) where public, each as `{value, source}`.
`this-machine` is measured, never looked up: its memory comes from the operating system and its
peak FLOP/s and bandwidth from `edgetune bench hardware`, cached in
`<cache_dir>/this-machine.json`. A number nobody measured or published stays unknown (None).

Time of a step (`step_time`): on `this-machine`, once `edgetune bench hardware` has timed its
kernels, the sum of the step's kernels' measured times (`edgetune.cost.latency`); elsewhere the
roofline: max(FLOPs / (peak x efficiency), bytes moved / (bandwidth x efficiency)). A step fits
when its predicted peak memory is at most the device's memory.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from typing import overload

from edgetune.cost.latency import Kernels
from edgetune.cost.methods import DTYPE_BYTES, OPTIMIZER_STATES, StepCost
from edgetune.errors import EdgetuneError
from edgetune.paths import cache_dir

# Fraction of peak FLOP/s and of peak bandwidth a training step reaches. 0.5 is the usual
# order for large GEMMs in PyTorch on CPUs and GPUs (PaLM reports 46 % MFU on TPU v4; small
# batches on edge devices reach less, so read latencies as optimistic).
EFFICIENCY = 0.5
THIS_MACHINE = "this-machine"
MEASURED_FILE = "this-machine.json"


@dataclass(frozen=True)
class Sourced:
    value: float
    source: str


@dataclass(frozen=True)
class Device:
    name: str
    title: str
    kind: str
    memory: Sourced | None
    peak_flops: dict[str, Sourced] = field(default_factory=dict)
    bandwidth: Sourced | None = None
    power: Sourced | None = None
    measured: bool = False
    kernels: dict = field(default_factory=dict)  # this machine's kernel tables, as measured

    def peak(self, dtype: str) -> float | None:
        p = self.peak_flops.get(dtype)
        return p.value if p else None

    def timed(self, dtype: str) -> Kernels | None:
        """The kernel tables for products in `dtype` (None: not measured)."""
        if not self.kernels:
            return None
        bw = self.bandwidth.value if self.bandwidth else None
        return Kernels.from_json(self.kernels, dtype, bw)


@overload
def _sourced(raw: dict, where: str) -> Sourced: ...
@overload
def _sourced(raw: dict | None, where: str) -> Sourced | None: ...
def _sourced(raw: dict | None, where: str) -> Sourced | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "value" not in raw or not raw.get("source"):
        raise EdgetuneError(f"{where}: every number needs a value and a source")
    return Sourced(float(raw["value"]), str(raw["source"]))


def _files() -> dict[str, Traversable]:
    root = resources.files("edgetune.cost") / "devices"
    return {f.name[: -len(".toml")]: f for f in root.iterdir() if f.name.endswith(".toml")}


def device_names() -> list[str]:
    return sorted(_files())


def load_device(name: str) -> Device:
    """Load a profile by name; an unknown name is an error listing the known ones."""
    files = _files()
    if name not in files:
        raise EdgetuneError(f"unknown device {name!r}; known devices: {', '.join(sorted(files))}")
    raw = tomllib.loads(files[name].read_text())
    where = f"device profile {name}"
    if raw.get("measured"):
        return _this_machine(name, raw)
    peaks = {
        k: _sourced(v, f"{where} peak_flops.{k}") for k, v in raw.get("peak_flops", {}).items()
    }
    return Device(
        name, raw.get("title", name), raw.get("kind", ""), _sourced(raw.get("memory"), where),
        peaks, _sourced(raw.get("bandwidth"), where), _sourced(raw.get("power"), where),
    )  # fmt: skip


def _system_memory() -> Sourced | None:
    try:
        n = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return Sourced(float(n), "measured: os.sysconf(SC_PHYS_PAGES x SC_PAGE_SIZE)")


def measured_path():
    return cache_dir() / MEASURED_FILE


def _this_machine(name: str, raw: dict) -> Device:
    peaks: dict[str, Sourced] = {}
    bandwidth = None
    kernels: dict = {}
    path = measured_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise EdgetuneError(
                f"{path} is corrupt; run `edgetune bench hardware` to measure again"
            ) from None
        src = f"measured {data.get('when', '')} by edgetune.measure.gemm ({path})"
        for dt, v in data.get("peak_flops", {}).items():
            peaks[dt] = Sourced(float(v), f"{src}: median GEMM")
        if data.get("bandwidth"):
            bandwidth = Sourced(float(data["bandwidth"]), f"{src}: median copy")
        kernels = data.get("kernels") or {}
    return Device(name, raw.get("title", name), "measured", _system_memory(), peaks, bandwidth,
                  None, measured=True, kernels=kernels)  # fmt: skip


def not_measured_note(dev: Device) -> str | None:
    """A message when `this-machine` has no measured peak yet; None otherwise."""
    if dev.measured and not dev.peak_flops:
        return (
            "this-machine's peak FLOP/s is not measured yet (no "
            f"{measured_path()}); run `edgetune bench hardware`. Latency is unknown until then."
        )
    return None


# -- roofline -------------------------------------------------------------------------------
def bytes_moved(c: StepCost, n_passes: int) -> float:
    """Main-memory traffic of a step (a lower-bound estimate): weights read once per pass,
    activations written and read back, gradients written and read by the optimizer, and the
    optimizer state read and written."""
    m = c.memory
    return n_passes * m.weights + 2 * m.activations + 2 * m.gradients + 2 * m.optimizer


@dataclass(frozen=True)
class Roofline:
    compute_s: float | None
    memory_s: float | None
    fits: bool | None

    @property
    def latency_s(self) -> float | None:
        if self.compute_s is None:
            return None
        return max(self.compute_s, self.memory_s or 0.0)

    @property
    def bound(self) -> str:
        if self.compute_s is None:
            return "unknown"
        return "memory" if (self.memory_s or 0.0) > self.compute_s else "compute"


def roofline(
    c: StepCost, dev: Device, dtype: str = "fp32", efficiency: float = EFFICIENCY
) -> Roofline:
    """Latency and fit of step `c` on `dev` computing in `dtype`. Latency is None when the
    device has no published or measured peak for that dtype (never guessed)."""
    if dtype not in DTYPE_BYTES:
        raise EdgetuneError(f"unknown dtype {dtype!r}; choose {', '.join(DTYPE_BYTES)}")
    if not 0 < efficiency <= 1:
        raise EdgetuneError(f"efficiency must be in (0, 1], got {efficiency}")
    peak = dev.peak(dtype)
    compute = c.flops / (peak * efficiency) if peak else None
    bw = dev.bandwidth.value if dev.bandwidth else None
    memory = bytes_moved(c, c.passes) / (bw * efficiency) if bw else None
    fits = c.memory.peak <= dev.memory.value if dev.memory else None
    return Roofline(compute, memory, fits)


def step_time(c: StepCost, dev: Device, dtype: str = "fp32") -> float | None:
    """Seconds of step `c` on `dev` computing in `dtype`: the sum of its kernels' times where
    `dev` has timed them (`this-machine` after `edgetune bench hardware`), else the roofline's
    latency (None where the device has no peak for `dtype`)."""
    tables = dev.timed(dtype)
    if tables is not None and c.work.gemms:
        return tables.seconds(c.work)
    return roofline(c, dev, dtype).latency_s


__all__ = [
    "EFFICIENCY",
    "OPTIMIZER_STATES",
    "Device",
    "Roofline",
    "Sourced",
    "device_names",
    "load_device",
    "not_measured_note",
    "roofline",
    "step_time",
]
