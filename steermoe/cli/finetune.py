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
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <output_dir>/<run_name>/finetune)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a config key: key.path=value (repeatable)."),
) -> int:
    """Fine-tune the selected experts with DeepSpeed; write an expert patch, metrics and baselines."""
    from steermoe.config import load_config
    from steermoe.finetune import (
        base_model_answers,
        build_training_examples,
        finetune_experts,
        finetune_full,
        finetune_random,
        refusals_from_endpoint,
    )
    from steermoe.modeling import load_pretrained, resolve_model_path
    from steermoe.prompts import to_messages
    from steermoe.selection import ExpertSelection
    from steermoe.stages import load_prompt_set

    cfg = load_config(config, overrides or [])
    run_dir = Path(cfg.output_dir) / cfg.run_name
    selection = selection or run_dir / "selection.json"
    if not selection.exists():
        raise InputError(f"--selection: {selection} does not exist; run `steermoe select` first or pass --selection FILE")
    chosen = ExpertSelection.from_json(selection)
    out = out or run_dir / "finetune"
    ft = cfg.finetune
    model_path = resolve_model_path(cfg.model, cfg.cache_dir)
    prompts = load_prompt_set(cfg.prompts)
    prompts = prompts[prompts["split"] == "train"]
    unsafe = [to_messages(r) for r in prompts[prompts["label"] == "unsafe"].to_dict("records")]
    safe = [to_messages(r) for r in prompts[prompts["label"] == "safe"].to_dict("records")]
    model, tokenizer = load_pretrained(cfg.model, model_path)
    g = cfg.generation
    answers = base_model_answers(model, tokenizer, safe, ft.answer_max_new_tokens, g.batch_size, g.chat_template_kwargs)
    del model
    refusals = refusals_from_endpoint(ft.refusal_endpoint, ft.refusal_endpoint_model, unsafe) if ft.refusal_endpoint else None
    examples = build_training_examples(tokenizer, unsafe, safe, answers, ft, refusals=refusals, chat_template_kwargs=g.chat_template_kwargs)
    console.print(f"{len(examples)} training examples, {len(chosen)} selected experts, ZeRO {ft.zero_stage} {ft.precision}")
    results = [finetune_experts(model_path, chosen, examples, ft, out / "selected", model=cfg.model)]
    for name in ft.baselines:
        if name == "random":
            results.append(finetune_random(model_path, chosen, examples, ft, out / "random", model=cfg.model))
        elif name == "full":
            results.append(finetune_full(model_path, examples, ft, out / "full", model=cfg.model))
    _print_results(results)
    return 0


def _print_results(results) -> None:
    table = Table(title="fine-tuning")
    for col in ("run", "trainable", "steps", "final loss", "held-out refusal loss", "held-out benign loss", "output"):
        table.add_column(col)
    def pair(m, kind):
        before, after = m.get(f"heldout_{kind}_loss_before"), m.get(f"heldout_{kind}_loss_after")
        return "-" if before is None or after is None else f"{before:.3f} -> {after:.3f}"

    for r in results:
        m = r.metrics
        table.add_row(
            r.mode, f"{m['trainable_params']:,} ({m['trainable_fraction']:.2%})", str(m["steps"]), f"{m['final_loss']:.4f}",
            pair(m, "refusal"), pair(m, "benign"), str(r.patch_path or r.merged_path),
        )
    console.print(table)
