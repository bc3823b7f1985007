"""Benchmark drivers: what `edgetune bench` and the scripts in `benchmarks/` run.

- `worker`: the one way a benchmark runs a measurement in a fresh interpreter (so a peak
  resident set belongs to one configuration only);
- `methods`: every learning method side by side (time, memory, FLOPs, the test metric), the
  learning-rate sweep and the hardware rows;
- `tables`: their Markdown tables and files (figures: `edgetune.report.figures`).

The primitives they measure with (RSS, live heap, saved bytes, FLOPs, GEMM peak, a timed
forward) are `edgetune.measure`.
"""
