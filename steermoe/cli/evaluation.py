"""CLI commands of the evaluation stage: ``steermoe evaluate`` (one model) and ``steermoe compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from steermoe.cli.app import app, console

__all__ = ["evaluate", "compare", "load_eval_prompts", "metrics_table", "benchmark_table"]


def load_eval_prompts(cfg, benchmarks: dict[str, str] | None = None):
    """The prompts of ``evaluation.split`` from the configured sources ('demo' or a list of files),
    plus the ``benchmarks`` given as ``{name: path}`` (their rows are eval rows, checked row by row)."""
    import pandas as pd

    from steermoe.errors import InputError
    from steermoe.prompts import PromptSource, load_prompts, select_split
    from steermoe.stages import load_prompt_set

    prompts = load_prompt_set(cfg.prompts)
    if benchmarks:
        extra = pd.concat([load_prompts(PromptSource(path=path, benchmark=name)) for name, path in benchmarks.items()], ignore_index=True)
        prompts = pd.concat([prompts, extra], ignore_index=True)
        _check_rows(prompts, cfg.prompts.validation)
    prompts = select_split(prompts, cfg.evaluation.split)
    if len(prompts) == 0:
        raise InputError(f"evaluation.split: no prompts with split {cfg.evaluation.split!r} ; set evaluation.split=all or add a split")
    return prompts


def _check_rows(prompts, v) -> None:
    """Validate as the pipeline does, minus the per-label minimum (a benchmark may hold one label only)."""
    from steermoe.errors import ValidationFailed
    from steermoe.validation import validate_prompts

    report = validate_prompts(prompts, min_chars=v.min_chars, max_chars=v.max_chars, min_per_label=1, imbalance_warning_ratio=v.imbalance_warning_ratio)
    if not report.success:
        first = report.errors[0]
        raise ValidationFailed(f"{report.summary()}; first: {first.rule} at id {first.id}: {first.detail}", report=report)


def metrics_table(table) -> Table:
    """Metrics down, models across, each value over its confidence interval: fits 80 columns for the
    usual five models without cutting a header (models across a row of seven metrics did not)."""
    from steermoe.evaluation.comparison import TABLE_METRICS

    shown = [m for m in TABLE_METRICS if table[m].notna().any()]
    out = Table(title="evaluation (value, then its interval)")
    out.add_column("metric", overflow="fold")
    for model in table["model"]:
        out.add_column(str(model), justify="right", overflow="fold")
    for m in shown:
        cells = [f"{row[m]:.3f}\n{row[m + '_low']:.2f}-{row[m + '_high']:.2f}" if row[m] == row[m] else "n/a" for _, row in table.iterrows()]
        out.add_row(m.replace("_", " "), *cells)
    return out


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    from steermoe.errors import InputError

    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{option} {item!r}: expected NAME=PATH")
        if name in out:
            raise InputError(f"{option}: the name {name!r} is given twice")
        out[name] = value
    return out


@app.command()
def evaluate(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config YAML (default: the built-in demo)."),
    model: Optional[Path] = typer.Option(None, "--model", help="A Hugging Face model folder to evaluate (default: the config's model)."),
    patch: Optional[Path] = typer.Option(None, "--patch", help="An expert patch to apply to the config's model, then evaluate."),
    selection: Optional[Path] = typer.Option(None, "--steer", help="Evaluate with SteerMoE steering by this expert selection JSON."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <output_dir>/<run_name>/evaluation)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a config key: key.path=value (repeatable)."),
    benchmarks: Optional[list[str]] = typer.Option(
        None, "--benchmark", help="NAME=PATH of a published benchmark file or dataset (xstest, advbench, harmbench, strongreject, jailbreakbench; repeatable)."
    ),
) -> None:
    """Answer the evaluation prompts, judge refusals, and measure over-refusal, utility and routing drift
    (and each benchmark's own scores for every --benchmark)."""
    from steermoe.errors import InputError

    if model is not None and patch is not None:
        raise InputError("--model and --patch: give one of them (a full model folder, or a patch on the config's model)")
    name = "model" if model is not None else "patched" if patch is not None else "base"
    steered = "steered" if name == "base" else f"{name}+steered"
    _evaluate(
        config, overrides, benchmarks, out or "evaluation",
        models={name: model} if model is not None else {}, patches={name: patch} if patch is not None else {},
        steers={steered: (selection, name)} if selection is not None else {},
    )


@app.command()
def compare(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config YAML (default: the built-in demo)."),
    patches: Optional[list[str]] = typer.Option(None, "--patch", help="NAME=PATH of an expert patch on the base (repeatable)."),
    models: Optional[list[str]] = typer.Option(None, "--model", help="NAME=PATH of a full model folder (repeatable)."),
    steers: Optional[list[str]] = typer.Option(None, "--steer", help="NAME=SELECTION_JSON: the base steered by a selection (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <output_dir>/<run_name>/comparison)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a config key: key.path=value (repeatable)."),
    benchmarks: Optional[list[str]] = typer.Option(None, "--benchmark", help="NAME=PATH of a published benchmark file or dataset (repeatable)."),
) -> None:
    """Evaluate the base and every given model (steered, expert-/random-/fully fine-tuned) on the same prompts and judges."""
    from steermoe.errors import InputError

    named = {"--patch": _pairs(patches, "--patch"), "--model": _pairs(models, "--model"), "--steer": _pairs(steers, "--steer")}
    seen: set[str] = {"base"}
    for option, pairs in named.items():
        clash = seen & set(pairs)
        if clash:
            raise InputError(f"{option}: name(s) {sorted(clash)} already used; give every entry its own name")
        seen |= set(pairs)
    steered = {name: (path, "base") for name, path in named["--steer"].items()}
    _evaluate(config, overrides, benchmarks, out or "comparison", models=named["--model"], patches=named["--patch"], steers=steered)


def _evaluate(config, overrides, benchmarks, out, *, models: dict, patches: dict, steers: dict) -> None:
    """Check every path the command got (before any model loads), then run the evaluation stage on
    the base plus the named entries; ``steers`` maps a name to (selection JSON, the entry it steers)."""
    from steermoe.config import load_config
    from steermoe.evaluation.comparison import ModelEntry
    from steermoe.modeling import resolve_model_path
    from steermoe.preflight import check_model_folder, check_patch, check_selection, model_shape
    from steermoe.stages import evaluate_entries, model_entry

    cfg = load_config(config, overrides or [])
    models = {name: check_model_folder(path, "--model") for name, path in models.items()}
    patches = {name: check_patch(path, "--patch") for name, path in patches.items()}
    shape = model_shape(cfg.model) if steers else None
    selections = {name: check_selection(path, shape, "--steer") for name, (path, _) in steers.items()}
    prompts = load_eval_prompts(cfg, _pairs(benchmarks, "--benchmark"))
    base_path = resolve_model_path(cfg.model, cfg.cache_dir)
    entries = {"base": model_entry(cfg.model, base_path)}

    def steer(on_base: bool) -> None:
        for name, (_, target) in steers.items():
            if (target == "base") == on_base:
                entries[name] = ModelEntry(entries[target].load, steering=selections[name], epsilon=cfg.evaluation.steering_epsilon)

    steer(on_base=True)  # table order: base, its steered variants, patches, models, their steered variants
    entries |= {name: model_entry(cfg.model, base_path, patch=path) for name, path in patches.items()}
    entries |= {name: model_entry(cfg.model, base_path, weights=path, tokenizer_path=path) for name, path in models.items()}
    steer(on_base=False)
    out = Path(out) if isinstance(out, Path) else Path(cfg.output_dir) / cfg.run_name / out
    _, result = evaluate_entries(cfg, entries, prompts, out)
    _print(result)


def _print(result) -> None:
    console.print(metrics_table(result.table))
    for bench in result.benchmarks.values():
        console.print(benchmark_table(bench))
    console.print(f"wrote {result.paths['markdown']}, {result.paths['json']} and {result.paths['png']}")


def benchmark_table(bench) -> Table:
    """A benchmark's own scores, one row per (model, judge)."""
    out = Table(title=f"{bench.name} ({bench.n_prompts} prompts)")
    for column in ("model", "judge", *bench.metrics):
        out.add_column(column, justify="left" if column in ("model", "judge") else "right")
    for row in bench.table.to_dict("records"):
        cells = [f"{row[m]:.3f} [{row[m + '_low']:.2f}, {row[m + '_high']:.2f}]" if row[m] == row[m] else "n/a" for m in bench.metrics]
        out.add_row(row["model"], row["judge"], *cells)
    return out
