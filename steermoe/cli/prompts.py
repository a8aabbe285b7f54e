"""``steermoe validate`` and ``steermoe config show``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from steermoe.cli.app import app, config_app, console

ConfigOption = typer.Option(None, "--config", "-c", help="Run config YAML (default: the built-in demo).")
SetOption = typer.Option(None, "--set", "-s", help="Override a config key: key.path=value (repeatable).")


def print_report(report, limit: int = 50) -> None:
    table = Table(title=f"prompt set {report.fingerprint}: {report.rows} rows {report.counts}", show_lines=False)
    for column in ("rule", "id", "row", "detail", "severity"):
        table.add_column(column)
    for f in report.failures[:limit]:
        style = "yellow" if f.severity == "warning" else "red"
        table.add_row(f.rule, str(f.id), "" if f.row is None else str(f.row), f.detail, f.severity, style=style)
    if report.failures:
        console.print(table)
        if len(report.failures) > limit:
            console.print(f"... and {len(report.failures) - limit} more (see --json)")
    console.print(report.summary(), style="green" if report.success else "red", highlight=False, soft_wrap=True)


@app.command()
def validate(
    files: list[Path] = typer.Argument(..., help="Prompt files (JSONL, CSV, Parquet, or a saved HF dataset folder)."),
    label: Optional[str] = typer.Option(None, help="Label for rows without one (safe|unsafe)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    min_per_label: int = typer.Option(10, help="Fewest rows each label must have."),
    min_chars: int = typer.Option(3, help="Shortest allowed prompt."),
    max_chars: int = typer.Option(4000, help="Longest allowed prompt."),
) -> int:
    """Validate prompt sets with Great Expectations; exit 1 when any row fails."""
    from steermoe.prompts import PromptSource, load_prompt_sources
    from steermoe.validation import validate_prompts

    prompts = load_prompt_sources(PromptSource(path=str(f), label=label) for f in files)
    with console.status("validating with Great Expectations"):
        report = validate_prompts(prompts, min_chars=min_chars, max_chars=max_chars, min_per_label=min_per_label)
    print_report(report)
    if json_out:
        report.to_json(json_out)
    return 0 if report.success else 1


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = SetOption) -> None:
    """Print the resolved run configuration as YAML."""
    from steermoe.config import load_config

    cfg = load_config(config, overrides or [])
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False, end="")


@app.command("pad-prompts")
def pad_prompts(
    out: Path = typer.Argument(..., help="JSONL file to write (then name it in prompts.sources)."),
    config: Optional[Path] = ConfigOption,
    overrides: Optional[list[str]] = SetOption,
    tokens: int = typer.Option(64, help="Exact length of every chat-rendered prompt, in tokens of the config's model."),
    train: int = typer.Option(1024, help="Rows of the train split (routing and fine-tuning)."),
    eval_rows: int = typer.Option(256, "--eval", help="Rows of the eval split."),
    seed: int = typer.Option(0, help="Seed of the context sentences' order."),
) -> int:
    """Write a prompt set of fixed token length: the demo requests behind benign context (benchmark-scale runs)."""
    from steermoe.config import load_config
    from steermoe.modeling import load_pretrained, resolve_model_path
    from steermoe.prompt_padding import padded_prompt_set, write_prompt_set

    cfg = load_config(config, overrides or [])
    with console.status("loading the tokenizer"):
        tokenizer = load_pretrained(cfg.model, resolve_model_path(cfg.model, cfg.cache_dir), weights=False).tokenizer
    frame = padded_prompt_set(tokenizer, tokens, train, eval_rows, seed, cfg.generation.chat_template_kwargs)
    write_prompt_set(frame, out)
    counts = frame.groupby(["split", "label"]).size().to_dict()
    console.print(f"wrote {len(frame)} prompts of {tokens} tokens to {out}: " + ", ".join(f"{s}/{lab} {n}" for (s, lab), n in counts.items()), highlight=False)
    return 0
