"""Reports of runs: metrics.json, a Markdown summary, figures."""
