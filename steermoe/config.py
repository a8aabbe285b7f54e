"""The run configuration: one pydantic model for a whole pipeline run, one section per stage.

Defaults are the built-in demo, so ``RunConfig()`` is a runnable config. Every field carries a
description; unknown keys, wrong types and impossible values are rejected with the key path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from steermoe.errors import ConfigError

__all__ = [
    "RunConfig",
    "ModelConfig",
    "PromptSourceConfig",
    "PromptsConfig",
    "ValidationConfig",
    "GenerationConfig",
    "RoutingConfig",
    "AnalysisConfig",
    "SelectionConfig",
    "FinetuneConfig",
    "EvaluationConfig",
    "TrackingConfig",
    "ExecutionConfig",
    "load_config",
    "apply_overrides",
    "default_cache_dir",
    "format_validation_error",
]


def default_cache_dir() -> Path:
    """``$STEERMOE_CACHE`` or ``$XDG_CACHE_HOME/steermoe`` (``~/.cache/steermoe``)."""
    if os.environ.get("STEERMOE_CACHE"):
        return Path(os.environ["STEERMOE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "steermoe"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    source: str = Field(
        "demo",
        description="'demo' for the built-in demo model, a local Hugging Face model folder, or 'random:<shape or config.json>' "
        "(real architecture and shape, seeded random weights built on the device; no weights on disk).",
    )
    demo_arch: Literal["qwen3_moe", "olmoe", "mixtral"] = Field("qwen3_moe", description="Architecture of the demo model (source='demo' only).")
    demo_size: Literal["full", "small", "tiny"] = Field(
        "full", description="Demo model size (source='demo' only): 'full', 'small' (about a minute to build; smoke runs) or 'tiny' (seconds; tests)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loading the model.")
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.")
    trust_remote_code: bool = Field(False, description="Allow model code from the folder; off unless you trust the source.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="Attention kernel transformers uses; empty: its default (sdpa where available)."
    )
    init_seed: int = Field(0, description="Seed of the weights of a 'random:' source (part of its fingerprint).")
    config_overrides: dict[str, Any] = Field(default_factory=dict, description="'random:' sources only: config.json keys to change, e.g. {num_hidden_layers: 4}.")

    @model_validator(mode="after")
    def _overrides_need_random(self):
        if self.config_overrides and not self.source.startswith("random:"):
            raise ValueError("config_overrides applies to 'random:' sources only; edit the model folder's config.json instead")
        return self


class PromptSourceConfig(Section):
    path: str = Field(description="A JSONL/CSV/Parquet file, a saved HF dataset folder, or a hub dataset name.")
    format: Literal["jsonl", "csv", "parquet", "hf"] | None = Field(None, description="File format; guessed from the suffix when empty.")
    columns: dict[str, str] = Field(default_factory=dict, description="Our field -> the file's column, e.g. {prompt: goal}.")
    label: Literal["safe", "unsafe"] | None = Field(None, description="Label for rows without one (whole-file label).")
    category: str | None = Field(None, description="Category for rows without one.")
    split: Literal["train", "eval", "ood", "dev"] | None = Field(None, description="Split for rows without one (train, eval, ood: held-out prompts in other wording, or dev: prompts for tuning settings).")
    hf_split: str | None = Field(None, description="Which split of a Hugging Face dataset to read.")
    benchmark: str | None = Field(
        None,
        description="A published safety benchmark this file holds (xstest, advbench, harmbench, strongreject, jailbreakbench): "
        "its own columns, labels and categories are mapped, its rows default to split 'eval', and its own scores are reported.",
    )

    @model_validator(mode="after")
    def _benchmark_mapping(self):
        if self.benchmark is None:
            return self
        from steermoe.evaluation.benchmarks import BENCHMARKS

        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; available: {', '.join(BENCHMARKS.names())}")
        if self.columns or self.category is not None:
            raise ValueError(f"benchmark {self.benchmark!r} maps its own columns and categories; remove columns/category")
        return self


class ValidationConfig(Section):
    min_chars: int = Field(3, ge=1, description="Shortest allowed prompt, in characters.")
    max_chars: int = Field(4000, ge=1, description="Longest allowed prompt, in characters.")
    min_per_label: int = Field(10, ge=1, description="Fewest rows each label must have.")
    imbalance_warning_ratio: float = Field(4.0, gt=1, description="Warn when one label outnumbers the other by more than this.")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class PromptsConfig(Section):
    sources: list[PromptSourceConfig | Literal["demo"]] | Literal["demo"] = Field(
        "demo", description="Prompt files, or 'demo' for the built-in sets; a list may hold 'demo' beside files (the demo sets plus a benchmark)."
    )
    validation: ValidationConfig = Field(default_factory=ValidationConfig)


class GenerationConfig(Section):
    max_new_tokens: int = Field(32, ge=1, le=32768, description="Tokens generated per prompt.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch (halved automatically on out-of-memory).")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (do_sample only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (do_sample only).")
    seed: int = Field(0, description="Seed for sampling.")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=lambda: {"enable_thinking": False}, description="Passed to the tokenizer's chat template.")


class RoutingConfig(Section):
    backend: Literal["hf", "hf_static", "vllm"] = Field(
        "hf",
        description="Generation engine: 'hf' (transformers generate), 'hf_static' (static KV cache; on GPU each decode step "
        "is a replayed CUDA graph, routing recorded inside it) or 'vllm'.",
    )
    mode: Literal["inline", "two_phase"] = Field("inline", description="Record during generation, or generate first and record in a teacher-forced pass.")
    split: Literal["train", "eval", "all"] = Field("train", description="Which prompt split to collect routing on.")
    record_logits: bool = Field(False, description="Also store router logits (fp16); large.")
    record_weights: bool = Field(False, description="Also store the top-k routing weights.")
    shard_sequences: int = Field(64, ge=1, description="Sequences per store shard (the unit of resume).")


class AnalysisConfig(Section):
    segment: Literal["prompt", "generation", "all"] = Field("all", description="Which tokens to count.")
    weighting: Literal["token", "sequence", "batch"] = Field("token", description="Token counts, equal weight per sequence, or the seed's per-batch averaging.")
    behaviour_filter: bool = Field(False, description="Keep only unsafe prompts the model complied with and safe prompts it answered.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    batch_size: int = Field(16, ge=2, description="Prompts per batch for weighting='batch' (half safe, half unsafe, as the seed).")


class SelectionConfig(Section):
    strategy: Literal["threshold", "per_layer_cap", "significance", "top_p", "random", "signed"] = Field("threshold", description="How to choose experts from the risk table.")
    threshold: float = Field(0.05, ge=-1, le=1, description="Minimum risk difference (or CI lower bound for 'significance').")
    top_k: int = Field(16, ge=1, description="Most experts to select.")
    per_layer_cap: int = Field(4, ge=1, description="Most experts per layer ('per_layer_cap').")
    alpha: float = Field(0.05, gt=0, lt=1, description="Largest BH q-value ('significance').")
    top_p: float = Field(0.5, gt=0, le=1, description="Cumulative share of positive risk per layer ('top_p').")
    seed: int = Field(0, description="Seed of the random baseline.")


class FinetuneConfig(Section):
    @model_validator(mode="before")
    @classmethod
    def _not_implemented(cls, data):
        # Accepted once and then failed mid-run; now refused when the config loads. Its old default (0)
        # still loads, so configs dumped by earlier versions keep working.
        if isinstance(data, dict) and "routing_regulariser" in data:
            if data["routing_regulariser"] not in (0, None):
                raise ValueError("routing_regulariser is not implemented (a KL term on benign routing); remove the key")
            data = {k: v for k, v in data.items() if k != "routing_regulariser"}
        return data

    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Training precision.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (applies to trained experts only).")
    epochs: int = Field(3, ge=1, description="Passes over the training mix.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Micro-batch size per process.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in the backward pass instead of keeping them (less memory, "
        "about a third more compute per step); same losses and result.",
    )
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up steps.")
    max_length: int = Field(128, ge=8, description="Longest training sequence in tokens.")
    safe_fraction: float = Field(0.5, ge=0, le=1, description="Share of benign examples (base model's own answers) in the mix.")
    refusal_templates: list[str] | None = Field(None, description="Refusal targets; '{topic}' is filled from the prompt. Built-in set when empty.")
    offload_optimizer: bool = Field(False, description="ZeRO CPU offload of optimizer states.")
    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N steps (0: never).")
    merge: bool = Field(False, description="Also write a merged Hugging Face model folder.")
    baselines: list[Literal["random", "full"]] = Field(default_factory=lambda: ["random"], description="Baselines trained with the same data and budget.")
    seed: int = Field(0, description="Training seed.")
    gradient_clipping: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0: no clipping).")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the training mix held out to measure loss before and after training.")
    num_processes: int = Field(1, ge=1, description="Training processes per node; more than 1 starts them with the `deepspeed` launcher (one per GPU, or gloo on CPU).")
    num_nodes: int = Field(1, ge=1, description="Nodes to train on (the first ones of finetune.hostfile); more than 1 needs the hostfile.")
    hostfile: str | None = Field(
        None, description="DeepSpeed hostfile ('host slots=N' per line) for multi-node training; output_dir and the Python env must be at the same paths on every node."
    )
    launcher: Literal["pdsh", "openmpi", "mpich", "impi", "slurm", "mvapich"] = Field("pdsh", description="How the DeepSpeed launcher reaches the hostfile's nodes.")
    master_addr: str | None = Field(None, description="Address rank 0 listens on (default: the first host of the hostfile).")
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu' or 'cuda'; each process takes the GPU of its local rank.")
    refusal_endpoint: str | None = Field(None, description="OpenAI-compatible base URL (e.g. http://localhost:8000/v1) that writes refusals; templates when empty.")
    refusal_endpoint_model: str | None = Field(None, description="Model name at refusal_endpoint.")
    answer_max_new_tokens: int = Field(48, ge=1, description="Tokens the base model generates per safe training prompt (its answer is the benign target).")
    concurrent_baselines: bool = Field(
        False, description="Train the baselines at the same time as the selected experts, each in a process of its own with the "
        "same torch thread count (same patches and metrics as one after another); for a small model on a few CPU cores, where one "
        "run does not keep the cores busy. One after another with num_processes > 1, a hostfile or separate_process.",
    )
    separate_process: bool = Field(
        False, description="Train each job in a process of its own (the deepspeed launcher) even with num_processes 1, so its "
        "device memory is returned when it ends; the pipeline process keeps no second copy of a large model.",
    )

    @model_validator(mode="after")
    def _nodes_need_a_hostfile(self):
        if self.num_nodes > 1 and not self.hostfile:
            raise ValueError(f"num_nodes {self.num_nodes} needs finetune.hostfile (the nodes to start processes on)")
        return self


class EvaluationConfig(Section):
    split: Literal["eval", "ood", "dev", "train", "all"] = Field("eval", description="Which prompt split to evaluate on (ood: held-out prompts in other wording; dev: free-wording prompts for tuning settings).")
    judges: list[str] = Field(default_factory=lambda: ["string_match"], description="Judges to run; the first decides the metrics.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per evaluation prompt.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch.")
    backend: Literal["hf", "hf_static", "vllm"] = Field(
        "hf",
        description="Who writes the answers: 'hf' (transformers generate), 'hf_static' (the static-cache decoder of routing.backend "
        "hf_static: on GPU each decode step a replayed CUDA graph, ~6x 'hf' at MoE scale) or 'vllm' (a fine-tuned model is merged "
        "into a folder once and vLLM answers from it; judging, utility and drift still run on the HF model; local execution only).",
    )
    bootstrap_samples: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals (0: none).")
    steering: bool = Field(True, description="Also evaluate SteerMoE-style inference-time steering.")
    llm_judge_url: str | None = Field(None, description="OpenAI-compatible endpoint for the 'llm' judge.")
    llm_judge_model: str | None = Field(None, description="Model name at that endpoint.")
    llm_judge_api_key_env: str = Field("STEERMOE_JUDGE_API_KEY", description="Environment variable holding the endpoint's API key (empty: none).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the bootstrap intervals.")
    seed: int = Field(0, description="Seed of the bootstrap resampling.")
    routing_drift: bool = Field(True, description="Measure routing drift from the base model on benign prompts.")
    steering_selection: str | None = Field(None, description="Expert selection JSON to steer with (default: the run's selection.json).")
    steering_epsilon: float = Field(0.01, gt=0, description="How far above the max / below the min steered log-probabilities are set.")

    @field_validator("judges")
    @classmethod
    def _known_judges(cls, v: list[str]) -> list[str]:
        from steermoe.evaluation.judges import JUDGES

        unknown = [j for j in v if j not in JUDGES]
        if unknown or not v:
            raise ValueError(f"unknown judge(s) {unknown}; choose from {JUDGES.names()}" if unknown else f"name at least one of {JUDGES.names()}")
        return v


class TrackingConfig(Section):
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (file, sqlite:// or http://); empty: $MLFLOW_TRACKING_URI, else a SQLite store under the cache dir.")
    experiment: str = Field("steermoe", description="MLflow experiment name.")
    registered_model: str = Field("steermoe-demo", description="Registered model name for candidates.")
    promotion_margin: float = Field(0.05, ge=0, le=1, description="Refusal rate a challenger must gain over the champion.")
    over_refusal_tolerance: float = Field(0.05, ge=0, le=1, description="Extra over-refusal a challenger may have.")
    utility_tolerance: float = Field(0.1, ge=0, description="Extra loss on benign answers a challenger may have.")
    promotion_bootstrap_samples: int = Field(2000, ge=1, description="Paired bootstrap resamples of the challenger-minus-champion differences.")
    promotion_confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of those paired intervals (the refusal gain's lower bound must be > 0).")
    base_reference: Literal["auto", "hub", "mlflow", "path"] = Field(
        "auto",
        description="How a version finds its base model elsewhere: 'hub' (repo id + revision of a hub-cache snapshot), 'mlflow' (weights logged "
        "once per base fingerprint, reused by every version), 'path' (this machine's folder only), 'auto' (hub if it came from the hub, else mlflow).",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _no_password_in_uri(cls, v: str | None) -> str | None:
        # A run config travels as a Prefect flow parameter and lands in result files, so a password
        # written into it would be stored in the clear; credentials belong to the environment.
        from urllib.parse import urlsplit

        if v and "://" in v and urlsplit(v).password:
            raise ValueError(
                "holds a password; a run config is passed to Prefect and logged, so put the credentials in "
                "$MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, ~/.pgpass) instead"
            )
        return v


class ExecutionConfig(Section):
    """Where routing collection and evaluation generation run: in this process, or data-parallel on Ray.

    One section for both stages (they share the cluster and the model-per-worker shape); ``stages``
    picks which use it. Results do not depend on it (same shards, same records), so no cache key reads it."""

    executor: Literal["local", "ray"] = Field("local", description="'local': in this process; 'ray': shards spread over Ray workers (needs the [ray] extra).")
    ray_address: str | None = Field(
        None, description="Ray cluster to join ('auto', 'head-host:6379' or 'ray://head-host:10001'); empty: $RAY_ADDRESS, else a local Ray instance started for the run."
    )
    num_workers: int = Field(2, ge=1, description="Ray workers (actors); each loads the model once and keeps it for its shards.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each worker reserves (1 for one model copy per GPU; 0 on CPU).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker reserves (also its torch thread count).")
    max_retries: int = Field(2, ge=0, description="Times a killed worker is restarted and its shard retried before the stage fails.")
    stages: list[Literal["routing", "evaluation"]] = Field(
        default_factory=lambda: ["routing", "evaluation"], description="Stages that use the executor; the others run locally."
    )
    evaluation_shard_prompts: int = Field(
        64, ge=1, description="Prompts per evaluation shard (rounded up to a multiple of evaluation.batch_size, so the batches are a single process's)."
    )

    def uses_ray(self, stage: Literal["routing", "evaluation"]) -> bool:
        return self.executor == "ray" and stage in self.stages


class RunConfig(Section):
    run_name: str = Field("demo", description="Name of this run (MLflow run and output folder).")
    seed: int = Field(0, description="Global seed.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where built models and stage results are cached.")
    output_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("STEERMOE_OUTPUT_DIR") or "runs"),
        description="Where run outputs (stores, tables, patches, reports) are written; default $STEERMOE_OUTPUT_DIR, else ./runs.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\") or v.startswith("."):
            raise ValueError("must be a plain name (no slashes, not starting with '.')")
        return v

    def section_dict(self, name: str) -> dict:
        return getattr(self, name).model_dump(mode="json")


def format_validation_error(err: ValidationError, origin: str = "config") -> str:
    """One line: the first failing key path and why (plus a count of the others)."""
    # A union (sources: a list or 'demo') reports each branch; when the value went into the list, the
    # literal branch's complaint is noise.
    everything = err.errors()
    errors = [e for e in everything if not _beside_deeper(e, everything)]
    first = errors[0]
    # Branch tags such as "list[PromptSourceConfig]" are pydantic's, not keys of the file.
    path = ".".join(str(p) for p in first["loc"] if "[" not in str(p)) or "(top level)"
    reason = first["msg"]
    if first["type"] == "extra_forbidden":
        reason = "unknown key"
    elif first["type"] == "missing":
        reason = "required key is missing"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{origin}: {path}: {reason}{more}"


def _beside_deeper(error: dict, errors: list[dict]) -> bool:
    loc = [str(p) for p in error["loc"]]
    tags = [i for i, p in enumerate(loc) if p.startswith("literal[")]
    if not tags:
        return False
    prefix = loc[: tags[0]]

    def went_in(e: dict) -> bool:  # the value was of the other branch's type and failed inside it
        return len(e["loc"]) > len(prefix) + 1 or not e["type"].endswith("_type")

    return any(e is not error and [str(p) for p in e["loc"][: len(prefix)]] == prefix and went_in(e) for e in errors)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings; values are parsed as YAML (``3e-4``, ``[a, b]``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the demo defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: no such config file")
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, expected a YAML file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None
    from steermoe.preflight import check_model_settings

    check_model_settings(config)  # from config.json alone: before any weights load
    return config
