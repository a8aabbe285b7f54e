"""CLI commands of the finetune stage (registered on the shared typer app)."""

from __future__ import annotations

from steermoe.cli.app import app  # noqa: F401
