"""``steermoe finetune``: train only the selected experts (plus the configured baselines)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from steermoe.cli.app import app, console
from steermoe.errors import InputError

__all__ = ["finetune"]


@app.command()
def finetune(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config YAML (default: the built-in demo)."),
    selection: Optional[Path] = typer.Option(None, "--selection", help="ExpertSelection JSON (from `steermoe select`); default: <output_dir>/<run_name>/selection.json."),
    store: Optional[Path] = typer.Option(
        None, "--store", help="Routing store whose answers to reuse as the benign targets (default: <output_dir>/<run_name>/routing if there)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <output_dir>/<run_name>/finetune)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a config key: key.path=value (repeatable)."),
) -> int:
    """Fine-tune the selected experts with DeepSpeed (the pipeline's finetune stage, prompts validated
    first); write an expert patch, its training curve, metrics and the configured baselines."""
    from steermoe.config import load_config
    from steermoe.modeling import resolve_model_path
    from steermoe.preflight import check_selection, model_shape
    from steermoe.stages import finetune_stage, validate_prompts_stage

    cfg = load_config(config, overrides or [])
    run_dir = Path(cfg.output_dir) / cfg.run_name
    selection = selection or run_dir / "selection.json"
    if not selection.exists():
        raise InputError(f"--selection: {selection} does not exist; run `steermoe select` first or pass --selection FILE")
    chosen = check_selection(selection, model_shape(cfg.model), "--selection")
    if store is not None and not (store / "manifest.json").exists():
        raise InputError(f"--store: {store} is not a routing store (no manifest.json); give the folder `steermoe collect` wrote")
    store = store or (run_dir / "routing" if (run_dir / "routing" / "manifest.json").exists() else None)
    out = out or run_dir / "finetune"
    model_path = resolve_model_path(cfg.model, cfg.cache_dir)
    prompts = validate_prompts_stage(cfg.prompts, out / "prompts")
    ft = cfg.finetune
    console.print(f"{len(chosen)} selected experts, ZeRO {ft.zero_stage} {ft.precision}, baselines: {', '.join(ft.baselines) or 'none'}")
    record = finetune_stage(cfg, str(model_path), prompts["prompts_path"], None if store is None else str(store), str(selection), out)
    _print_results(record)
    return 0


def _print_results(record: dict) -> None:
    table = Table(title="fine-tuning")
    for col in ("run", "trainable", "steps", "final loss", "held-out refusal loss", "held-out benign loss", "output"):
        table.add_column(col, overflow="fold")

    def pair(m, kind):
        before, after = m.get(f"heldout_{kind}_loss_before"), m.get(f"heldout_{kind}_loss_after")
        return "-" if before is None or after is None else f"{before:.3f} -> {after:.3f}"

    runs = [("selective", record)] + list(record["baselines"].items())
    for name, run in runs:
        m = run["metrics"]
        output = run.get("patch_path") or run.get("merged_path")
        table.add_row(
            name, f"{m['trainable_params']:,.0f} ({m['trainable_fraction']:.2%})", f"{m['steps']:.0f}", f"{m['final_loss']:.4f}",
            pair(m, "refusal"), pair(m, "benign"), str(output),
        )
    console.print(table)
