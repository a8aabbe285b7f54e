"""One registry entry per pipeline stage: the single source of truth about it.

A :class:`StageSpec` names the stage's library function, the config keys it reads, the upstream records
it takes and what it returns. Everything else is derived from the entries: the Prefect tasks
(``tasks/stages.py``: name, cache policy, retries), their cache keys (``tasks/caching.py``: the keys read,
the code version computed from the modules the function reaches, the content identities below), the
parameters each stage logs to MLflow, ``steermoe stages`` and the README's stage table (kept equal to
:func:`stage_table` by a test). Adding a stage is one entry here, one task and one line in the flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steermoe import stages
from steermoe.code_version import code_version, reached_modules
from steermoe.errors import InputError

__all__ = ["StageSpec", "STAGE_SPECS", "STAGES", "MODEL_LOAD_KEYS", "spec", "config_value", "stage_table"]

# What changes how a loaded model computes (device does not: results are the same on any device).
MODEL_LOAD_KEYS = ("model.dtype", "model.attn_implementation", "model.trust_remote_code")


@dataclass(frozen=True)
class StageSpec:
    """The facts about one stage."""

    name: str
    title: str  # what a reader calls it
    function: Callable  # the library function in :mod:`steermoe.stages`
    reads: tuple[str, ...]  # config keys (dotted; a section means all of it) the function reads
    inputs: tuple[str, ...]  # upstream records it takes, by task parameter name
    returns: str  # what its record holds
    cli: tuple[str, ...] = ()  # commands that run it alone
    retries: int = 0  # only where a failure can be transient
    identity: Callable[[Any], dict] | None = None  # content its key covers beyond config keys (fingerprints)
    identity_reads: tuple[str, ...] = ()  # config keys ``identity`` consults beyond ``reads``

    @property
    def task_name(self) -> str:
        return self.name.replace("_", "-")

    def code_version(self) -> str:
        return code_version(self.function)

    def reached_modules(self) -> dict[str, Path]:
        return reached_modules(self.function)

    def config_values(self, config) -> dict[str, Any]:
        return {key: config_value(config, key) for key in self.reads}


def config_value(config, dotted: str) -> Any:
    """``config`` at ``dotted`` (``generation.batch_size``), sections as plain dicts."""
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _prompt_identity(config) -> dict:
    return {"prompts.fingerprint": stages.prompt_set_fingerprint(config.prompts)}


def _model_identity(config) -> dict:
    if config.model.source.startswith("random:"):  # config + seed (+ the config.json it names): no weights read
        from steermoe.random_model import random_fingerprint, random_spec

        return {"model.fingerprint": random_fingerprint(random_spec(config.model))}
    if config.model.source == "demo":  # built from the demo tables: an edited table is a different model
        from steermoe.demo.data_files import tables_fingerprint

        return {"model.demo_tables": tables_fingerprint()}
    # A local folder is keyed on its weights, so a changed checkpoint under the same path misses.
    source = Path(config.model.source).expanduser()
    if source.exists():
        from steermoe.modeling import model_fingerprint

        return {"model.fingerprint": model_fingerprint(source)}
    return {}


def _tracking_identity(config) -> dict:
    from steermoe.tracking import resolve_tracking_uri

    return {"tracking_uri": resolve_tracking_uri(config.tracking, config.cache_dir)}


_SPECS = (
    StageSpec(
        "validate_prompts", "validate prompts", stages.validate_prompts_stage, ("prompts",), (),
        "validation report (JSON) and, if it passes, the prompt snapshot later stages read",
        cli=("steermoe validate",), identity=_prompt_identity,
    ),
    StageSpec(
        "prepare_model", "prepare model", stages.prepare_model_stage,
        ("model.source", "model.demo_arch", "model.demo_size", "model.init_seed", "model.config_overrides"), (),
        "the base model's folder, weights fingerprint and shape", identity=_model_identity,
    ),
    StageSpec(
        "collect_routing", "collect routing", stages.collect_routing_stage, (*MODEL_LOAD_KEYS, "generation", "routing"), ("prompts", "model"),
        "sharded Parquet routing store + manifest", cli=("steermoe collect",),
    ),
    StageSpec(
        "risk_difference", "risk difference", stages.risk_difference_stage, ("analysis",), ("routing",),
        "risk table (Parquet/CSV), heatmap, top-experts chart", cli=("steermoe analyze",),
    ),
    StageSpec(
        "select_experts", "select experts", stages.select_experts_stage, ("selection",), ("risk",),
        "`selection.json`", cli=("steermoe select",),
    ),
    StageSpec(
        "finetune", "fine-tune experts", stages.finetune_stage,
        (*MODEL_LOAD_KEYS, "generation.batch_size", "generation.chat_template_kwargs", "finetune"),
        ("prompts", "model", "routing", "selection"),
        "expert patch (`experts.safetensors` + manifest), training curve, metrics, baselines", cli=("steermoe finetune",),
    ),
    StageSpec(
        "evaluate", "evaluate", stages.evaluate_stage, (*MODEL_LOAD_KEYS, "generation.chat_template_kwargs", "evaluation"),
        ("prompts", "model", "selection", "finetune"),
        "comparison table (CSV, Markdown, PNG), every response, metrics per model", cli=("steermoe evaluate", "steermoe compare"),
    ),
    StageSpec(
        "register", "register", stages.register_stage, ("tracking.registered_model", "tracking.base_reference"),
        ("run", "model", "prompts", "selection", "finetune", "evaluation"),
        "registered model version (alias `challenger`)", cli=("steermoe run",),
        # The tracking server may be restarting; registration is all-or-nothing, so retrying is safe.
        retries=2, identity=_tracking_identity, identity_reads=("tracking.mlflow_uri", "cache_dir"),
    ),
)
STAGE_SPECS: dict[str, StageSpec] = {s.name: s for s in _SPECS}
STAGES: tuple[str, ...] = tuple(STAGE_SPECS)  # in pipeline order
assert len(STAGE_SPECS) == len(_SPECS), "a stage name is registered twice"


def spec(name: str) -> StageSpec:
    """The spec of stage ``name``; an unknown name lists the known ones."""
    try:
        return STAGE_SPECS[name]
    except KeyError:
        raise InputError(f"stage {name!r}: unknown; the stages are {', '.join(STAGES)}") from None


def stage_table() -> str:
    """The README's stage table, as Markdown."""
    lines = ["| # | stage | library function | config keys read | CLI | output |", "|---|---|---|---|---|---|"]
    for i, s in enumerate(_SPECS, 1):
        reads = ", ".join(f"`{k}`" for k in s.reads)
        cli = ", ".join(f"`{c}`" for c in s.cli) or "-"
        lines.append(f"| {i} | {s.title} | `stages.{s.function.__name__}` | {reads} | {cli} | {s.returns} |")
    return "\n".join(lines)
