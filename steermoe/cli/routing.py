"""CLI commands of the routing stage: ``steermoe collect``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from steermoe.cli.app import app, console

__all__ = ["collect", "load_routing_prompts", "summary_table"]


def load_routing_prompts(cfg):
    """The prompts of ``routing.split`` from the configured sources ('demo' or a list of files)."""
    from steermoe.errors import InputError
    from steermoe.prompts import select_split
    from steermoe.stages import load_prompt_set

    prompts = select_split(load_prompt_set(cfg.prompts), cfg.routing.split)
    if len(prompts) == 0:
        raise InputError(f"routing.split: no prompts with split {cfg.routing.split!r} in the prompt sources; set routing.split=all or add a split")
    return prompts


def summary_table(store, seconds: float) -> Table:
    counts = store.manifest.get("counts", {})
    seqs = store.sequences()
    table = Table(title=f"routing store {store.path}")
    for column in ("label", "sequences", "prompt tokens", "generated tokens", "stopped at EOS"):
        table.add_column(column, justify="right")
    for label, group in seqs.groupby("label", dropna=False):
        table.add_row(
            str(label), str(len(group)), str(int(group["prompt_tokens"].sum())), str(int(group["generated_tokens"].sum())),
            str(int((group["stop"] == "eos").sum())),
        )
    total = int(counts.get("prompt_tokens", 0)) + int(counts.get("generated_tokens", 0))
    table.add_row(
        "all", str(counts.get("sequences", 0)), str(counts.get("prompt_tokens", 0)), str(counts.get("generated_tokens", 0)),
        str(int((seqs["stop"] == "eos").sum())), style="bold",
    )
    m = store.manifest["model"]
    table.caption = (
        f"{m['model_type']}: {len(m['layers'])} MoE layers x {m['num_experts']} experts, top-{m['top_k']}; "
        f"{total} tokens recorded in {seconds:.1f}s ({total / max(seconds, 1e-9):.0f} tokens/s, this run)"
    )
    return table


@app.command()
def collect(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config YAML (default: the built-in demo)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a config key: key.path=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Store folder (default: <output_dir>/<run_name>/routing)."),
) -> None:
    """Answer the prompts with the model while recording every MoE router's top-k; resumes an interrupted run."""
    from steermoe.config import load_config
    from steermoe.modeling import resolve_model_path
    from steermoe.stages import collect_with_backend

    cfg = load_config(config, overrides or [])
    prompts = load_routing_prompts(cfg)
    path = resolve_model_path(cfg.model, cfg.cache_dir)
    out = out or Path(cfg.output_dir) / cfg.run_name / "routing"
    started = time.perf_counter()
    console.print(f"collecting routing with backend {cfg.routing.backend} ({path})")
    store = collect_with_backend(cfg, path, prompts, out)
    console.print(summary_table(store, time.perf_counter() - started))
