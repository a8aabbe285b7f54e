"""The pipeline's stages as plain functions: config section + input paths in, files + a small record out.

Each ``*_stage`` function reads its inputs from disk, writes its outputs under ``out_dir`` and returns a
JSON-able record (paths, fingerprints, counts, metrics). Nothing here knows about Prefect; MLflow is
reached only through :mod:`steermoe.tracking` (registration). ``steermoe run`` calls these through
the Prefect tasks in ``tasks/``, which add caching; a notebook can call them directly.

The facts about each stage (config keys read, inputs, outputs) are its entry in
:mod:`steermoe.stage_specs`; its code version is computed from the modules its function reaches.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from steermoe.errors import ConfigError, InputError, ValidationFailed

__all__ = [
    "load_prompt_set",
    "prompt_set_fingerprint",
    "read_prompt_snapshot",
    "prepare_model_stage",
    "validate_prompts_stage",
    "collect_routing_stage",
    "collect_with_backend",
    "risk_difference_stage",
    "select_experts_stage",
    "finetune_stage",
    "evaluate_stage",
    "evaluate_entries",
    "model_entry",
    "register_stage",
    "CANDIDATE",
    "promote_stage",
    "retrain_check_stage",
]

def __getattr__(name: str):
    # The stage list lives in :mod:`steermoe.stage_specs` (which imports this module).
    if name == "STAGES":
        from steermoe.stage_specs import STAGES

        return STAGES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def code_version(stage: str) -> str:
    """The code version of ``stage`` (see :func:`steermoe.code_version.code_version`)."""
    from steermoe.stage_specs import spec

    return spec(stage).code_version()


def _write_json(data: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- prompts


def load_prompt_set(prompts_cfg):
    """The prompt table a ``PromptsConfig`` names (the built-in demo sets, or its sources concatenated;
    a ``demo`` item in the list stands for the built-in sets)."""
    import pandas as pd

    from steermoe.prompts import PromptSource, load_prompts

    sources = ["demo"] if prompts_cfg.sources == "demo" else prompts_cfg.sources
    frames = [_demo_prompts() if s == "demo" else load_prompts(PromptSource(**s.model_dump())) for s in sources]
    if not frames:
        from steermoe.errors import InputError

        raise InputError("prompts.sources: no prompt sources given; name files or 'demo'")
    return pd.concat(frames, ignore_index=True)


def _demo_prompts():
    from steermoe.demo import load_demo_prompts

    return load_demo_prompts()


def prompt_set_fingerprint(prompts_cfg) -> str:
    """Content fingerprint of the prompt set a config names (cheap: reads the files, no validation)."""
    from steermoe.prompts import fingerprint

    return fingerprint(load_prompt_set(prompts_cfg))


def read_prompt_snapshot(path: str | Path, split: str = "all"):
    """The validated prompt snapshot written by :func:`validate_prompts_stage`, optionally one split."""
    from steermoe.prompts import load_prompts, select_split

    return select_split(load_prompts(path), split)


def validate_prompts_stage(prompts_cfg, out_dir: str | Path) -> dict:
    """Load and validate the prompt set; write ``validation_report.json`` always and ``prompts.jsonl``
    (the snapshot later stages read) only when it passes. Raises :class:`ValidationFailed` otherwise."""
    from steermoe.validation import validate_prompts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompt_set(prompts_cfg)
    v = prompts_cfg.validation
    report = validate_prompts(
        prompts, min_chars=v.min_chars, max_chars=v.max_chars, min_per_label=v.min_per_label, imbalance_warning_ratio=v.imbalance_warning_ratio
    )
    report_path = out / "validation_report.json"
    report.to_json(report_path)
    if not report.success:
        raise ValidationFailed(f"{report.summary()}; every failing row is in {report_path}", report=report)
    snapshot = out / "prompts.jsonl"
    tmp = snapshot.with_name(".prompts.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in prompts.to_dict("records"):
            f.write(json.dumps({k: row.get(k) for k in prompts.columns}, ensure_ascii=False) + "\n")
    os.replace(tmp, snapshot)
    return {
        "prompts_path": str(snapshot),
        "report_path": str(report_path),
        "fingerprint": report.fingerprint,
        "rows": report.rows,
        "counts": report.counts,
        "splits": {str(k): int(n) for k, n in prompts["split"].fillna("none").value_counts().items()},
        "warnings": [f.detail for f in report.warnings],
    }


# ---------------------------------------------------------------- model


def prepare_model_stage(model_cfg, cache_dir: str | Path | None = None) -> dict:
    """Resolve (and for the demo, build once) the base model; record its fingerprint and shape."""
    from steermoe.modeling import model_fingerprint, resolve_model_path

    path = Path(resolve_model_path(model_cfg, cache_dir)).resolve()  # absolute: records outlive the working dir
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return {
        "model_path": str(path),
        "fingerprint": model_fingerprint(path),
        "model_type": config.get("model_type"),
        "num_layers": config.get("num_hidden_layers"),
    }


# ---------------------------------------------------------------- routing and analysis


def collect_routing_stage(cfg, model_path: str, prompts_path: str, out_dir: str | Path) -> dict:
    """Answer the routing split's prompts with the base model while recording every router's choices."""
    from steermoe.modeling import release_memory

    prompts = read_prompt_snapshot(prompts_path, cfg.routing.split)
    store = collect_with_backend(cfg, model_path, prompts, Path(out_dir) / "store")
    release_memory()  # the model is gone: give its device memory back before the next stage
    counts = store.manifest.get("counts", {})
    return {"store_path": str(store.path), **{k: int(v) for k, v in counts.items()}}


def collect_with_backend(cfg, model_path: str | Path, prompts, out_dir: str | Path, progress: bool = True):
    """Routing collection with the engine ``routing.backend`` names: 'hf', 'hf_static' or 'vllm' (same store format)."""
    from steermoe.generation import GenerationSettings
    from steermoe.routing import collect_routing
    from steermoe.routing.collect import RoutingSettings

    settings = dict(generation=GenerationSettings.from_config(cfg.generation), routing=RoutingSettings.from_config(cfg.routing), progress=progress)
    backend = cfg.routing.backend
    if cfg.execution.uses_ray("routing"):
        if backend == "vllm":
            raise ConfigError("execution.executor: 'ray' runs routing.backend 'hf' or 'hf_static'; vLLM spreads over GPUs itself: use executor 'local'")
        from steermoe.routing.distributed import collect_routing_on_ray

        return collect_routing_on_ray(cfg.execution, cfg.model, model_path, prompts, out_dir, **settings)
    if backend == "vllm":
        from steermoe.routing.vllm_backend import collect_routing_vllm

        return collect_routing_vllm(model_path, prompts, out_dir, model=cfg.model, **settings)
    from steermoe.modeling import load_pretrained

    model, tokenizer = load_pretrained(cfg.model, model_path)
    return collect_routing(model, tokenizer, prompts, out_dir, **settings)


def risk_difference_stage(analysis_cfg, store_path: str, out_dir: str | Path) -> dict:
    """Per-(layer, expert) risk difference with statistics: Parquet + CSV table, heatmap and top-experts chart."""
    from steermoe.analysis import risk_difference
    from steermoe.files import atomic_path
    from steermoe.plots import save_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a = analysis_cfg
    table = risk_difference(
        store_path,
        segment=a.segment,
        weighting=a.weighting,
        sequence_filter="behaviour" if a.behaviour_filter else None,
        confidence=a.confidence,
        progress=False,
    )
    table_path, csv_path = out / "risk_table.parquet", out / "risk_table.csv"
    table.attrs = {}  # run facts are not Parquet metadata material
    with atomic_path(table_path) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    plots = save_plots(table, out)
    top = table.sort_values("risk_diff", ascending=False).head(1)
    return {
        "table_path": str(table_path),
        "csv_path": str(csv_path),
        "heatmap_path": str(plots["heatmap"]),
        "chart_path": str(plots["top"]),
        "rows": len(table),
        "max_risk_diff": float(top["risk_diff"].iloc[0]) if len(top) else 0.0,
    }


def select_experts_stage(selection_cfg, table_path: str, out_dir: str | Path) -> dict:
    """Choose experts from the risk table with the configured strategy; write ``selection.json``."""
    import pandas as pd

    from steermoe.selection import select_from_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selection = select_from_config(pd.read_parquet(table_path), selection_cfg)
    path = out / "selection.json"
    selection.to_json(path)
    return {"selection_path": str(path), "strategy": selection.strategy, "n_experts": len(selection), "experts": [list(x) for x in selection.experts]}


# ---------------------------------------------------------------- fine-tuning, evaluation, registration


def _base_answers(cfg, model_path: str, safe, store_path: str | None) -> list[str]:
    """The base model's greedy answers to the safe training prompts: reused from the routing store when it
    answered them the same way (greedy, the same token budget and chat options: the same answers of the same
    model), else generated."""
    from steermoe.generation import GenerationSettings
    from steermoe.routing import RoutingStore

    g = cfg.generation  # greedy: the answers benign training preserves are the model's most likely ones
    greedy = GenerationSettings(max_new_tokens=cfg.finetune.answer_max_new_tokens, batch_size=g.batch_size, chat_template_kwargs=g.chat_template_kwargs)
    ids = safe["id"].astype(str).tolist()
    answered = RoutingStore(store_path).manifest.get("generation", {}) if store_path is not None else {}
    alike = ("max_new_tokens", "do_sample", "chat_template_kwargs")
    if answered and all(answered.get(k) == getattr(greedy, k) for k in alike):
        seqs = RoutingStore(store_path).sequences()
        known = dict(zip(seqs["prompt_id"].astype(str), seqs["generated_text"]))
        if all(i in known for i in ids):
            return [known[i] for i in ids]
    from steermoe.finetune import base_model_answers
    from steermoe.modeling import load_pretrained, release_memory
    from steermoe.prompts import to_messages

    model, tokenizer = load_pretrained(cfg.model, model_path)
    answers = base_model_answers(model, tokenizer, [to_messages(r) for r in safe.to_dict("records")], greedy)
    del model
    release_memory()
    return answers


def finetune_stage(cfg, model_path: str, prompts_path: str, store_path: str | None, selection_path: str, out_dir: str | Path) -> dict:
    """Fine-tune only the selected experts (and the configured baselines, same data and budget) on
    refusals for unsafe prompts and the base model's own answers for safe ones; write the patch(es) and
    the training curve (``history.json``, one point per optimizer step)."""
    from steermoe.finetune import FinetuneRun, build_training_examples, finetune_runs, random_like, refusals_from_endpoint
    from steermoe.modeling import load_pretrained
    from steermoe.prompts import to_messages
    from steermoe.selection import ExpertSelection

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ft = cfg.finetune
    prompts = read_prompt_snapshot(prompts_path, "train")
    unsafe = [to_messages(r) for r in prompts[prompts["label"] == "unsafe"].to_dict("records")]
    safe = prompts[prompts["label"] == "safe"]
    answers = _base_answers(cfg, model_path, safe, store_path)
    refusals = refusals_from_endpoint(ft.refusal_endpoint, ft.refusal_endpoint_model, unsafe) if ft.refusal_endpoint else None
    tokenizer = load_pretrained(cfg.model, model_path, weights=False).tokenizer
    examples = build_training_examples(
        tokenizer, unsafe, [to_messages(r) for r in safe.to_dict("records")], answers, ft, refusals=refusals, chat_template_kwargs=cfg.generation.chat_template_kwargs
    )
    selection = ExpertSelection.from_json(selection_path)

    history: list[dict] = []
    runs = [FinetuneRun("selective", selection, out / "selected", callback=lambda step, m: history.append({"step": step, **m}))]
    for name in ft.baselines:
        if name == "random":
            runs.append(FinetuneRun("random", random_like(model_path, selection, ft, cfg.model), out / "random"))
        elif name == "full":
            runs.append(FinetuneRun("full", None, out / "full"))
    results = finetune_runs(model_path, runs, examples, ft, concurrent=ft.concurrent_baselines, model=cfg.model)
    result = results[0]
    _write_json(history, out / "history.json")
    record = {"patch_path": str(result.patch_path), "history_path": str(out / "history.json"), "metrics": _numeric(result.metrics), "baselines": {}}
    for base in results[1:]:
        if base.mode == "random":
            record["baselines"]["random"] = {"patch_path": str(base.patch_path), "metrics": _numeric(base.metrics)}
        else:
            record["baselines"]["full"] = {"merged_path": str(base.merged_path), "metrics": _numeric(base.metrics)}
    return record


def _numeric(metrics: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


CANDIDATE = "finetuned"  # the comparison row of the model a run registers


def evaluate_stage(cfg, model_path: str, prompts_path: str, selection_path: str, finetune: dict, out_dir: str | Path) -> dict:
    """Evaluate base, steered, fine-tuned and the baselines on the same prompts and judges; write the
    comparison table and every response. ``metrics[model][metric]`` holds the numbers."""
    from steermoe.evaluation import ModelEntry
    from steermoe.selection import ExpertSelection

    ev, m = cfg.evaluation, cfg.model
    if ev.backend == "vllm" and cfg.execution.uses_ray("evaluation"):
        raise InputError(
            "evaluation.backend: vllm answers in this process (vLLM spreads over GPUs itself); drop 'evaluation' from "
            "execution.stages, or set evaluation.backend: hf"
        )
    prompts = read_prompt_snapshot(prompts_path, ev.split)
    answer_for = None  # evaluation.backend vllm: vLLM answers (patched models from a merged folder), HF scores
    if ev.backend == "vllm":
        from steermoe.evaluation.vllm_generation import stage_answer_fns

        answer_for = stage_answer_fns(cfg, model_path, Path(out_dir) / "merged")

    engine = "static" if ev.backend == "hf_static" else "generate"  # hf_static: the routing stage's decoder (CUDA graphs on GPU)

    def entry(name: str, weights=None, patch=None, training=None):
        answer = answer_for(weights or model_path, patch, name) if answer_for else None
        return model_entry(m, model_path, weights=weights, patch=patch, training=training, answer=answer, engine=engine)

    base = entry("base")
    entries: dict = {"base": base}
    if ev.steering:
        steering = ExpertSelection.from_json(ev.steering_selection or selection_path)
        entries["steered"] = ModelEntry(load=base.load, steering=steering, epsilon=ev.steering_epsilon, engine=engine)
    entries[CANDIDATE] = entry(CANDIDATE, patch=finetune["patch_path"], training=finetune.get("metrics"))
    baselines = finetune.get("baselines", {})
    if "random" in baselines:
        entries["random"] = entry("random", patch=baselines["random"]["patch_path"], training=baselines["random"].get("metrics"))
    if "full" in baselines:
        full = baselines["full"]
        entries["full"] = entry("full", weights=full["merged_path"], training=full.get("metrics"))
    record, _ = evaluate_entries(cfg, entries, prompts, out_dir)
    return {**record, "outputs_path": str(Path(out_dir) / "responses" / f"{CANDIDATE}.jsonl"), "candidate": CANDIDATE}


def model_entry(
    model_cfg, base_path, *, weights=None, patch=None, training: dict | None = None, tokenizer_path=None, answer=None, engine: str = "generate"
):
    """One model to evaluate: the base folder (or the folder ``weights``), with an expert ``patch``
    applied when given, answering through the base tokenizer unless ``tokenizer_path`` says otherwise
    (a merged folder may have none of its own). Loaded only when its turn comes (here or on a worker);
    ``answer`` replaces HF generation (evaluation.backend vllm); otherwise ``engine`` says how the model answers
    (``"static"``: the static-cache decoder, evaluation.backend hf_static)."""
    from functools import partial

    from steermoe.evaluation import ModelEntry

    load = partial(_load_entry, model_cfg, str(weights or base_path), None if patch is None else str(patch), str(tokenizer_path or base_path))
    return ModelEntry(load, training=training, answer=answer, engine=engine)


def _load_entry(model_cfg, weights_path: str, patch: str | None, tokenizer_path: str):
    from steermoe.modeling import load_pretrained

    if weights_path == tokenizer_path:
        return load_pretrained(model_cfg, weights_path, patch=patch)
    return load_pretrained(model_cfg, weights_path, patch=patch, tokenizer=False).model, load_pretrained(model_cfg, tokenizer_path, weights=False).tokenizer


def evaluate_entries(cfg, entries: dict, prompts, out_dir: str | Path):
    """The evaluation stage's work on any named model entries (the pipeline's, or the CLI's): answer,
    judge, compare; write the table; returns (record, the full comparison result)."""
    from steermoe.evaluation import compare_models, judge_options, resolve_judges
    from steermoe.evaluation.benchmark_scores import ScoreOptions
    from steermoe.generation import GenerationSettings

    ev = cfg.evaluation
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generation = GenerationSettings.for_evaluation(ev, cfg.generation)
    judges = resolve_judges(ev.judges, judge_options(ev))
    with _model_opener(cfg.execution) as open_model:
        result = compare_models(
            entries, prompts, judges, out, generation=generation, scoring=ScoreOptions.from_config(ev),
            drift=ev.routing_drift, open_model=open_model,
        )
    comparison = out / "comparison.csv"
    result.table.to_csv(comparison, index=False)
    metrics = {name: {k: float(v.value) for k, v in r.metrics.items() if v is not None and math.isfinite(v.value)} for name, r in result.results.items()}
    intervals = {name: {k: [float(v.ci_low), float(v.ci_high)] for k, v in r.metrics.items() if v is not None} for name, r in result.results.items()}
    record = {
        "comparison_path": str(comparison),
        "comparison_md_path": str(result.paths["markdown"]),
        "chart_path": str(result.paths["png"]),
        "comparison_json_path": str(result.paths["json"]),
        "benchmarks": sorted(result.benchmarks),
        "metrics": metrics,
        "intervals": intervals,
        "eval_set": _eval_set(cfg, prompts),
        "model_load": cfg.model.model_dump(mode="json", include={"dtype", "attn_implementation", "trust_remote_code"}),
        "generation": {k: v for k, v in generation.as_dict().items() if k in ("max_new_tokens", "batch_size", "chat_template_kwargs")},
        "n_prompts": len(prompts),
    }
    return record, result


def _model_opener(execution_cfg):
    """Where evaluation runs its models: Ray workers (``execution``), or ``None``: loaded here."""
    from contextlib import nullcontext

    if not execution_cfg.uses_ray("evaluation"):
        return nullcontext(None)
    from steermoe.evaluation.distributed import ray_model_opener

    return ray_model_opener(execution_cfg)


def _eval_set(cfg, prompts) -> dict:
    """What the evaluation was measured on: the prompts' fingerprint and the settings that shape answers."""
    from steermoe.promotion import evaluation_settings
    from steermoe.prompts import fingerprint

    return {"fingerprint": fingerprint(prompts), "settings": evaluation_settings(cfg.evaluation, cfg.generation)}


