"""CLI commands of the analysis stage: ``steermoe analyze``, ``steermoe select``, ``steermoe import-table``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from steermoe.cli.app import app, console

ConfigOption = typer.Option(None, "--config", "-c", help="Run config YAML; its analysis/selection section gives the defaults.")


def _config(path: Optional[Path]):
    from steermoe.config import RunConfig, load_config

    return load_config(path, []) if path else RunConfig()


def print_top(table, title: str, experts=None, limit: int = 20) -> None:
    """A rich table of experts (the selection's, in order, or the table's first rows)."""
    import pandas as pd

    rows = table.set_index(["layer", "expert"]) if experts is not None else None
    view = rows.loc[pd.MultiIndex.from_tuples(experts[:limit])].reset_index() if experts is not None else table.head(limit)
    out = Table(title=title)
    for column in ("#", "layer", "expert", "risk_diff", "CI", "p_unsafe", "p_safe", "q_value"):
        out.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for i, r in enumerate(view.itertuples(index=False), 1):
        ci = f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if hasattr(r, "ci_low") else ""
        q = f"{r.q_value:.2g}" if hasattr(r, "q_value") else ""
        out.add_row(str(i), str(r.layer), str(r.expert), f"{r.risk_diff:+.4f}", ci, f"{r.p_unsafe:.3f}", f"{r.p_safe:.3f}", q)
    console.print(out)


@app.command()
def analyze(
    store: Path = typer.Option(..., "--store", help="Routing store folder (from `steermoe collect`)."),
    out: Path = typer.Option(..., "--out", help="Where to write the risk table (Parquet)."),
    segment: Optional[str] = typer.Option(None, help="prompt | generation | all (default: config, 'all')."),
    weighting: Optional[str] = typer.Option(None, help="token | sequence | batch (default: config, 'token')."),
    behaviour_filter: Optional[bool] = typer.Option(
        None, "--behaviour-filter/--no-behaviour-filter", help="Keep only answered prompts (refusal-prefix judge)."
    ),
    confidence: Optional[float] = typer.Option(None, help="Confidence level of the intervals (default 0.95)."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts per batch for --weighting batch (default: config, 16)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Also write risk_heatmap.png and top_experts.png here."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Compute the risk difference of every (layer, expert) from a routing store."""
    from steermoe.analysis import risk_difference

    cfg = _config(config).analysis
    table = risk_difference(
        str(store),
        segment=segment or cfg.segment,
        weighting=weighting or cfg.weighting,
        sequence_filter="behaviour" if (cfg.behaviour_filter if behaviour_filter is None else behaviour_filter) else None,
        confidence=confidence or cfg.confidence,
        batch_size=batch_size or cfg.batch_size,
    )
    from steermoe.files import atomic_path

    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    a = table.attrs
    print_top(table, f"{a['weighting']} weighting, {a['segment']} tokens: {a['tokens_unsafe']} unsafe / {a['tokens_safe']} safe")
    console.print(f"wrote {len(table)} rows to {out}", highlight=False)
    if plots:
        from steermoe.plots import save_plots

        paths = save_plots(table, plots)
        console.print("plots: " + ", ".join(str(p) for p in paths.values()), highlight=False)


def _strategy_params(pairs: list[str]) -> dict:
    """``--param NAME=VALUE`` pairs, values read as YAML scalars (``4``, ``0.05``); the strategy checks the names."""
    import yaml

    from steermoe.errors import InputError

    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param {pair!r}: write NAME=VALUE, e.g. --param alpha=0.05")
        params[name.strip()] = yaml.safe_load(value)
    return params


@app.command()
def select(
    table_path: Path = typer.Option(..., "--table", help="Risk table (ours, or a SteerMoE table: CSV/Parquet/pickle)."),
    strategy: Optional[str] = typer.Option(None, help="threshold | per_layer_cap | significance | top_p | random | signed."),
    threshold: Optional[float] = typer.Option(None, help="Minimum risk difference (CI lower bound for significance)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Most experts to select."),
    params: Optional[list[str]] = typer.Option(
        None, "--param", "-p",
        help="Another parameter of the strategy, NAME=VALUE (repeatable): per_layer_cap=4 (per_layer_cap), alpha=0.05 "
        "(significance), top_p=0.5 (top_p), size=16 and seed=0 (random).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only the selection as JSON on stdout."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the selection JSON here."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Choose experts from a risk table and print them (or their JSON)."""
    from steermoe.import_table import load_risk_table
    from steermoe.selection import select_experts, select_from_config

    table = load_risk_table(table_path)
    given = {"threshold": threshold, "top_k": top_k, **_strategy_params(params or [])}
    if config and strategy is None and all(v is None for v in given.values()):
        selection = select_from_config(table, _config(config).selection)
    else:
        selection = select_experts(table, strategy or "threshold", **given)
    if out:
        selection.to_json(out)
    if as_json:
        sys.stdout.write(json.dumps(selection.to_dict()) + "\n")
        return
    what = "to activate" if selection.strategy == "signed" else "selected"
    if selection.experts:
        print_top(table, f"{selection.strategy}: {len(selection)} experts {what} {selection.params}", experts=selection.experts, limit=len(selection))
    if selection.negative:
        print_top(table, f"{len(selection.negative)} experts to deactivate", experts=selection.negative, limit=len(selection.negative))


@app.command("import-table")
def import_table_cmd(
    file: Path = typer.Argument(..., help="SteerMoE activation table: CSV, Parquet, or pandas pickle (restricted loader)."),
    out: Path = typer.Option(..., "--out", help="Where to write our risk table (Parquet)."),
    confidence: float = typer.Option(0.95, help="Confidence level of the intervals."),
) -> None:
    """Convert a published SteerMoE table into a risk table with our statistics."""
    from steermoe.import_table import import_table

    table = import_table(file, out, confidence)
    print_top(table, f"imported {file.name}")
    console.print(f"wrote {len(table)} rows to {out}", highlight=False)
