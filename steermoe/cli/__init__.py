"""The ``steermoe`` command line. Each stage's commands live in a module of their own."""

from steermoe.cli import prompts as _prompts  # noqa: F401  (registers commands)
from steermoe.cli.app import app, main, run_app

__all__ = ["app", "main", "run_app"]
