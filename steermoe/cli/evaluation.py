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


def _existing(path: str | Path, option: str) -> Path:
    from steermoe.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{option} {path}: does not exist")
    return path


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
    from steermoe.config import load_config
    from steermoe.errors import InputError
    from steermoe.evaluation.comparison import ModelEntry
    from steermoe.modeling import load_pretrained, resolve_model_path
    from steermoe.selection import ExpertSelection

    if model is not None and patch is not None:
        raise InputError("--model and --patch: give one of them (a full model folder, or a patch on the config's model)")
    cfg = load_config(config, overrides or [])
    prompts = load_eval_prompts(cfg, _pairs(benchmarks, "--benchmark"))
    base_path = resolve_model_path(cfg.model, cfg.cache_dir)
    m = cfg.model
    base, tokenizer = load_pretrained(m, base_path)
    entries = {"base": ModelEntry(lambda: (base, tokenizer))}
    name = "base"
    if model is not None:
        name = "model"
        entries[name] = ModelEntry(lambda: load_pretrained(m, _existing(model, "--model")))
    elif patch is not None:
        name = "patched"
        entries[name] = ModelEntry(lambda: load_pretrained(m, base_path, patch=_existing(patch, "--patch")))
    if selection is not None:
        steered = ExpertSelection.from_json(_existing(selection, "--steer"))
        target = entries[name]
        name = f"{name}+steered" if name != "base" else "steered"
        entries[name] = ModelEntry(target.load, steering=steered, epsilon=cfg.evaluation.steering_epsilon)
    out = out or Path(cfg.output_dir) / cfg.run_name / "evaluation"
    result = _run(cfg, entries, prompts, out)
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
    from steermoe.config import load_config
    from steermoe.errors import InputError
    from steermoe.evaluation.comparison import ModelEntry
    from steermoe.modeling import load_pretrained, resolve_model_path
    from steermoe.selection import ExpertSelection

    named = {"--patch": _pairs(patches, "--patch"), "--model": _pairs(models, "--model"), "--steer": _pairs(steers, "--steer")}
    seen: set[str] = {"base"}
    for option, pairs in named.items():
        clash = seen & set(pairs)
        if clash:
            raise InputError(f"{option}: name(s) {sorted(clash)} already used; give every entry its own name")
        seen |= set(pairs)
    cfg = load_config(config, overrides or [])
    prompts = load_eval_prompts(cfg, _pairs(benchmarks, "--benchmark"))
    base_path = resolve_model_path(cfg.model, cfg.cache_dir)
    m = cfg.model
    base, tokenizer = load_pretrained(m, base_path)
    entries = {"base": ModelEntry(lambda: (base, tokenizer))}
    for name, path in named["--steer"].items():
        entries[name] = ModelEntry(lambda: (base, tokenizer), ExpertSelection.from_json(_existing(path, "--steer")), cfg.evaluation.steering_epsilon)
    for name, path in named["--patch"].items():
        entries[name] = ModelEntry(lambda p=_existing(path, "--patch"): load_pretrained(m, base_path, patch=p))
    for name, path in named["--model"].items():
        entries[name] = ModelEntry(lambda p=_existing(path, "--model"): load_pretrained(m, p))
    out = out or Path(cfg.output_dir) / cfg.run_name / "comparison"
    result = _run(cfg, entries, prompts, out)
    _print(result)


def _run(cfg, entries, prompts, out: Path):
    from steermoe.evaluation.comparison import compare_models, judge_options, resolve_judges

    e = cfg.evaluation
    judges = resolve_judges(e.judges, judge_options(e))
    return compare_models(
        entries, prompts, judges, out, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, drift=e.routing_drift,
        bootstrap_samples=e.bootstrap_samples, confidence=e.confidence, seed=e.seed, chat_template_kwargs=cfg.generation.chat_template_kwargs,
    )
