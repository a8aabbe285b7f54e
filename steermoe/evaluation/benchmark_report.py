"""One table per safety benchmark in a comparison: its own scores for every model and judge.

:func:`score_benchmarks` finds the benchmark rows among the judged responses (their ``source`` is a
benchmark name, as :func:`steermoe.evaluation.benchmarks.load_benchmark` sets it), scores them with
the benchmark's scorer for each judge that ran, adds judge agreement, and stores every number in the
model's metrics as ``<benchmark>/<metric>`` (``<benchmark>/<judge>/<metric>`` for judges after the
first; the StrongREJECT rubric scores exist for the LLM judge only and carry no judge name).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from steermoe.evaluation.benchmark_scores import XSTEST_CLASSIFIER_PROMPT, ScoreOptions, judge_agreement, parse_xstest_class
from steermoe.evaluation.metrics import MetricValue, metric_columns

if TYPE_CHECKING:
    from steermoe.evaluation.comparison import EvalResult
    from steermoe.evaluation.judges import Judge

__all__ = ["BenchmarkTable", "score_benchmarks", "benchmark_metrics", "xstest_asker", "RUBRIC_METRICS"]

# StrongREJECT's rubric numbers: only a rubric judge (the LLM judge) produces them.
RUBRIC_METRICS = ("score", "convincing", "specific")

_NO_RUBRIC = (
    "StrongREJECT score not computed: it needs the LLM judge (add llm to evaluation.judges and set "
    "evaluation.llm_judge_url and evaluation.llm_judge_model); only refusal_rate is shown."
)


@dataclass
class BenchmarkTable:
    """A benchmark's scores: ``table`` has one row per (model, judge) with ``<metric>``/``_low``/``_high``
    columns for ``metrics``; ``categories`` the per-category rates of the first judge (long form)."""

    name: str
    n_prompts: int
    metrics: list[str]
    table: pd.DataFrame
    categories: pd.DataFrame
    agreement: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "n_prompts": self.n_prompts,
            "metrics": self.metrics,
            "table": _records(self.table),
            "categories": _records(self.categories),
            "agreement": _records(self.agreement),
            "notes": self.notes,
        }

    def markdown(self) -> str:
        lines = [f"## {self.name} ({self.n_prompts} prompts)", ""]
        lines += _md_table(["model", "judge", *self.metrics], [[r["model"], r["judge"], *(_cell(r, m) for m in self.metrics)] for r in self.table.to_dict("records")])
        if len(self.categories):
            models = list(dict.fromkeys(self.categories["model"]))
            wide = self.categories.pivot_table(index=["metric", "category"], columns="model", values="cell", aggfunc="first", sort=False)
            lines += ["", f"Per category (judge `{self.categories['judge'].iloc[0]}`):", ""]
            lines += _md_table(["metric", "category", *models], [[m, c, *(row.get(x, "n/a") for x in models)] for (m, c), row in wide.iterrows()])
        if len(self.agreement):
            lines += ["", "Judge agreement:", ""]
            rows = [[r["model"], r["judges"], str(r["n"]), _ci(r["agreement"], r["agreement_low"], r["agreement_high"]), _ci(r["kappa"], r["kappa_low"], r["kappa_high"])]
                    for r in self.agreement.to_dict("records")]
            lines += _md_table(["model", "judges", "n", "agreement", "kappa"], rows)
        lines += [""] + [f"Note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def chart(self, path: str | Path) -> Path:
        from steermoe.plots import metric_bars

        shown = self.table.assign(row=[f"{m} ({j})" for m, j in zip(self.table["model"], self.table["judge"])])
        return metric_bars(shown, self.metrics, path, label="row")


def _records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")  # JSON has no NaN


def _ci(value, low, high) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:.3f}" if pd.isna(low) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _cell(row: Mapping[str, Any], metric: str) -> str:
    return _ci(row[metric], row[f"{metric}_low"], row[f"{metric}_high"])


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def score_benchmarks(results: Mapping[str, EvalResult], judges: Sequence[Judge], opts: ScoreOptions) -> dict[str, BenchmarkTable]:
    """Score every benchmark present in the responses, for every model and judge; adds the numbers to
    each result's ``metrics`` (and the XSTest classes of the LLM judge to its responses)."""
    from steermoe.evaluation.benchmarks import BENCHMARKS

    present = sorted({s for r in results.values() if "source" in r.responses for s in r.responses["source"].dropna()} & set(BENCHMARKS.names()))
    judge_names = [j.name for j in judges]
    classify = _xstest_classifier(judges) if "xstest" in present else None
    tables = {}
    for bench in present:
        spec = BENCHMARKS.get(bench)
        per_model: dict[str, dict[str, dict[str, MetricValue]]] = {}
        notes = [spec.note] if spec.note else []
        for model, result in results.items():
            mask = (result.responses["source"] == bench).to_numpy()
            if bench == "xstest" and classify is not None:
                notes += _classify_xstest(result, mask, classify)
            rows = result.responses[mask]
            per_model[model] = {j: spec.score(rows, j, opts) for j in judge_names if f"refused_{j}" in rows.columns}
            per_model[model]["agreement"] = judge_agreement(rows, [j for j in judge_names if j in per_model[model]], opts)
            result.metrics.update(_named(bench, per_model[model], result.judge))
        if bench == "strongreject" and not any(k in s for judged in per_model.values() for s in judged.values() for k in RUBRIC_METRICS):
            notes.append(_NO_RUBRIC)
        n = int((next(iter(results.values())).responses["source"] == bench).sum())
        tables[bench] = _table(bench, n, per_model, results, sorted(set(notes), key=notes.index))
    return tables


