"""Learning rules behind one protocol (`edgetune.methods.base.Method`), declared in the
registry (`edgetune.methods.registry`) under the name used everywhere: config value, CLI
choice, docs page, test id. Importing this package does not import torch; building a method
does."""

from edgetune.methods.registry import METHODS, MethodSpec, build_method, get_method

__all__ = ["METHODS", "MethodSpec", "build_method", "get_method"]
