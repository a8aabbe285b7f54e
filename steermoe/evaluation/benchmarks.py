"""Adapters for published safety benchmarks: their file layouts mapped onto our prompt records.

Each adapter names the benchmark's own columns (as published) and turns a local file or a Hugging
Face dataset into the canonical prompt table of :mod:`steermoe.prompts` (``id, prompt, messages,
label, category, source, split``). Files are read with the readers of :mod:`steermoe.prompts`, so
JSONL/CSV/Parquet files, saved datasets and hub names (or folders laid out like a hub repo) all work.

- XSTest (Röttger et al. 2024; ``xstest_prompts.csv``): ``id, prompt, type, label, focus, note``;
  ``label`` is safe/unsafe. Safe XSTest prompts are exaggerated-safety probes, so by default they get
  our ``borderline`` category (what over-refusal on borderline prompts measures); unsafe ones keep
  their ``type`` (``contrast_*``).
- AdvBench (Zou et al. 2023; ``harmful_behaviors.csv``): ``goal, target``; all unsafe.
- HarmBench (Mazeika et al. 2024; behaviours CSV): ``Behavior, FunctionalCategory, SemanticCategory,
  Tags, ContextString, BehaviorID``; all unsafe; contextual behaviours get their context prepended
  the way HarmBench formats them.
- StrongREJECT (Souly et al. 2024; ``strongreject_dataset.csv``): ``category, source, forbidden_prompt``.
- JailbreakBench JBB-Behaviors (Chao et al. 2024): ``Index, Goal, Target, Behavior, Category, Source``;
  the ``harmful`` split (or file) is unsafe, the ``benign`` one safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from steermoe import prompts as _prompts
from steermoe.errors import InputError
from steermoe.evaluation.benchmark_scores import Scorer, attack_success_scores, strongreject_scores, xstest_scores
from steermoe.prompts import PROMPT_COLUMNS, PromptSource
from steermoe.registry import Registry

__all__ = ["Benchmark", "BENCHMARKS", "load_benchmark"]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's published columns and how they map onto ours; ``finish`` adjusts the loaded table."""

    name: str
    columns: dict[str, str]  # our field -> their column
    required: tuple[str, ...]  # their columns that must be present
    label: str | None = None
    category: str | None = None  # for benchmarks without a category column
    finish: Callable[[pd.DataFrame, pd.DataFrame, dict], pd.DataFrame] | None = None
    score: Scorer | None = None  # the benchmark's own score on judged rows (steermoe.evaluation.benchmark_scores)
    hf_config: str | None = None  # the configuration of the project's Hugging Face dataset repo, when it has several
    note: str = ""  # how our scoring relates to the benchmark's published protocol (shown under its table)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def _xstest_finish(out: pd.DataFrame, raw: pd.DataFrame, options: dict) -> pd.DataFrame:
    labels = out["label"].astype(str).str.strip().str.lower()
    bad = sorted(set(labels) - {"safe", "unsafe"})
    if bad:
        raise InputError(f"XSTest: label values {bad} are not safe/unsafe; is this the published xstest_prompts.csv?")
    out["label"] = labels.tolist()
    if options.get("safe_as_borderline", True):
        out["category"] = ["borderline" if lab == "safe" else cat for lab, cat in zip(out["label"], out["category"])]
    return out


def _harmbench_finish(out: pd.DataFrame, raw: pd.DataFrame, options: dict) -> pd.DataFrame:
    if "ContextString" in raw.columns:
        contexts = raw["ContextString"].tolist()
        out["prompt"] = [f"{c}\n\n---\n\n{p}" if isinstance(c, str) and c.strip() else p for c, p in zip(contexts, out["prompt"])]
    return out


def _jbb_finish(out: pd.DataFrame, raw: pd.DataFrame, options: dict) -> pd.DataFrame:
    split = (options.get("hf_split") or "") + " " + Path(str(options.get("path", ""))).stem
    label = options.get("label") or ("safe" if "benign" in split.lower() else "unsafe")
    out["label"] = [label] * len(out)
    # Harmful and benign JBB files share their Index values; keep ids unique when both are loaded.
    out["id"] = [f"{'benign' if label == 'safe' else 'harmful'}-{i}" for i in out["id"]]
    return out


_BY_CATEGORY = partial(attack_success_scores, by_category=True)

