"""The package's version (pyproject.toml's, from the installed metadata), on the ground floor so
that anything may record it (checkpoints, `edgetune --version`)."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("edgetune")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"
