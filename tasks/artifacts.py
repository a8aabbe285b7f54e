"""Prefect artifacts a pipeline run publishes: validation report, risk table, selection, comparison,
one table per safety benchmark.

Called from the flow after each stage (so cached stages publish too) and from the validation task
when it fails (so the report of bad data is visible in the UI next to the failed run).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

__all__ = ["publish_validation_report", "publish_risk_table", "publish_selection", "publish_comparison", "publish_benchmarks", "publish_decision"]


def _rows(frame, limit: int) -> list[dict]:
    return json.loads(frame.head(limit).to_json(orient="records"))


def publish_validation_report(report: dict, limit: int = 100) -> None:
    status = "passed" if report["success"] else "**FAILED**"
    lines = [f"# Prompt validation {status}", "", f"Fingerprint `{report['fingerprint']}`, {report['rows']} rows, counts {report['counts']}.", ""]
    if report["failures"]:
        lines += ["| rule | id | row | detail | severity |", "|---|---|---|---|---|"]
        for f in report["failures"][:limit]:
            detail = str(f["detail"]).replace("|", "\\|")
            lines.append(f"| {f['rule']} | {f['id']} | {f['row']} | {detail} | {f['severity']} |")
        if len(report["failures"]) > limit:
            lines.append(f"\n... and {len(report['failures']) - limit} more in the JSON report.")
    create_markdown_artifact("\n".join(lines), key="validation-report", description="Prompt-set validation (Great Expectations)")


def publish_risk_table(record: dict, limit: int = 50) -> None:
    import pandas as pd

    table = pd.read_parquet(record["table_path"])  # columns: steermoe.analysis.risk_difference
    top = table.sort_values("risk_diff", ascending=False)
    create_table_artifact(_rows(top, limit), key="risk-table", description=f"Top {limit} experts by risk difference (unsafe - safe routing rate)")


def publish_selection(record: dict) -> None:
    experts = ", ".join(f"L{layer}/E{expert}" for layer, expert in record["experts"]) or "(none)"
    text = f"# Selected experts ({record['n_experts']}, strategy `{record['strategy']}`)\n\n{experts}\n"
    create_markdown_artifact(text, key="expert-selection", description="Experts chosen for fine-tuning")


def publish_comparison(record: dict) -> None:
    import pandas as pd

    path = record.get("comparison_path")
    if path and Path(path).exists():
        frame = pd.read_csv(path)
        create_table_artifact(_rows(frame, 100), key="comparison", description="Base vs fine-tuned vs baselines")


def publish_benchmarks(record: dict) -> list[str]:
    """One table artifact per benchmark among the evaluation prompts (``benchmark-<name>``); returns the keys."""
    path = record.get("comparison_json_path")
    if not path or not Path(path).exists():
        return []
    keys = []
    for name, bench in json.loads(Path(path).read_text(encoding="utf-8")).get("benchmarks", {}).items():
        rows = [{"model": r["model"], "judge": r["judge"], **{m: _interval(r, m) for m in bench["metrics"]}} for r in bench["table"]]
        key = f"benchmark-{name}"
        notes = " ".join(bench["notes"])
        create_table_artifact(rows, key=key, description=f"{name}: its own scores ({bench['n_prompts']} prompts). {notes}"[:2000])
        keys.append(key)
    return keys


def _interval(row: dict, metric: str) -> str:
    value, low, high = row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if value is None:
        return "n/a"
    return f"{value:.3f}" if low is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def publish_decision(decision: dict, candidate: str) -> None:
    verdict = "promoted to champion" if decision["promote"] else "NOT promoted"
    lines = [f"# {candidate}: {verdict}", "", f"Compared with the {decision['reference']}.", ""]
    lines += [f"- {r}" for r in decision["reasons"]]
    create_markdown_artifact("\n".join(lines), key="promotion-decision", description="Promotion decision and its numbers")
