"""The cost model: predict FLOPs, memory, fit and latency of a training step before training.

Pure Python, imports neither torch nor transformers (a test enforces it), so the planner, the
CLI and the federated server can ask it anything cheaply.

    shape = shape_from_config(config.to_dict())          # or NAMED_SHAPES["alexatm-20b"]
    cost = step_cost(shape, "mempepita", batch=1, seq=512)
    r = roofline(cost, load_device("rpi4"))              # r.fits, r.latency_s

See docs/cost-model.md for the formulas and conventions.
"""

from edgetune.cost.device import (
    EFFICIENCY,
    Device,
    Roofline,
    device_names,
    load_device,
    not_measured_note,
    roofline,
)
from edgetune.cost.methods import METHODS, Memory, Precision, StepCost, step_cost
from edgetune.cost.shapes import NAMED_SHAPES, ModelShape, n_params, shape_from_config
from edgetune.cost.table import Row, cost_rows

__all__ = [
    "EFFICIENCY",
    "METHODS",
    "NAMED_SHAPES",
    "Device",
    "Memory",
    "ModelShape",
    "Precision",
    "Roofline",
    "Row",
    "StepCost",
    "cost_rows",
    "device_names",
    "load_device",
    "n_params",
    "not_measured_note",
    "roofline",
    "shape_from_config",
    "step_cost",
]
