"""CLI commands, plain functions that the typer app in `edgetune.cli` registers."""
