"""One Prefect task per pipeline stage: a thin wrapper over :mod:`steermoe.stages`.

Every task takes the run config plus the small records of the stages it depends on, writes under a
content-addressed folder of ``out_root``, and returns a JSON record carrying a ``key`` (its content
identity, which downstream keys hash). Name, cache policy and retries come from the stage's spec
(:mod:`steermoe.stage_specs`) through :func:`stage_task`: the content key of
:class:`tasks.caching.StageCache` (stale records re-run); no retries for stages whose failures are
deterministic (bad data, bad config, a model that does not fit); registration talks to the tracking
server, so it retries.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from steermoe import stages
from steermoe.config import RunConfig
from steermoe.errors import ValidationFailed
from steermoe.stage_specs import STAGE_SPECS
from tasks.artifacts import publish_validation_report
from tasks.caching import StageCache, register_task_source, stage_dir, stage_key
from tasks.locking import exclusive_stage

__all__ = [
    "validate_prompts",
    "prepare_model",
    "collect_routing",
    "risk_difference",
    "select_experts",
    "finetune",
    "evaluate",
    "register",
    "STAGE_TASKS",
    "stage_task",
]

# Records are small JSON; JSON results are readable on disk and portable between Python versions.
_PERSIST = {"persist_result": True, "result_serializer": "json"}


def stage_task(name: str):
    """The Prefect task of stage ``name``, configured from its spec: task name, content cache policy
    (:class:`StageCache`, whose key also covers this wrapper's source), retries; the body runs under its
    stage-key lock (:func:`tasks.locking.exclusive_stage`), so concurrent runs do each stage once."""
    spec = STAGE_SPECS[name]

    def decorate(fn):
        register_task_source(name, fn)
        return task(exclusive_stage(name, fn), name=spec.task_name, cache_policy=StageCache(stage=name), retries=spec.retries, retry_delay_seconds=3, **_PERSIST)

    return decorate


def _where(stage: str, out_root: str, **inputs) -> tuple[str, Path]:
    key = stage_key(stage, inputs)
    return key, stage_dir(out_root, stage, key)


@stage_task("validate_prompts")
def validate_prompts(config: RunConfig, out_root: str) -> dict:
    """Validate the prompt set with Great Expectations; bad data fails here, before any model loads."""
    key, out = _where("validate_prompts", out_root, config=config)
    try:
        record = stages.validate_prompts_stage(config.prompts, out)
    except ValidationFailed as e:
        if e.report is not None:
            publish_validation_report(e.report.to_dict())
        raise
    # Downstream stages depend on the prompts' content, not on how strictly they were checked.
    return {**record, "key": f"prompts:{record['fingerprint']}", "stage_key": key}


@stage_task("prepare_model")
def prepare_model(config: RunConfig) -> dict:
    """Resolve the base model (building the demo model once) and fingerprint its weights."""
    record = stages.prepare_model_stage(config.model, config.cache_dir)
    return {**record, "key": f"model:{record['fingerprint']}"}


@stage_task("collect_routing")
def collect_routing(config: RunConfig, prompts: dict, model: dict, out_root: str) -> dict:
    """Record which experts the base model routes each token of the routing split to."""
    key, out = _where("collect_routing", out_root, config=config, prompts=prompts, model=model)
    return {**stages.collect_routing_stage(config, model["model_path"], prompts["prompts_path"], out), "key": key}


@stage_task("risk_difference")
def risk_difference(config: RunConfig, routing: dict, out_root: str) -> dict:
    """Per-(layer, expert) risk difference table, CSV/Parquet and heatmap."""
    key, out = _where("risk_difference", out_root, config=config, routing=routing)
    return {**stages.risk_difference_stage(config.analysis, routing["store_path"], out), "key": key}


@stage_task("select_experts")
def select_experts(config: RunConfig, risk: dict, out_root: str) -> dict:
    """Choose the experts to fine-tune from the risk table."""
    key, out = _where("select_experts", out_root, config=config, risk=risk)
    return {**stages.select_experts_stage(config.selection, risk["table_path"], out), "key": key}


@stage_task("finetune")
def finetune(config: RunConfig, prompts: dict, model: dict, routing: dict, selection: dict, out_root: str) -> dict:
    """Fine-tune only the selected experts (plus the configured baselines); returns patch paths."""
    key, out = _where("finetune", out_root, config=config, prompts=prompts, model=model, routing=routing, selection=selection)
    record = stages.finetune_stage(config, model["model_path"], prompts["prompts_path"], routing["store_path"], selection["selection_path"], out)
    return {**record, "key": key}


@stage_task("evaluate")
def evaluate(config: RunConfig, prompts: dict, model: dict, selection: dict, finetune: dict, out_root: str) -> dict:
    """Refusal, over-refusal and utility of base, fine-tuned, baselines and steering."""
    key, out = _where("evaluate", out_root, config=config, prompts=prompts, model=model, selection=selection, finetune=finetune)
    record = stages.evaluate_stage(config, model["model_path"], prompts["prompts_path"], selection["selection_path"], finetune, out)
    return {**record, "key": key}


@stage_task("register")
def register(config: RunConfig, run: dict, model: dict, prompts: dict, selection: dict, finetune: dict, evaluation: dict) -> dict:
    """Register the fine-tuned patch as a model version with alias ``challenger``."""
    key = stage_key("register", {"config": config, "model": model, "prompts": prompts, "selection": selection, "finetune": finetune, "evaluation": evaluation})
    record = stages.register_stage(config.tracking, run, model, prompts, selection, finetune, evaluation)
    return {**record, "key": key}


# Every stage has exactly one task (a test holds the two registries equal).
STAGE_TASKS = {t.fn.__name__: t for t in (validate_prompts, prepare_model, collect_routing, risk_difference, select_experts, finetune, evaluate, register)}
