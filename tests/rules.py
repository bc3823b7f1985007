"""Each method's cost-model rule by name (its registry entry's `rule`), for the cost tests."""

from edgetune.methods.registry import METHODS

RULES = {name: spec.rule for name, spec in METHODS.items()}
