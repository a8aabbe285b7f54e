"""The ``steermoe`` command line. Each stage's commands live in a module of their own."""

import os

# Before anything imports torch (OpenMP reads it once, when it loads): idle OpenMP threads sleep instead of
# spinning. On a CPU shared with other work, spinning threads wait for each other at every parallel op: measured
# on a loaded two-core machine, routing the demo ran 7x faster with the same outputs bit for bit (the thread
# count and work split are unchanged; only how idle threads wait). Set OMP_WAIT_POLICY=ACTIVE to spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
