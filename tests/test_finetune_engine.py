"""Real DeepSpeed on tiny models: ZeRO 0/1/2 in one process, two processes through the launcher,
every architecture, resume after a kill. Each run checks the bit-identity rule on the result."""

import random

import pytest
import torch

from steermoe.config import FinetuneConfig
from steermoe.finetune import TrainingExample, finetune_experts, finetune_full, load_patched_model
from steermoe.modeling import load_model
from tests.test_finetune_experts import ARCHS, SELECTION, assert_bit_identity, tiny_model

BASE_CFG = dict(max_steps=3, batch_size=4, learning_rate=1e-2, weight_decay=0.01, warmup_steps=0, heldout_fraction=0.1)


def random_examples(n: int = 40, vocab: int = 128, seed: int = 0) -> list[TrainingExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randrange(2, vocab) for _ in range(rng.randrange(8, 20))]
        out.append(TrainingExample(ids, [-100] * 4 + ids[4:], "refusal" if i % 2 else "benign"))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_engine")
    tiny_model("qwen3_moe").save_pretrained(root / "base")
    base = {k: v.clone() for k, v in load_model(root / "base", device="cpu").state_dict().items()}
    return root / "base", base, random_examples()


def check_run(result, base_path, base, selection=SELECTION):
    assert result.patch_path is not None and (result.patch_path / "manifest.json").exists()
    patched = load_patched_model(base_path, result.patch_path, device="cpu")
    assert_bit_identity(patched.state_dict(), base, selection)
    assert 0 < result.metrics["trainable_fraction"] < 0.2
    return patched


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stage_in_one_process(world, stage, tmp_path):
    base_path, base, examples = world
    steps = []
    cfg = FinetuneConfig(zero_stage=stage, merge=stage == 0, **BASE_CFG)
    result = finetune_experts(base_path, SELECTION, examples, cfg, tmp_path, callback=lambda s, m: steps.append((s, m["loss"])), progress=False)
    patched = check_run(result, base_path, base)
    assert [s for s, _ in steps] == [1, 2, 3] and result.metrics["steps"] == 3
    assert "heldout_refusal_loss_after" in result.metrics
    # AdamW's two fp32 moments per trained element, found under DeepSpeed's ZeRO wrappers too
    trainable = result.metrics["trainable_params"]
    assert 8 * trainable <= result.metrics["optimizer_state_bytes"] <= 8.5 * trainable + 4096
    if stage == 0:  # the merged folder (from the trained model in memory) equals base + patch
        merged = load_model(result.merged_path, device="cpu").state_dict()
        for name, value in patched.state_dict().items():
            assert torch.equal(merged[name], value), name
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"qwen3_moe"}))
def test_every_architecture_zero0(arch, tmp_path):
    tiny_model(arch).save_pretrained(tmp_path / "base")
    base = load_model(tmp_path / "base", device="cpu").state_dict()
    cfg = FinetuneConfig(zero_stage=0, **{**BASE_CFG, "max_steps": 2})
    result = finetune_experts(tmp_path / "base", SELECTION, random_examples(), cfg, tmp_path / "out", progress=False)
    check_run(result, tmp_path / "base", base)


class Killed(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(world, tmp_path):
    base_path, base, examples = world
    cfg = FinetuneConfig(zero_stage=1, checkpoint_every=2, **{**BASE_CFG, "max_steps": 5})
    reference = finetune_experts(base_path, SELECTION, examples, cfg, tmp_path / "ref", progress=False)

    def kill_after_step_3(step, metrics):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        finetune_experts(base_path, SELECTION, examples, cfg, tmp_path / "run", callback=kill_after_step_3, progress=False)
    assert (tmp_path / "run" / "checkpoints" / "latest").exists() and not (tmp_path / "run" / "patch").exists()
    resumed = finetune_experts(base_path, SELECTION, examples, cfg, tmp_path / "run", progress=False)
    assert resumed.metrics["resumed_from_step"] == 2 and resumed.metrics["steps"] == 5
    ref = load_patched_model(base_path, reference.patch_path, device="cpu").state_dict()
    got = load_patched_model(base_path, resumed.patch_path, device="cpu").state_dict()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6)
    assert resumed.metrics["loss_history"] == pytest.approx(reference.metrics["loss_history"], rel=1e-5)


def test_full_finetuning_baseline_moves_everything(world, tmp_path):
    base_path, base, examples = world
    result = finetune_full(base_path, examples, FinetuneConfig(zero_stage=0, **BASE_CFG), tmp_path, progress=False)
    assert result.patch_path is None and result.metrics["trainable_fraction"] == 1.0
    merged = load_model(result.merged_path, device="cpu").state_dict()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_two_processes_through_the_launcher(world, stage, tmp_path):
    base_path, base, examples = world
    steps = []
    cfg = FinetuneConfig(zero_stage=stage, num_processes=2, **BASE_CFG)
    result = finetune_experts(base_path, SELECTION, examples, cfg, tmp_path, callback=lambda s, m: steps.append(s), progress=False)
    assert result.metrics["world_size"] == 2 and steps == [1, 2, 3]
    check_run(result, base_path, base)


