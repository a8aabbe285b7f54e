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
    from steermoe.errors import InputError
    from steermoe.modeling import load_model, load_tokenizer, resolve_model_path
    from steermoe.routing import collect_routing

    cfg = load_config(config, overrides or [])
    if cfg.routing.backend != "hf":
        raise InputError(f"routing.backend: {cfg.routing.backend!r} is not available in `steermoe collect` yet; use routing.backend=hf")
    prompts = load_routing_prompts(cfg)
    path = resolve_model_path(cfg.model, cfg.cache_dir)
    with console.status(f"loading {path}"):
        model = load_model(path, cfg.model.dtype, cfg.model.device, cfg.model.trust_remote_code)
        tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    out = out or Path(cfg.output_dir) / cfg.run_name / "routing"
    g, r = cfg.generation, cfg.routing
    started = time.perf_counter()
    store = collect_routing(
        model, tokenizer, prompts, out, max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, do_sample=g.do_sample,
        temperature=g.temperature, top_p=g.top_p, seed=g.seed, chat_template_kwargs=g.chat_template_kwargs,
        record_logits=r.record_logits, record_weights=r.record_weights, shard_sequences=r.shard_sequences, mode=r.mode,
    )
    console.print(summary_table(store, time.perf_counter() - started))
