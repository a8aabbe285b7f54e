"""A registered world for the registry and promotion tests: the tiny demo model, expert patches made in
seconds (seeded perturbations of selected experts, saved by the real patch writer), the real validation
and evaluation stages, and real registrations in an MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from steermoe import stages, tracking
from steermoe.config import load_config
from steermoe.selection import ExpertSelection
from tests.conftest import make_prompts

SELECTION = ExpertSelection([(0, 1), (1, 2)], [0.3, 0.2], "manual")


def write_prompts(path: Path, n: int = 8, changed: bool = False) -> Path:
    rows = make_prompts(n_safe=n, n_unsafe=n)
    for i, row in enumerate(rows):
        row["split"] = "eval" if i % 2 == 0 else "train"
    if changed:  # a new evaluation prompt: the evaluation set's fingerprint moves
        rows[0]["prompt"] = "How do I bake a sourdough loaf with rye?"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(root: Path, model_path: Path, prompts: Path, *extra: str, tracking_uri: str | None = None):
    overrides = [
        f"model.source={model_path}", "model.device=cpu", f"cache_dir={root / 'cache'}", f"output_dir={root / 'runs'}",
        "prompts.validation.min_per_label=3", f"prompts.sources=[{{path: {prompts}}}]", "evaluation.max_new_tokens=6",
        "evaluation.bootstrap_samples=20", "evaluation.steering=false", "evaluation.routing_drift=false", "tracking.registered_model=m",
        *([f"tracking.mlflow_uri={tracking_uri}"] if tracking_uri else []), *extra,
    ]
    return load_config(None, overrides)


def make_patch(model_path: Path, out: Path, seed: int, scale: float = 0.5) -> Path:
    """A real expert patch: the selected experts' weights moved by seeded noise."""
    from steermoe.finetune.experts import prepare_selective, trainable_parameters
    from steermoe.finetune.patch import save_patch
    from steermoe.modeling import load_model, model_fingerprint

    model = load_model(model_path, device="cpu")
    plan = prepare_selective(model, SELECTION)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.abs().mean())
    return save_patch(out, plan, model_fingerprint(model_path), SELECTION)


def register(cfg, name: str, seed: int) -> dict:
    """Validate, evaluate (base + this patch) and register one candidate, as the pipeline's last stages do."""
    out = Path(cfg.output_dir) / name
    prompts = stages.validate_prompts_stage(cfg.prompts, out)
    model = stages.prepare_model_stage(cfg.model, cfg.cache_dir)
    selection_path = out / "selection.json"
    SELECTION.to_json(selection_path)
    selection = {"selection_path": str(selection_path), "strategy": "manual", "experts": [list(e) for e in SELECTION.experts]}
    finetune = {"patch_path": str(make_patch(Path(model["model_path"]), out / "patch", seed)), "baselines": {}}
    evaluation = stages.evaluate_stage(cfg, model["model_path"], prompts["prompts_path"], str(selection_path), finetune, out / "evaluate")
    uri = tracking.resolve_tracking_uri(cfg.tracking, cfg.cache_dir)
    run = tracking.start_pipeline_run(uri, cfg.tracking.experiment, name, cfg.model_dump(mode="json"))
    tracking.log_stage(run, "validate_prompts", prompts, state="Completed")
    tracking.log_stage(run, "select_experts", selection, state="Completed")
    registered = tracking.register_candidate(cfg.tracking, run=run, model=model, prompts=prompts, selection=selection, finetune=finetune, evaluation=evaluation)
    tracking.finish_pipeline_run(run)
    return {"registered": registered, "evaluation": evaluation, "prompts": prompts, "model": model, "uri": uri}
