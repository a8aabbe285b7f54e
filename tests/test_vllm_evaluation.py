"""Evaluation answers through vLLM (``evaluation.backend: vllm``): a patched model, written as a merged folder,
answers in vLLM exactly as the Hugging Face patched model answers (CPU, fp32, greedy).

vLLM runs in a subprocess (its CPU worker rebinds the process's OpenMP threads), as in ``test_vllm_backend.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_vllm_backend import ROOT, needs_vllm, vllm_demo_model_path

MAX_NEW_TOKENS = 12
_SCRIPT = r"""
import json, sys
args = json.loads(sys.argv[1])
from steermoe.config import RunConfig
from steermoe.demo.prompt_sets import load_demo_prompts
from steermoe.evaluation.vllm_generation import stage_answer_fns
from steermoe.prompts import to_messages
rows = load_demo_prompts(split="eval").head(args["n"]).to_dict("records")
cfg = RunConfig.model_validate({"model": {"dtype": "float32"}, "evaluation": {"backend": "vllm", "batch_size": 4,
                                "max_new_tokens": args["max_new_tokens"]}})
# The evaluation stage's path: the patched entry is merged when it first answers, with the base tokenizer.
answer = stage_answer_fns(cfg, args["base"], args["merged_dir"])(args["base"], args["patch"], "candidate")
out = answer([to_messages(r) for r in rows], {"enable_thinking": False}).generated_token_ids
print("ANSWERS " + json.dumps({"patched": out}))
"""


@pytest.fixture(scope="module")
def patched(request, tmp_path_factory):
    """The demo base, an expert patch that changes its answers, and the merged folder vLLM loads."""
    from steermoe.evaluation.vllm_generation import merged_patched_folder
    from steermoe.finetune.experts import prepare_selective
    from steermoe.finetune.patch import save_patch
    from steermoe.modeling import load_model, model_fingerprint
    from steermoe.selection import ExpertSelection

    base = vllm_demo_model_path(request, tmp_path_factory)
    root = tmp_path_factory.mktemp("vllm-eval")
    from steermoe.adapters import adapter_for

    model = load_model(base, dtype="float32", device="cpu")
    experts = adapter_for(model).num_experts(model.config)
    chosen = [(layer, e) for layer in range(model.config.num_hidden_layers) for e in range(0, experts, 2)]
    selection = ExpertSelection(chosen, [0.1] * len(chosen), "manual")
    plan = prepare_selective(model, selection)
    with torch.no_grad():
        for s in plan.slices:
            # A strong change, so the patched model answers differently from the base: the tiny demo model is barely
            # trained, and scaling its small expert outputs left its (degenerate) answers as they were.
            s.module.rows.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    save_patch(root / "patch", plan, model_fingerprint(base), selection)
    merged = merged_patched_folder(base, root / "patch", root / "merged")
    return base, root / "patch", merged


def _hf_answers(model, tok, n):
    from steermoe.demo.prompt_sets import load_demo_prompts
    from steermoe.generation import GenerationSettings
    from steermoe.modeling import generate
    from steermoe.prompts import to_messages

    rows = load_demo_prompts(split="eval").head(n).to_dict("records")
    greedy = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=4, chat_template_kwargs={"enable_thinking": False})
    out = generate(model, tok, [to_messages(r) for r in rows], greedy, progress=False)
    return out.generated_token_ids


def test_merged_folder_is_base_plus_patch_and_is_reused(patched):
    from steermoe.evaluation.vllm_generation import MARKER, merged_patched_folder
    from steermoe.finetune import load_patched_model
    from steermoe.modeling import load_model

    base, patch, merged = patched
    want = load_patched_model(base, patch, dtype="float32", device="cpu").state_dict()
    got = load_model(merged, dtype="float32", device="cpu").state_dict()
    assert set(want) == set(got)
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    stamp = (merged / MARKER).stat().st_mtime_ns
    assert merged_patched_folder(base, patch, merged) == merged and (merged / MARKER).stat().st_mtime_ns == stamp  # reused


def test_merged_folder_refuses_a_patch_of_another_base(patched, tmp_path):
    import shutil

    from steermoe.errors import InputError
    from steermoe.evaluation.vllm_generation import merged_patched_folder

    base, patch, _ = patched
    other = tmp_path / "other-patch"
    shutil.copytree(patch, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_fingerprint"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="patch was made for base model"):
        merged_patched_folder(base, other, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@needs_vllm
def test_vllm_answers_of_the_patched_model_equal_hf_patched(patched):
    from steermoe.finetune import load_patched_model
    from steermoe.modeling import load_model, load_tokenizer

    base, patch, merged = patched
    n = 6
    args = {"base": str(base), "patch": str(patch), "merged_dir": str(merged.parent / "stage-merged"), "n": n,
            "max_new_tokens": MAX_NEW_TOKENS}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], capture_output=True, text=True, timeout=420, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"vLLM subprocess failed:\n{proc.stderr[-4000:]}"
    answers = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("ANSWERS "))[8:])
    tok = load_tokenizer(base)
    hf_patched = _hf_answers(load_patched_model(base, patch, dtype="float32", device="cpu"), tok, n)
    hf_base = _hf_answers(load_model(base, dtype="float32", device="cpu"), tok, n)
    assert answers["patched"] == hf_patched  # token for token (the base's own agreement: test_vllm_backend.py)
    assert hf_patched != hf_base, "the patch must change the answers, or this test proves nothing"


def test_vllm_evaluation_refuses_ray_execution(tmp_path):
    from steermoe.config import RunConfig
    from steermoe.errors import InputError
    from steermoe.stages import evaluate_stage

    cfg = RunConfig.model_validate({"evaluation": {"backend": "vllm"}, "execution": {"executor": "ray", "stages": ["evaluation"]}})
    with pytest.raises(InputError, match="evaluation.backend: vllm"):
        evaluate_stage(cfg, "unused", "unused", "unused", {}, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