BENCHMARKS.register(
    "xstest",
    Benchmark(
        "xstest", {"id": "id", "prompt": "prompt", "label": "label", "category": "type"}, ("prompt", "type", "label"), finish=_xstest_finish,
        score=xstest_scores, note="Binary judges (string match) see no partial refusals; the LLM judge classifies with XSTest's three classes.",
    ),
)
BENCHMARKS.register(
    "advbench",
    Benchmark("advbench", {"prompt": "goal"}, ("goal",), label="unsafe", category="advbench", score=attack_success_scores,
              note="Attack success: the share of behaviours the model complied with (no adversarial suffix)."),
)
BENCHMARKS.register(
    "harmbench",
    Benchmark(
        "harmbench", {"id": "BehaviorID", "prompt": "Behavior", "category": "SemanticCategory"}, ("Behavior", "SemanticCategory"), label="unsafe",
        finish=_harmbench_finish, score=_BY_CATEGORY,
        note="Attack success of the direct request; compliance is decided by the configured judges, not HarmBench's own classifier.",
    ),
)
BENCHMARKS.register(
    "strongreject",
    Benchmark("strongreject", {"prompt": "forbidden_prompt", "category": "category"}, ("forbidden_prompt", "category"), label="unsafe",
              score=strongreject_scores, note="score: StrongREJECT's rubric (refused, convincing, specific) graded by the LLM judge; lower is safer."),
)
BENCHMARKS.register(
    "jailbreakbench",
    Benchmark("jailbreakbench", {"id": "Index", "prompt": "Goal", "category": "Category"}, ("Goal", "Category"), finish=_jbb_finish,
              score=_BY_CATEGORY, hf_config="behaviors", note="asr on the harmful behaviours, refusal_rate_benign on the benign ones, overall and per category."),
)


def load_benchmark(
    name: str,
    path: str | Path,
    *,
    split: str = "eval",
    hf_split: str | None = None,
    label: str | None = None,
    format: str | None = None,
    safe_as_borderline: bool = True,
) -> pd.DataFrame:
    """Read a benchmark file (or HF dataset name/folder) into canonical prompt records.

    ``split`` is our train/eval split for every row (benchmarks are for evaluation); ``label``
    overrides the benchmark's own (JailbreakBench picks safe/unsafe from the split or file name).
    Ids are prefixed with the benchmark name so several benchmarks can be combined.
    """
    bench = BENCHMARKS.get(name)
    # Read without mapping first so a wrong file fails with the benchmark's column names.
    raw = _raw_frame(PromptSource(path=str(path), format=format, hf_split=hf_split), bench.hf_config)
    missing = [c for c in bench.required if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: not a {name} file: missing columns {missing} (it has {list(raw.columns)})")
    columns = {ours: theirs for ours, theirs in bench.columns.items() if theirs in raw.columns}
    source = PromptSource(
        path=str(path), format=format, columns=columns, label=label or bench.label, category=bench.category, split=split, hf_split=hf_split
    )
    out = _prompts._normalise(raw, source, str(path))  # the frame already read: a hub dataset is fetched once
    if "id" not in columns:
        out["id"] = [str(i) for i in range(len(out))]  # position in the published file
    out["source"] = [name] * len(out)
    options = {"safe_as_borderline": safe_as_borderline, "hf_split": hf_split, "path": path, "label": label}
    if bench.finish is not None:
        out = bench.finish(out, raw, options)
    if label is not None:
        out["label"] = [label] * len(out)
    out["id"] = [f"{name}-{i}" for i in out["id"]]
    out["split"] = [split] * len(out)
    return out[PROMPT_COLUMNS].astype(object)


def _raw_frame(source: PromptSource, hf_config: str | None) -> pd.DataFrame:
    """The file's own columns (object dtype), read with the same readers as prompt files; a dataset
    repo (hub name, or a folder laid out like one) is read in the benchmark's ``hf_config``."""
    path = Path(source.path)
    fmt = _prompts._format_of(path, source.format) if path.exists() or source.format else None
    if fmt is None:
        looks_like_hub_name = "/" in source.path and not source.path.startswith((".", "/")) and path.suffix == ""
        if not looks_like_hub_name:
            raise InputError(f"{path}: no such file (nor a Hugging Face dataset name like org/name)")
        fmt = "hf"
    if fmt == "hf":
        return _prompts._read_hf(source.path, source.hf_split, hf_config)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    reader = {"jsonl": _prompts._read_jsonl, "csv": _prompts._read_csv, "parquet": _prompts._read_parquet}[fmt]
    return reader(path)
