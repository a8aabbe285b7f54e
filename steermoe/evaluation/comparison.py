"""Evaluating one model and comparing several on the same prompts and judges.

:func:`evaluate_responses` judges answers that already exist; :func:`evaluate_model` generates them
first (``steermoe.modeling.generate``) and adds utility and routing drift against a base model;
:func:`compare_models` runs it for every entry (base, steered, fine-tuned, baselines) and writes a
Markdown table, JSON and a PNG chart with confidence-interval error bars.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steermoe.errors import InputError
from steermoe.evaluation.benchmark_report import BenchmarkTable, score_benchmarks
from steermoe.evaluation.benchmark_scores import ScoreOptions
from steermoe.evaluation.judges import Judge, make_judge
from steermoe.evaluation.metrics import (
    MetricValue,
    agreement,
    answer_losses,
    compute_metrics,
    expert_usage,
    metric_columns,
    routing_drift,
)
from steermoe.failpoints import failpoint
from steermoe.generation import GenerationSettings
from steermoe.prompts import to_messages, user_text
from steermoe.selection import ExpertSelection

__all__ = [
    "BaseReference",
    "EvalResult",
    "ModelEntry",
    "LoadedModel",
    "open_loaded_model",
    "ComparisonResult",
    "resolve_judges",
    "judge_options",
    "evaluate_responses",
    "base_reference",
    "evaluate_model",
    "compare_models",
    "TABLE_METRICS",
    "TRAINING_COLUMNS",
    "comparison_table",
    "write_comparison",
]

# Columns of the comparison table and chart, in order.
TABLE_METRICS = ("refusal_rate", "over_refusal", "over_refusal_safe", "over_refusal_borderline", "utility_loss", "utility_loss_delta", "routing_drift")
# What fine-tuning a row's model cost (from the fine-tuning metrics): what selective training buys.
TRAINING_COLUMNS = ("trainable_params", "optimizer_state_bytes", "step_seconds")


@dataclass
class EvalResult:
    """Metrics (first judge decides ``refused``), per-prompt responses and judge agreement."""

    name: str
    judge: str
    metrics: dict[str, MetricValue]
    responses: pd.DataFrame
    agreement: pd.DataFrame
    drift_per_layer: list[float] | None = None
    reference: BaseReference | None = field(default=None, repr=False)  # set when this model was its own base
    training: dict | None = None  # what training this model cost (fine-tuned rows): see TRAINING_COLUMNS

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "judge": self.judge,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "agreement": self.agreement.to_dict("records"),
            "drift_per_layer": self.drift_per_layer,
            "training": self.training,
        }


def judge_options(evaluation_cfg) -> dict[str, dict]:
    """Constructor options per judge name from an ``EvaluationConfig`` (the LLM judge's endpoint;
    its API key is read from the environment variable the config names, never from the config)."""
    import os

    env = evaluation_cfg.llm_judge_api_key_env
    key = os.environ.get(env, "") if env else ""
    return {"llm": {"base_url": evaluation_cfg.llm_judge_url, "model": evaluation_cfg.llm_judge_model, "api_key": key}}


def resolve_judges(judges: Sequence[Judge | str], options: Mapping[str, dict] | None = None) -> list[Judge]:
    """Judge instances from instances or registry names (``options[name]`` are constructor kwargs)."""
    out = [j if isinstance(j, Judge) else make_judge(j, **dict((options or {}).get(j, {}))) for j in judges]
    if not out:
        raise ValueError("at least one judge is needed")
    return out


def evaluate_responses(
    frame: pd.DataFrame,
    judges: Sequence[Judge | str],
    *,
    name: str = "model",
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> EvalResult:
    """Judge existing answers. ``frame`` needs ``prompt``, ``response``, ``label`` and ``category``;
    loss columns (``loss_sum``, ``loss_tokens``, ``base_loss_sum``) add the utility metrics."""
    judges = resolve_judges(judges)
    frame = frame.copy()
    prompts, responses = frame["prompt"].fillna("").tolist(), frame["response"].fillna("").tolist()
    decisions = {}
    for judge in judges:
        verdicts = judge.judge_batch(prompts, responses)
        frame[f"refused_{judge.name}"] = [v.refused for v in verdicts]
        frame[f"score_{judge.name}"] = [v.score for v in verdicts]
        frame[f"reason_{judge.name}"] = [v.reason for v in verdicts]
        if any(v.harm is not None for v in verdicts):
            frame[f"harm_{judge.name}"] = [v.harm for v in verdicts]
            # The rubric's two scales (StrongREJECT reports them beside its score).
            for scale in ("convincing", "specific"):
                frame[f"{scale}_{judge.name}"] = [v.details.get(scale) if v.harm is not None else None for v in verdicts]
        decisions[judge.name] = frame[f"refused_{judge.name}"].tolist()
    frame["refused"] = frame[f"refused_{judges[0].name}"]
    metrics = compute_metrics(frame, samples=bootstrap_samples, confidence=confidence, seed=seed)
    return EvalResult(name, judges[0].name, metrics, frame, agreement(decisions))


@dataclass
class BaseReference:
    """The base model's answers to the benign prompts, their loss under the base, and its expert usage."""

    ids: list[str]
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    loss_sum: np.ndarray
    loss_tokens: np.ndarray
    usage: np.ndarray | None = None  # (sequences, layers, experts)


