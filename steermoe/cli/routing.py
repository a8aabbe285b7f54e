"""CLI commands of the routing stage (registered on the shared typer app)."""

from __future__ import annotations

from steermoe.cli.app import app  # noqa: F401
