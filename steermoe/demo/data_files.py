"""The demo world's tables (templates, grids, declines, wording) live as YAML beside the prompt sets."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["DATA_DIR", "load_table", "tables_fingerprint"]

DATA_DIR = Path(__file__).parent / "data"


@functools.cache
def load_table(name: str) -> dict:
    """``data/<name>.yaml`` parsed (cached; callers must not mutate it)."""
    import yaml

    with open(DATA_DIR / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def tables_fingerprint() -> str:
    """A hash of every table (``*.yaml``) the demo corpus is built from: with the code, what decides the demo
    model, and read in milliseconds where building the corpus to hash it takes seconds."""
    digest = hashlib.sha256()
    for path in sorted(DATA_DIR.glob("*.yaml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