def _token_ids(tokenizer, safe: pd.DataFrame, chat_template_kwargs: dict | None) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and answer token ids of answer rows that carry text only (``prompt``/``messages`` and ``response``)."""
    from steermoe.modeling import render_chat

    prompt_ids, answer_ids = [], []
    for row in safe.to_dict("records"):
        rendered = render_chat(tokenizer, to_messages(row), chat_template_kwargs)
        prompt_ids.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        answer = tokenizer(row["response"] or "", add_special_tokens=False)["input_ids"]
        # Generated answers end with EOS; text answers get it back so both are scored alike.
        answer_ids.append(answer + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
    return prompt_ids, answer_ids


def base_reference(
    base_model, tokenizer, frame: pd.DataFrame, *, batch_size: int = 16, drift: bool = True, chat_template_kwargs: dict | None = None
) -> BaseReference:
    """Measure the base model on its own answers to the safe rows of ``frame`` (``id``, ``label`` and
    either ``prompt_token_ids``/``generated_token_ids`` as :func:`evaluate_model` writes them, or
    ``prompt``/``messages`` with ``response`` text, which is tokenised here)."""
    safe = frame[frame["label"] == "safe"]
    if "generated_token_ids" in safe.columns:
        prompt_ids = [list(x) for x in safe["prompt_token_ids"]]
        answer_ids = [list(x) for x in safe["generated_token_ids"]]
    else:
        if "response" not in safe.columns:
            raise InputError("base answers: need generated_token_ids or a response column")
        prompt_ids, answer_ids = _token_ids(tokenizer, safe, chat_template_kwargs)
    runner, ids = _runner(base_model, tokenizer), safe["id"].astype(str).tolist()
    sums, counts = runner.answer_losses(prompt_ids, answer_ids, batch_size, ids)
    usage = runner.expert_usage(prompt_ids, answer_ids, batch_size, ids) if drift else None
    return BaseReference(ids, prompt_ids, answer_ids, sums, counts, usage)


def _generate_frame(
    model, tokenizer, prompts_df: pd.DataFrame, generation: GenerationSettings, progress, answer=None, engine: str = "generate"
) -> pd.DataFrame:
    from steermoe.modeling import generate

    records = prompts_df.to_dict("records")
    conversations = [to_messages(r) for r in records]
    if answer is not None:  # another engine answers (e.g. vLLM, steermoe.evaluation.vllm_generation)
        out = answer(conversations, generation.chat_template_kwargs)
    else:
        out = generate(model, tokenizer, conversations, generation, progress=progress, engine=engine)
    return pd.DataFrame(
        {
            "id": [str(r["id"]) for r in records],
            "label": [r.get("label") for r in records],
            "category": [r.get("category") for r in records],
            "source": [r.get("source") for r in records],  # names the benchmark a row comes from
            "prompt": [user_text(r) for r in records],
            "response": out.texts,
            "prompt_token_ids": out.prompt_token_ids,
            "generated_token_ids": out.generated_token_ids,
        }
    )


@dataclass
class LoadedModel:
    """What evaluation runs on a model, on one loaded here. :mod:`steermoe.evaluation.distributed` has the
    same three methods spread over Ray workers; :func:`evaluate_model` takes either."""

    model: Any
    tokenizer: Any
    answer: Callable | None = None  # generates the answers instead of model.generate (ModelEntry.answer)
    engine: str = "generate"  # without ``answer``: HF "generate", or the "static" decoder (CUDA graphs on GPU)

    def generate_frame(self, prompts_df: pd.DataFrame, generation: GenerationSettings, progress=True) -> pd.DataFrame:
        return _generate_frame(self.model, self.tokenizer, prompts_df, generation, progress, self.answer, self.engine)

    def answer_losses(self, prompt_ids, answer_ids, batch_size: int, ids=None) -> tuple[np.ndarray, np.ndarray]:
        return answer_losses(self.model, self.tokenizer, prompt_ids, answer_ids, batch_size)

    def expert_usage(self, prompt_ids, answer_ids, batch_size: int, ids=None) -> np.ndarray:
        return expert_usage(self.model, self.tokenizer, prompt_ids, answer_ids, batch_size)


def _runner(model, tokenizer):
    return model if hasattr(model, "generate_frame") else LoadedModel(model, tokenizer)


def evaluate_model(
    model,
    tokenizer,
    prompts_df: pd.DataFrame,
    judges: Sequence[Judge | str],
    *,
    generation: GenerationSettings = GenerationSettings(),
    scoring: ScoreOptions = ScoreOptions(),
    name: str = "model",
    reference: BaseReference | None = None,
    drift: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Generate answers to every prompt as ``generation`` says, judge them, and measure utility and routing
    drift (intervals as ``scoring`` says).

    Utility compares the loss of the base model's benign answers under ``model`` with their loss under the
    base: ``reference`` holds those (:func:`base_reference`, or an earlier result's ``reference``); without
    one, ``model`` is its own base (delta and drift 0) and the result carries the reference it measured.
    """
    judges = resolve_judges(judges)
    runner = _runner(model, tokenizer)
    frame = runner.generate_frame(prompts_df, generation, progress)
    own_base = reference is None
    if own_base:
        reference = base_reference(
            runner, tokenizer, frame, batch_size=generation.batch_size, drift=drift, chat_template_kwargs=generation.chat_template_kwargs
        )
    batch_size, drift_value, per_layer = generation.batch_size, None, None
    if reference.ids:
        # Its own base: the reference pass already measured this model.
        sums, counts = (reference.loss_sum, reference.loss_tokens) if own_base else runner.answer_losses(
            reference.prompt_ids, reference.answer_ids, batch_size, reference.ids
        )
        losses = pd.DataFrame({"id": reference.ids, "loss_sum": sums, "loss_tokens": counts, "base_loss_sum": reference.loss_sum})
        frame = frame.merge(losses, on="id", how="left")
        if drift and reference.usage is not None:
            usage = reference.usage if own_base else runner.expert_usage(reference.prompt_ids, reference.answer_ids, batch_size, reference.ids)
            drift_value, per_layer = routing_drift(reference.usage, usage, scoring.samples, scoring.confidence, scoring.seed)
    result = evaluate_responses(frame, judges, name=name, bootstrap_samples=scoring.samples, confidence=scoring.confidence, seed=scoring.seed)
    if drift_value is not None:
        result.metrics["routing_drift"] = drift_value
        result.drift_per_layer = [float(x) for x in per_layer]
    if own_base:
        result.reference = reference
    return result


