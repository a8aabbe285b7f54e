"""The demo world's tables (templates, grids, declines, wording) live as YAML beside the prompt sets."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["DATA_DIR", "load_table"]

DATA_DIR = Path(__file__).parent / "data"


@functools.cache
def load_table(name: str) -> dict:
    """``data/<name>.yaml`` parsed (cached; callers must not mutate it)."""
    import yaml

    with open(DATA_DIR / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)
