"""Stage 5: fine-tune only the selected experts with DeepSpeed; everything else stays bit-identical.

- :mod:`~steermoe.finetune.data`: training examples (refusals for unsafe prompts, the base model's
  own answers for safe ones; labels -100 on prompt and padding).
- :mod:`~steermoe.finetune.experts`: the selective parametrisation (trainable rows of fused experts).
- :mod:`~steermoe.finetune.engine`: DeepSpeed config, engine, loop, checkpoints, resume.
- :mod:`~steermoe.finetune.patch`: expert patches (save, apply, merge).
- :mod:`~steermoe.finetune.runner`: ``finetune_experts`` and the ``random`` / ``full`` baselines.
"""

from steermoe.finetune.data import (
    DEFAULT_REFUSALS,
    TrainingExample,
    base_model_answers,
    build_training_examples,
    collate,
    refusals_from_endpoint,
)
from steermoe.finetune.patch import apply_patch, load_patched_model, read_manifest, save_merged
from steermoe.finetune.runner import (
    FinetuneResult,
    FinetuneRun,
    finetune_experts,
    finetune_full,
    finetune_random,
    finetune_runs,
    random_like,
    random_selection,
    split_heldout,
)

__all__ = [
    "DEFAULT_REFUSALS",
    "TrainingExample",
    "build_training_examples",
    "base_model_answers",
    "refusals_from_endpoint",
    "collate",
    "apply_patch",
    "load_patched_model",
    "read_manifest",
    "save_merged",
    "FinetuneResult",
    "FinetuneRun",
    "finetune_experts",
    "finetune_random",
    "finetune_full",
    "finetune_runs",
    "random_like",
    "random_selection",
    "split_heldout",
]
