"""The cost model: predict FLOPs, memory, fit and latency of a training step before training.

Pure Python, imports neither torch nor transformers (a test enforces it), so the planner, the
CLI and the federated server can ask it anything cheaply.

    shape = shape_from_config(config.to_dict())          # or NAMED_SHAPES["alexatm-20b"]
    cost = step_cost(shape, Rule("forward-only", "linears", lockstep=True), batch=1, seq=512)
    r = roofline(cost, load_device("rpi4"))              # r.fits, r.latency_s
    step_time(cost, load_device("this-machine"))         # its kernels, timed here

A method's rule comes from its registry entry; `edgetune.forecast` turns a run (model, data,
method and its options) into these calls.

See docs/cost-model.md for the formulas and conventions.
"""

from edgetune.cost.device import (
    EFFICIENCY,
    Device,
    Roofline,
    bytes_moved,
    device_names,
    load_device,
    not_measured_note,
    roofline,
    step_time,
)
from edgetune.cost.methods import Memory, Precision, Rule, StepCost, eval_peak, step_cost
from edgetune.cost.shapes import NAMED_SHAPES, ModelShape, n_params, shape_from_config

__all__ = [
    "EFFICIENCY",
    "NAMED_SHAPES",
    "Device",
    "Memory",
    "ModelShape",
    "Precision",
    "Roofline",
    "Rule",
    "StepCost",
    "bytes_moved",
    "device_names",
    "eval_peak",
    "load_device",
    "n_params",
    "not_measured_note",
    "roofline",
    "shape_from_config",
    "step_cost",
    "step_time",
]