def _named(bench: str, judged: Mapping[str, Mapping[str, MetricValue]], primary: str) -> dict[str, MetricValue]:
    """Metric names as logged: ``<benchmark>/[<judge>/]<metric>``."""
    out = {}
    for judge, scores in judged.items():
        for key, value in scores.items():
            own = judge in (primary, "agreement") or key in RUBRIC_METRICS
            name = f"{bench}/{key}" if own else f"{bench}/{judge}/{key}"
            out[name] = dataclasses.replace(value, name=name)
    return out


def _table(bench: str, n: int, per_model, results: Mapping[str, EvalResult], notes: list[str]) -> BenchmarkTable:
    # Columns in the order of the judge measuring the most (the three-way XSTest one), then any others.
    scored = [scores for judged in per_model.values() for judge, scores in judged.items() if judge != "agreement"]
    overall = list(dict.fromkeys(k for scores in sorted(scored, key=len, reverse=True) for k in scores if "/" not in k))
    rows, categories, agreement = [], [], []
    for model, judged in per_model.items():
        primary = results[model].judge
        for judge, scores in judged.items():
            if judge == "agreement":
                for key, value in scores.items():
                    if key.startswith("agreement/"):
                        kappa = scores["kappa/" + key.split("/", 1)[1]]
                        agreement.append({"model": model, "judges": key.split("/", 1)[1], "n": value.n,
                                          **metric_columns({"agreement": value, "kappa": kappa}, ("agreement", "kappa"))})
                continue
            rows.append({"model": model, "judge": judge, **metric_columns(scores, [k for k in scores if "/" not in k])})
            if judge == primary:
                for key, v in scores.items():
                    if "/" in key:
                        metric, category = key.split("/", 1)
                        categories.append({"model": model, "judge": judge, "metric": metric, "category": category, "value": v.value,
                                           "low": v.ci_low, "high": v.ci_high, "n": v.n, "cell": _ci(v.value, v.ci_low, v.ci_high)})
    table = pd.DataFrame(rows)
    for m in overall:  # every (model, judge) row has every column, NaN where that judge cannot measure it
        for col in (m, f"{m}_low", f"{m}_high"):
            if col not in table.columns:
                table[col] = np.nan
    columns = ["model", "judge"] + [c for m in overall for c in (m, f"{m}_low", f"{m}_high")]
    return BenchmarkTable(bench, n, overall, table[columns], pd.DataFrame(categories), pd.DataFrame(agreement), notes)


def benchmark_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The ``<benchmark>/<metric>`` numbers of the model a run registers, from an evaluation record
    (``metrics[model][name]`` and ``candidate``), for the pipeline's MLflow run."""
    benchmarks = set(evaluation.get("benchmarks", ()))
    candidate = evaluation.get("metrics", {}).get(evaluation.get("candidate"), {})
    return {k: float(v) for k, v in candidate.items() if k.split("/", 1)[0] in benchmarks}


# --- XSTest's three classes from the LLM judge ----------------------------------------------------


def _xstest_classifier(judges: Sequence[Judge]) -> Callable[[list[str], list[str]], list[str]] | None:
    """The LLM judge's replies to XSTest's three-way question instead of its rubric (same endpoint and model)."""
    llm = next((j for j in judges if j.name == "llm" and hasattr(j, "ask")), None)
    if llm is None:
        return None
    asker = xstest_asker(llm)

    def classify(prompts: list[str], responses: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, int(getattr(llm, "concurrency", 1)))) as pool:
            return list(pool.map(asker.ask, prompts, responses))

    return classify


def xstest_asker(llm: Judge) -> Judge:
    """A copy of the LLM judge whose question is XSTest's classification instead of the StrongREJECT rubric."""
    asker = copy.copy(llm)
    asker.rubric = XSTEST_CLASSIFIER_PROMPT
    return asker


def _classify_xstest(result: EvalResult, mask: np.ndarray, classify) -> list[str]:
    """Add ``xstest_class_llm`` (and the raw ``xstest_reply_llm``) to the XSTest rows; unreadable replies
    fall back to the judge's refusal verdict."""
    frame = result.responses
    rows = frame[mask]
    replies = classify(rows["prompt"].fillna("").tolist(), rows["response"].fillna("").tolist())
    classes = [parse_xstest_class(r) for r in replies]
    fallback = np.where(rows["refused_llm"].astype(bool), "full_refusal", "full_compliance")
    unreadable = sum(c is None for c in classes)
    for column, values in (("xstest_class_llm", [c if c is not None else f for c, f in zip(classes, fallback)]), ("xstest_reply_llm", replies)):
        filled = frame.get(column, pd.Series([None] * len(frame), index=frame.index, dtype=object)).astype(object)
        filled[mask] = values
        frame[column] = filled
    return [f"{result.name}: {unreadable} XSTest classification replies were unreadable; their refusal verdict was used."] if unreadable else []
