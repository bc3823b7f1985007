"""The run's curves: one panel without validation, two with it."""

from __future__ import annotations

import struct

from edgetune.report.figures import plot_curves


def _width(path) -> int:
    """Pixels across a PNG (its IHDR chunk)."""
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_curves_have_a_validation_panel_only_where_the_run_validated(tmp_path):
    # Prepare
    steps = [{"step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 41)]
    validated = [*steps, {"step": 20, "validation": {"perplexity": 9.0}},
                 {"step": 40, "validation": {"perplexity": 7.5}}]  # fmt: skip
    # Execute
    plot_curves(steps, tmp_path / "loss.png", "a run")
    plot_curves(validated, tmp_path / "both.png", "a run")
    # Assert: 6 and 11 inches at 110 dpi
    assert (_width(tmp_path / "loss.png"), _width(tmp_path / "both.png")) == (660, 1210)