def register_stage(tracking_cfg, run: dict, model: dict, prompts: dict, selection: dict, finetune: dict, evaluation: dict) -> dict:
    """Register the fine-tuned expert patch as a new model version (alias ``challenger``)."""
    from steermoe.tracking import register_candidate

    return register_candidate(tracking_cfg, run=run, model=model, prompts=prompts, selection=selection, finetune=finetune, evaluation=evaluation)


# ---------------------------------------------------------------- promotion and retraining


def promote_stage(cfg, candidate: str = "challenger") -> dict:
    """Head-to-head promotion of ``candidate`` (a version number or alias) against the champion on the
    current evaluation set; see :func:`steermoe.promotion.promote`."""
    from steermoe.promotion import promote

    return promote(cfg, candidate)


def retrain_check_stage(prompts_cfg, tracking_cfg, cache_dir: str | Path) -> dict:
    """Compare today's prompt-set fingerprint with the one recorded on the ``champion`` version."""
    from steermoe import tracking

    fp = prompt_set_fingerprint(prompts_cfg)
    uri = tracking.resolve_tracking_uri(tracking_cfg, cache_dir)
    champ = tracking.get_version(uri, tracking_cfg.registered_model, tracking.CHAMPION)
    recorded = champ["tags"].get("prompts.fingerprint") if champ else None
    return {
        "fingerprint": fp,
        "champion_version": champ["version"] if champ else None,
        "champion_fingerprint": recorded,
        "changed": recorded != fp,
        "reason": "no champion yet" if champ is None else ("prompt sets changed" if recorded != fp else "prompt sets unchanged"),
    }
