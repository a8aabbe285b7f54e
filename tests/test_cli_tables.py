"""Result tables stay readable in an 80-column terminal: every header whole, no ellipsis."""

import pandas as pd
from rich.console import Console

from steermoe.cli.evaluation import metrics_table
from steermoe.cli.pipeline import evaluation_table
from steermoe.evaluation.comparison import TABLE_METRICS


def rendered(table) -> str:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


def comparison_frame() -> pd.DataFrame:
    rows = []
    for model in ("base", "steered", "finetuned", "random"):
        row = {"model": model}
        for m in TABLE_METRICS:
            row.update({m: 0.4321, f"{m}_low": 0.3012, f"{m}_high": 0.5523})
        rows.append(row)
    return pd.DataFrame(rows)


def test_the_evaluation_table_keeps_every_header_at_80_columns():
    text = rendered(metrics_table(comparison_frame()))
    assert "…" not in text
    for metric in TABLE_METRICS:
        assert all(word in text for word in metric.split("_")), metric
    assert "0.432" in text and "0.30" in text and "finetuned" in text


def test_the_run_summary_table_keeps_every_header_at_80_columns():
    metrics = {model: {m: 0.4321 for m in TABLE_METRICS} for model in ("base", "steered", "finetuned", "random", "full")}
    text = rendered(evaluation_table(metrics))
    assert "…" not in text and "finetuned" in text and "0.432" in text


def test_the_run_summary_says_where_the_time_went(monkeypatch):
    from steermoe.cli import pipeline

    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(pipeline, "console", console)
    summary = {
        "run_name": "demo", "out_root": "/tmp/runs/demo", "states": {"collect_routing": "Completed", "finetune": "Cached"},
        "seconds": {"collect_routing": 61.4, "finetune": 8.9}, "records": {},
        "tracking": {"uri": "sqlite:///tmp/mlflow.db", "experiment_id": "1", "run_id": "abc"},
        "registered": {"alias_uri": "models:/steermoe-demo@challenger", "version": 3},
    }
    pipeline._summary(summary, None, 100.2)
    lines = console.export_text().splitlines()
    assert "100 s in all: 70 s in the stages, 30 s starting Prefect, MLflow and imports" in lines  # one line, never wrapped
