"""Planning: which units of a model to train under a memory budget (and a step-time limit).

- `table`: the contribution table, its candidates and the completion of unmeasured entries
  (pure Python);
- `search`: the budgeted knapsack over the table, its shortlist and the judged choice (pure);
- `analysis`: the torch side, short fine-tunes that measure each candidate's gain;
- `planner`: a run's plan, `make_plan(session, budget=...)`, forecast by `edgetune.forecast`;
- `compile`: the ahead-of-time training graph of a planned step.
"""
