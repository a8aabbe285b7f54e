"""The ``steermoe`` command line. Each stage's commands live in a module of their own."""

from steermoe.cli import analysis as _analysis  # noqa: F401  (each import registers commands)
from steermoe.cli import demo as _demo  # noqa: F401
from steermoe.cli import evaluation as _evaluation  # noqa: F401
from steermoe.cli import finetune as _finetune  # noqa: F401
from steermoe.cli import pipeline as _pipeline  # noqa: F401
from steermoe.cli import prompts as _prompts  # noqa: F401
from steermoe.cli import routing as _routing  # noqa: F401
from steermoe.cli import stack as _stack  # noqa: F401
from steermoe.cli.app import app, main, run_app

__all__ = ["app", "main", "run_app"]