# --- comparison -----------------------------------------------------------------------------------


@dataclass
class ModelEntry:
    """How to get one model to compare: ``load() -> (model, tokenizer)``, optionally steered."""

    load: Callable[[], tuple[Any, Any]]
    steering: ExpertSelection | None = None
    epsilon: float = 1e-2  # SteerMoE's margin above the max / below the min log-probability
    training: dict | None = None  # fine-tuning metrics of this model (trainable_params, optimizer_state_bytes, step_seconds)
    # Generates the answers instead of model.generate: ``answer(conversations, chat_template_kwargs) -> GenerationOutput``
    # (vLLM: steermoe.evaluation.vllm_generation.vllm_answer_fn). Losses and drift still run on the loaded model.
    answer: Callable | None = None
    engine: str = "generate"  # without ``answer``: how the loaded model answers (see LoadedModel.engine)


@dataclass
class ComparisonResult:
    results: dict[str, EvalResult]
    table: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)
    benchmarks: dict[str, BenchmarkTable] = field(default_factory=dict)  # one per benchmark among the prompts


def _as_entry(entry) -> ModelEntry:
    return entry if isinstance(entry, ModelEntry) else ModelEntry(load=entry)


@contextmanager
def open_loaded_model(name: str, entry: ModelEntry) -> Iterator[LoadedModel]:
    """The entry's model loaded in this process (steered while open, when the entry says so); its memory is
    returned when it closes, so at MoE scale the next entry's model finds the device free."""
    from steermoe.modeling import release_memory
    from steermoe.steering import steer

    model, tokenizer = entry.load()
    loaded = LoadedModel(model, tokenizer, None if entry.steering else entry.answer, entry.engine)  # steering hooks the HF model
    try:
        with steer(model, entry.steering, entry.epsilon) if entry.steering else nullcontext():
            yield loaded
    finally:
        # The caller's name for ``loaded`` outlives this block (until the next entry is open): drop the model
        # from it, or two 61 GB models would share the device while the next one loads.
        loaded.model = model = None
        release_memory()


