"""Update schemes: which parts of a model train, read by the sparse method, cost model and planner."""

from edgetune.plan.scheme import UNITS, UnitUpdate, UpdateScheme

__all__ = ["UNITS", "UnitUpdate", "UpdateScheme"]
