"""End to end on the (tiny) demo model: training examples -> selective fine-tuning -> lower held-out refusal loss;
the random baseline; the CLI's one-line error."""

import pytest

from steermoe.config import FinetuneConfig
from steermoe.finetune import base_model_answers, build_training_examples, finetune_experts, random_selection
from steermoe.generation import GenerationSettings
from steermoe.modeling import load_model, load_tokenizer
from steermoe.selection import ExpertSelection


@pytest.fixture(scope="module")
def demo_examples(tiny_demo_model):
    from steermoe.demo.prompt_sets import load_demo_prompts

    prompts = load_demo_prompts()
    train = prompts[prompts["split"] == "train"]
    unsafe = train[train["label"] == "unsafe"]["prompt"].tolist()[:16]
    safe = train[train["label"] == "safe"]["prompt"].tolist()[:16]
    tok = load_tokenizer(tiny_demo_model)
    answers = base_model_answers(load_model(tiny_demo_model, device="cpu"), tok, safe, GenerationSettings(max_new_tokens=8))
    return build_training_examples(tok, unsafe, safe, answers, FinetuneConfig(max_length=96))


def test_selective_run_lowers_heldout_refusal_loss(tiny_demo_model, demo_examples, tmp_path):
    selection = ExpertSelection([(layer, e) for layer in range(4) for e in (0, 1)], [1.0] * 8, "manual")
    cfg = FinetuneConfig(zero_stage=0, learning_rate=1e-2, max_steps=8, batch_size=8, warmup_steps=1, heldout_fraction=0.25)
    result = finetune_experts(tiny_demo_model, selection, demo_examples, cfg, tmp_path, progress=False)
    m = result.metrics
    assert m["n_heldout"] >= 6 and m["steps"] == 8
    assert m["heldout_refusal_loss_after"] < m["heldout_refusal_loss_before"]
    assert 0 < m["trainable_fraction"] < 0.5


def test_random_baseline_has_the_same_size_and_other_experts(tiny_demo_model):
    chosen = [(1, 0), (2, 3), (3, 5)]
    rand = random_selection(tiny_demo_model, 3, seed=0, exclude=chosen)
    assert len(rand) == 3 and not set(rand.experts) & set(chosen)
    assert rand.experts == random_selection(tiny_demo_model, 3, seed=0, exclude=chosen).experts


def test_concurrent_runs_write_the_patches_and_metrics_of_runs_one_after_another(tiny_demo_model, demo_examples, tmp_path):
    from steermoe.finetune import FinetuneRun, finetune_runs

    selection = ExpertSelection([(0, 1), (2, 3)], [1.0, 1.0], "manual")
    rand = random_selection(tiny_demo_model, 2, seed=0, exclude=selection.experts)
    cfg = FinetuneConfig(zero_stage=0, learning_rate=1e-2, max_steps=3, batch_size=4, warmup_steps=1, heldout_fraction=0.25)

    def train(root, concurrent):
        steps: dict[str, list] = {"selective": [], "random": []}
        runs = [FinetuneRun(mode, sel, root / mode, callback=lambda s, m, mode=mode: steps[mode].append((s, m["loss"]))) for mode, sel in (("selective", selection), ("random", rand))]
        return finetune_runs(tiny_demo_model, runs, demo_examples, cfg, concurrent=concurrent, progress=False), steps

    one, one_steps = train(tmp_path / "sequential", False)
    both, both_steps = train(tmp_path / "concurrent", True)
    assert (tmp_path / "concurrent" / "random" / "job" / "job.json").exists()  # the baseline trained in a process of its own
    assert not (tmp_path / "sequential" / "random" / "job").exists()
    assert one_steps == both_steps and len(both_steps["random"]) == 3
    for a, b in zip(one, both):
        assert (a.mode, a.selection.experts) == (b.mode, b.selection.experts)
        assert _tensors(a.patch_path) == _tensors(b.patch_path)
        same = ("mode", "steps", "loss_history", "final_loss", "heldout_loss", "heldout_all_loss_before", "trainable_params")
        assert {k: a.metrics[k] for k in same} == {k: b.metrics[k] for k in same}
    assert _tensors(one[0].patch_path) != _tensors(one[1].patch_path)


def _tensors(patch_path) -> dict[str, bytes]:
    """A patch's tensors, byte for byte (the file's header is not: safetensors writes its metadata keys in any order)."""
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(patch_path / "experts.safetensors").items()}


def test_cli_without_selection_is_one_line_error(tmp_path, capsys):
    from steermoe.cli import run_app

    code = run_app(["finetune", "--selection", str(tmp_path / "missing.json")])
    assert code == 2
    assert "steermoe select" in capsys.readouterr().err


def test_cli_finetune_is_the_stage_with_its_validation_and_history(tiny_demo_model, tmp_path, capsys):
    import json

    from steermoe.cli import run_app
    from steermoe.selection import ExpertSelection
    from tests.conftest import make_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in make_prompts()))
    ExpertSelection([(0, 1), (1, 2)], [0.3, 0.2], "threshold").to_json(tmp_path / "sel.json")
    args = ["finetune", "--selection", str(tmp_path / "sel.json"), "--out", str(tmp_path / "ft"), "--set", f"model.source={tiny_demo_model}",
            "--set", f"prompts.sources=[{{path: {prompts}}}]", "--set", "finetune.max_steps=1", "--set", "finetune.baselines=[]",
            "--set", "finetune.answer_max_new_tokens=4", "--set", "finetune.batch_size=4", "--set", "model.device=cpu", "--set", "finetune.device=cpu"]
    assert run_app(args) == 0
    assert (tmp_path / "ft" / "prompts" / "validation_report.json").exists() and (tmp_path / "ft" / "selected" / "patch").is_dir()
    assert len(json.loads((tmp_path / "ft" / "history.json").read_text())) == 1
    assert "selective" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({**r, "label": "maybe"}) + "\n" for r in make_prompts()))
    assert run_app([*args[:-12], "--set", f"prompts.sources=[{{path: {bad}}}]"]) == 1  # validated before any model loads