def compare_models(
    entries: Mapping[str, ModelEntry | Callable[[], tuple[Any, Any]]],
    prompts: pd.DataFrame,
    judges: Sequence[Judge | str],
    out_dir: str | Path,
    *,
    generation: GenerationSettings = GenerationSettings(),
    scoring: ScoreOptions = ScoreOptions(),
    base: str = "base",
    drift: bool = True,
    progress: bool = True,
    open_model: Callable[[str, ModelEntry], Any] | None = None,
) -> ComparisonResult:
    """Evaluate every entry on the same prompts and judges (names, or instances made with
    :func:`resolve_judges` and :func:`judge_options`); ``base`` is evaluated first and is the reference for
    utility and drift. Writes ``comparison.md``, ``comparison.json``, ``comparison.png`` and
    ``responses/<name>.jsonl`` under ``out_dir``.

    ``open_model(name, entry)`` is a context manager giving what runs the entry's model (default:
    :func:`open_loaded_model`, loaded here; :mod:`steermoe.evaluation.distributed` spreads it over Ray)."""
    if base not in entries:
        raise InputError(f"compare: no entry named {base!r} to use as the base; entries: {sorted(entries)}")
    judges = resolve_judges(judges)
    out_dir = Path(out_dir)
    (out_dir / "responses").mkdir(parents=True, exist_ok=True)
    opts = dict(generation=generation, scoring=scoring, progress=progress, drift=drift)
    open_model = open_model or open_loaded_model
    results: dict[str, EvalResult] = {}
    reference = None  # the base's, once it is measured
    for name in [base, *(n for n in entries if n != base)]:
        entry = _as_entry(entries[name])
        with open_model(name, entry) as runner:
            results[name] = evaluate_model(runner, None, prompts, judges, name=name, reference=reference, **opts)
        results[name].training = entry.training
        reference = results[base].reference
        if name != base:
            failpoint("evaluate.model_done")
    benchmarks = score_benchmarks(results, judges, scoring)
    table = comparison_table(results)
    paths = write_comparison(results, table, out_dir, benchmarks)
    return ComparisonResult(results, table, paths, benchmarks)


