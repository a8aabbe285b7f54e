"""CLI commands of the demo stage (registered on the shared typer app)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steermoe.cli.app import app, console

__all__ = ["demo_model"]


@app.command("demo-model")
def demo_model(
    out: Optional[Path] = typer.Option(None, "--out", help="Train the model from scratch into this folder instead of the cache (must not hold a model)."),
    arch: str = typer.Option("qwen3_moe", "--arch", help="Architecture: qwen3_moe, olmoe or mixtral."),
    size: str = typer.Option("full", "--size", help="'full' (the demo model), 'small' (about a minute to build; smoke runs) or 'tiny' (seconds; for tests)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache root (default: $STEERMOE_CACHE or ~/.cache/steermoe)."),
    shipped: bool = typer.Option(
        True, "--shipped/--no-shipped",
        help="Copy the build the package ships for this recipe (the full size only) instead of training it; a cached model is reused either way.",
    ),
) -> None:
    """Print the built-in demo MoE chat model's folder: copied from the build the package ships for the default
    recipe, or trained offline (either way cached by recipe hash)."""
    from steermoe.demo.model import build_demo_model, ensure_demo_model
    from steermoe.demo.recipe import DEMO_ARCHS, DEMO_SIZES, DemoRecipe
    from steermoe.errors import InputError

    if arch not in DEMO_ARCHS:
        raise InputError(f"--arch {arch!r}: unknown demo architecture; choose one of {', '.join(DEMO_ARCHS)}")
    if size not in DEMO_SIZES:
        raise InputError(f"--size {size!r}: choose one of {', '.join(DEMO_SIZES)}")
    recipe = DemoRecipe.of_size(size, arch)
    if out is not None:
        path = build_demo_model(out, recipe)
    else:
        path = ensure_demo_model(cache_dir=cache_dir, arch=arch, recipe=recipe, shipped=shipped)
    console.print(str(path), highlight=False, soft_wrap=True)