def test_two_processes_from_a_hostfile(world, tmp_path, monkeypatch):
    """The multi-node path (``--hostfile``, ``--num_nodes``) on the one node a CI machine has; on a machine
    with no DeepSpeed op built yet, training compiles none (the shared-memory all-reduce serves inference only)."""
    base_path, base, examples = world
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# one line per node\nlocalhost slots=2\n", encoding="utf-8")
    cfg = FinetuneConfig(zero_stage=0, num_processes=2, num_nodes=1, hostfile=str(hostfile), **BASE_CFG)
    result = finetune_experts(base_path, SELECTION, examples, cfg, tmp_path / "out", progress=False)
    assert result.metrics["world_size"] == 2
    check_run(result, base_path, base)
    assert not extensions.exists() or not any(extensions.iterdir()), list(extensions.iterdir())


def test_a_bad_hostfile_or_node_count_fails_with_the_key(tmp_path):
    from pydantic import ValidationError

    from steermoe.errors import InputError
    from steermoe.finetune.runner import launch_command

    with pytest.raises(ValidationError, match="needs finetune.hostfile"):
        FinetuneConfig(num_nodes=2)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=8\n", encoding="utf-8")
    with pytest.raises(InputError, match="finetune.num_nodes: 2 nodes asked for, but .* lists 1 \\(node-a\\)"):
        launch_command(tmp_path / "job.json", FinetuneConfig(num_nodes=2, hostfile=str(hostfile)))
    hostfile.write_text("node-a 8\n", encoding="utf-8")
    with pytest.raises(InputError, match="is not 'host slots=N'"):
        launch_command(tmp_path / "job.json", FinetuneConfig(hostfile=str(hostfile)))
    with pytest.raises(InputError, match="does not exist"):
        launch_command(tmp_path / "job.json", FinetuneConfig(hostfile=str(tmp_path / "missing")))
    hostfile.write_text("node-a slots=8\nnode-b slots=8\n", encoding="utf-8")
    cmd = launch_command(tmp_path / "job.json", FinetuneConfig(num_processes=8, num_nodes=2, hostfile=str(hostfile), master_addr="node-a"))
    assert cmd[cmd.index("--hostfile") + 1] == str(hostfile) and cmd[cmd.index("--num_nodes") + 1] == "2"
    assert cmd[cmd.index("--num_gpus") + 1] == "8" and cmd[cmd.index("--master_addr") + 1] == "node-a" and cmd[cmd.index("--launcher") + 1] == "pdsh"


def test_a_child_process_does_not_reuse_the_port_this_process_listens_on(world, tmp_path):
    """After an in-process run, this process's rendezvous still listens on MASTER_PORT; a child that
    inherits the variables (a flow run under a worker, a subprocess run) must pick a port of its own."""
    import os
    import subprocess
    import sys

    base_path, _, examples = world
    cfg = FinetuneConfig(**BASE_CFG, zero_stage=0)
    finetune_experts(base_path, SELECTION, examples, cfg, tmp_path / "in_process", progress=False)
    assert torch.distributed.is_initialized() and os.environ["MASTER_PORT"]
    child = (
        "import os, torch.distributed as dist\n"
        "from steermoe.finetune.engine import ensure_dist_env\n"
        "ensure_dist_env()\n"
        "dist.init_process_group('gloo')\n"
        "print(os.environ['MASTER_PORT'])\n"
    )
    out = subprocess.run([sys.executable, "-c", child], env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() != os.environ["MASTER_PORT"]


def test_gradient_checkpointing_trains_the_same_experts_to_the_same_result(world, tmp_path):
    """finetune.gradient_checkpointing recomputes activations in the backward pass: same losses, same trained rows,
    every other weight bit-identical (the memory it saves is measured on the GPU: benchmarks/finetune_bench.py)."""
    base_path, base, examples = world
    results = {}
    for gc in (False, True):
        cfg = FinetuneConfig(zero_stage=2, gradient_checkpointing=gc, **BASE_CFG)
        results[gc] = finetune_experts(base_path, SELECTION, examples, cfg, tmp_path / str(gc), progress=False)
    plain, checkpointed = (check_run(results[gc], base_path, base) for gc in (False, True))
    assert results[True].metrics["loss_history"] == pytest.approx(results[False].metrics["loss_history"], rel=1e-5)
    for name, value in checkpointed.state_dict().items():
        torch.testing.assert_close(value, plain.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