def comparison_table(results: Mapping[str, EvalResult]) -> pd.DataFrame:
    """One row per model; for each metric its value and CI bounds (``<metric>``, ``_low``, ``_high``),
    then what its training cost (``TRAINING_COLUMNS``; empty for models that were not trained)."""
    rows = []
    for name, result in results.items():
        row: dict[str, Any] = {"model": name, "judge": result.judge, **metric_columns(result.metrics, TABLE_METRICS)}
        for column in TRAINING_COLUMNS:
            value = (result.training or {}).get(column)
            row[column] = float(value) if isinstance(value, (int, float)) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _training_cell(column: str, value: float) -> str:
    if pd.isna(value):
        return "-"
    if column == "optimizer_state_bytes":
        return f"{value / 2**20:.2f} MiB"
    if column == "step_seconds":
        return f"{value:.3f} s"
    return f"{int(value):,}"


def _markdown(table: pd.DataFrame, results: Mapping[str, EvalResult]) -> str:
    shown = [m for m in TABLE_METRICS if table[m].notna().any()]
    costs = [c for c in TRAINING_COLUMNS if c in table.columns and table[c].notna().any()]
    lines = ["| model | " + " | ".join(shown + costs) + " |", "|---|" + "---|" * len(shown + costs)]
    for _, row in table.iterrows():
        cells = [f"{row[m]:.3f} [{row[f'{m}_low']:.3f}, {row[f'{m}_high']:.3f}]" if pd.notna(row[m]) else "n/a" for m in shown]
        cells += [_training_cell(c, row[c]) for c in costs]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    lines.append("")
    lines.append(f"Refusals judged by `{first.judge}`; brackets: bootstrap confidence intervals. Lower is better except refusal_rate.")
    return "\n".join(lines) + "\n"


def write_comparison(
    results: Mapping[str, EvalResult], table: pd.DataFrame, out_dir: Path, benchmarks: Mapping[str, BenchmarkTable] | None = None
) -> dict[str, Path]:
    """Write the table (Markdown, JSON), the chart (PNG) and per-model responses; each benchmark among
    the prompts adds its own table to both and its own chart (``comparison-<benchmark>.png``)."""
    benchmarks = benchmarks or {}
    paths = {"markdown": out_dir / "comparison.md", "json": out_dir / "comparison.json", "png": out_dir / "comparison.png"}
    paths.update({f"png:{name}": out_dir / f"comparison-{name}.png" for name in benchmarks})
    sections = "".join("\n" + b.markdown() for b in benchmarks.values())
    paths["markdown"].write_text(_markdown(table, results) + sections, encoding="utf-8")
    payload = {
        "models": {name: r.to_dict() for name, r in results.items()},
        "table": json.loads(table.to_json(orient="records")),
        "benchmarks": {name: b.to_dict() for name, b in benchmarks.items()},
    }
    paths["json"].write_text(json.dumps(payload, indent=2), encoding="utf-8")
    for name, bench in benchmarks.items():
        bench.chart(paths[f"png:{name}"])
    for name, result in results.items():
        keep = [c for c in result.responses.columns if c not in ("prompt_token_ids", "generated_token_ids")]
        result.responses[keep].to_json(out_dir / "responses" / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)
    _chart(table, paths["png"])
    return paths


def _chart(table: pd.DataFrame, path: Path) -> None:
    from steermoe.plots import metric_bars

    metric_bars(table, [m for m in TABLE_METRICS if table[m].notna().any()], path)
