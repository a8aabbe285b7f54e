"""The whole pipeline on a ``random:`` base, twice: every stage completes, then every stage is Cached.

CPU: the tiny shape (slow-marked). GPU: ``configs/gpu-qwen3-30b-a3b.yaml`` at reduced depth (2 of 48 layers,
fewer prompts and tokens; the full-depth numbers are in benchmarks/RESULTS.md), run through the device tool.
Real Prefect (temporary API), MLflow (SQLite), DeepSpeed (fine-tuning in its own launcher process).
"""

import json
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from steermoe import stages, tracking
from steermoe.config import load_config
from steermoe.modeling import load_tokenizer, model_fingerprint, resolve_model_path
from steermoe.prompt_padding import padded_prompt_set, write_prompt_set

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = ROOT / "configs" / "gpu-qwen3-30b-a3b.yaml"


def run_twice(tmp_path: Path, overrides: list[str], tokens: int, train: int, eval_rows: int) -> tuple[dict, dict, object]:
    from flows.pipeline import safety_pipeline

    base = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}", *overrides]
    cfg = load_config(GPU_CONFIG, base)
    prompts = tmp_path / "prompts.jsonl"
    tokenizer = load_tokenizer(resolve_model_path(cfg.model, cfg.cache_dir))
    write_prompt_set(padded_prompt_set(tokenizer, tokens, train, eval_rows), prompts)
    cfg = load_config(GPU_CONFIG, base + [f"prompts.sources=[{{path: {prompts}}}]"])
    with prefect_test_harness(server_startup_timeout=120):
        first = safety_pipeline(config=cfg)
        second = safety_pipeline(config=cfg)
    return first, second, cfg


def check_runs(first: dict, second: dict, cfg) -> dict:
    assert set(first["states"].values()) == {"Completed"}, first["states"]
    assert list(first["states"]) == list(stages.STAGES)
    assert set(second["states"].values()) == {"Cached"}, second["states"]
    model = first["records"]["prepare_model"]
    # The fingerprint is config + seed: the same in both runs and in the patch, no weights hashed.
    assert second["records"]["prepare_model"]["fingerprint"] == model["fingerprint"] == model_fingerprint(model["model_path"])
    finetune = first["records"]["finetune"]
    manifest = json.loads((Path(finetune["patch_path"]) / "manifest.json").read_text())
    assert manifest["base_fingerprint"] == model["fingerprint"]
    n_selected = first["records"]["select_experts"]["n_experts"]
    assert sum(len(t["experts"]) for t in manifest["tensors"] if t["name"].endswith("gate_up_proj")) == n_selected
    uri = tracking.resolve_tracking_uri(cfg.tracking, cfg.cache_dir)
    assert tracking.version_exists(uri, cfg.tracking.registered_model, first["registered"]["version"])
    assert second["registered"]["version"] == first["registered"]["version"]
    return manifest


def patch_bytes(finetune: dict) -> int:
    return (Path(finetune["patch_path"]) / "experts.safetensors").stat().st_size


@pytest.mark.slow
def test_tiny_random_base_runs_end_to_end_then_all_cached(tmp_path):
    overrides = [
        "model.source=random:tiny-qwen3-moe", "model.dtype=float32", "model.device=cpu", "finetune.device=cpu",
        "finetune.precision=fp32", "finetune.max_steps=2", "finetune.baselines=[]", "finetune.answer_max_new_tokens=6",
        "generation.max_new_tokens=6", "generation.batch_size=16", "selection.top_k=4", "prompts.validation.min_per_label=5",
        "evaluation.max_new_tokens=6", "evaluation.batch_size=16", "evaluation.bootstrap_samples=10", "evaluation.steering=false",
        "evaluation.routing_drift=false", "tracking.registered_model=tiny-random",
    ]
    first, second, cfg = run_twice(tmp_path, overrides, tokens=40, train=24, eval_rows=8)
    manifest = check_runs(first, second, cfg)
    assert manifest["layout"] and patch_bytes(first["records"]["finetune"]) > 0
    # Evaluation answered with the static decoder (the config's evaluation.backend), like routing collection.
    assert cfg.evaluation.backend == "hf_static" and first["records"]["evaluate"]["n_prompts"] == 8


@pytest.mark.gpu
def test_gpu_rebuild_is_bit_identical_to_the_cpu_build(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from steermoe.config import ModelConfig
    from steermoe.modeling import load_model

    path = resolve_model_path(ModelConfig(source="random:tiny-qwen3-moe", init_seed=3), tmp_path)
    for dtype in ("float32", "bfloat16"):
        cpu = load_model(path, dtype=dtype, device="cpu").state_dict()
        gpu = load_model(path, dtype=dtype, device="cuda").state_dict()
        assert all(torch.equal(cpu[k], gpu[k].cpu()) for k in cpu), dtype


@pytest.mark.gpu
def test_gpu_config_at_reduced_depth_runs_end_to_end_then_all_cached(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    overrides = [
        "model.config_overrides={num_hidden_layers: 2}", "generation.max_new_tokens=16", "finetune.max_steps=2",
        "finetune.answer_max_new_tokens=16", "evaluation.max_new_tokens=16", "evaluation.bootstrap_samples=50",
        "prompts.validation.min_per_label=5", "tracking.registered_model=gpu-reduced",
    ]
    first, second, cfg = run_twice(tmp_path, overrides, tokens=64, train=64, eval_rows=16)
    manifest = check_runs(first, second, cfg)
    # Only the selected slices: 50 Qwen3-30B-A3B experts x (gate_up 1536x2048 + down 2048x768) x 2 bytes (bf16).
    expected = first["records"]["select_experts"]["n_experts"] * (1536 * 2048 + 2048 * 768) * 2
    assert expected <= patch_bytes(first["records"]["finetune"]) < expected * 1.01
    assert all(t["dtype"] == "bfloat16" for t in manifest["tensors"])
