"""Update schemes (which parts of a model train) and the planner that picks one for a budget.

`UpdateScheme` is read by the sparse method, the cost model, the planner and the federated
payload alike; `edgetune.plan.search.plan_scheme` plans one (imported lazily: it needs torch).
"""

from edgetune.plan.scheme import UNITS, UnitUpdate, UpdateScheme

__all__ = ["UNITS", "UnitUpdate", "UpdateScheme"]
