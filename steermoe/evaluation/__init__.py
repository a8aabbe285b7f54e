"""Stage 6, evaluation: refusal judges, metrics with bootstrap CIs, benchmark adapters and model comparison.

Steering lives in :mod:`steermoe.steering` (it is a model edit, not a measurement).
"""

from steermoe.evaluation.benchmarks import BENCHMARKS, Benchmark, load_benchmark
from steermoe.evaluation.comparison import (
    BaseReference,
    ComparisonResult,
    EvalResult,
    ModelEntry,
    base_reference,
    compare_models,
    comparison_table,
    evaluate_model,
    evaluate_responses,
    judge_options,
    resolve_judges,
)
from steermoe.evaluation.embedding_judge import EmbeddingJudge
from steermoe.evaluation.judges import JUDGES, Judge, StringMatchJudge, Verdict, make_judge
from steermoe.evaluation.llm_judge import LLMJudge, parse_rubric_reply
from steermoe.evaluation.metrics import (
    METRICS,
    Metric,
    MetricValue,
    agreement,
    bootstrap_ci,
    cohen_kappa,
    compute_metrics,
    routing_drift,
)

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "load_benchmark",
    "BaseReference",
    "ComparisonResult",
    "EvalResult",
    "ModelEntry",
    "base_reference",
    "compare_models",
    "comparison_table",
    "evaluate_model",
    "evaluate_responses",
    "resolve_judges",
    "judge_options",
    "JUDGES",
    "Judge",
    "Verdict",
    "StringMatchJudge",
    "EmbeddingJudge",
    "LLMJudge",
    "make_judge",
    "parse_rubric_reply",
    "METRICS",
    "Metric",
    "MetricValue",
    "agreement",
    "bootstrap_ci",
    "cohen_kappa",
    "compute_metrics",
    "routing_drift",
]
