"""Public entry points: expert-selective fine-tuning and its two baselines (random experts, full model).

Each call writes into ``out_dir``: ``patch/`` (selective runs), ``merged/`` (on request, always for
the full baseline), ``metrics.json`` and ``steps.jsonl``; ``checkpoints/`` exists while a run is
unfinished, and a new call on the same folder resumes from it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from steermoe.errors import InputError
from steermoe.selection import ExpertSelection

__all__ = ["FinetuneResult", "FinetuneRun", "finetune_experts", "finetune_runs", "finetune_random", "finetune_full", "random_like", "random_selection", "split_heldout", "run_job"]


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced."""

    mode: str  # "selective", "random" or "full"
    out_dir: Path
    patch_path: Path | None
    merged_path: Path | None
    metrics: dict
    selection: ExpertSelection | None


def split_heldout(examples: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out); every kind keeps at least one training example."""
    if fraction <= 0 or len(examples) < 4:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed + 7).shuffle(order)
    k = max(1, round(len(examples) * fraction))
    held = set(order[:k])
    return [x for i, x in enumerate(examples) if i not in held], [x for i, x in enumerate(examples) if i in held]


def random_selection(base_path: str | Path, size: int, seed: int = 0, exclude: Sequence[tuple[int, int]] = (), model=None) -> ExpertSelection:
    """``size`` experts drawn uniformly (seeded) from all MoE (layer, expert) pairs of a model
    (``model``: its model section, for ``trust_remote_code``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from steermoe.adapters import adapter_for, moe_layers
    from steermoe.modeling import load_hf_config, model_section

    section = model or model_section()
    config = load_hf_config(section, base_path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=section.trust_remote_code)
    adapter = adapter_for(skeleton)
    pairs = [(m.layer, e) for m in moe_layers(skeleton, adapter) for e in range(adapter.num_experts(config))]
    pool = [p for p in pairs if p not in set(exclude)] or pairs
    if size > len(pool):
        raise InputError(f"random baseline: {size} experts asked for, the model has {len(pool)} to draw from")
    chosen = sorted(random.Random(seed).sample(pool, size))
    return ExpertSelection(chosen, [0.0] * size, "random", {"seed": seed, "size": size})


# ``model`` below is the run's model section (``trust_remote_code``, attention kernel); dtype and device
# come from the fine-tuning section. None: the defaults.


def finetune_experts(base_path, selection: ExpertSelection, examples: Sequence, cfg, out_dir, callback: Callable | None = None, heldout: Sequence | None = None, progress: bool = True, model=None) -> FinetuneResult:
    """Fine-tune only ``selection``'s experts; everything else stays bit-identical to the base."""
    return _finetune("selective", base_path, selection, examples, cfg, out_dir, callback, heldout, progress, model)


def finetune_random(base_path, like: ExpertSelection, examples: Sequence, cfg, out_dir, callback: Callable | None = None, heldout: Sequence | None = None, progress: bool = True, model=None) -> FinetuneResult:
    """Baseline: as many random experts as ``like`` (disjoint from it where possible), same data and budget."""
    return _finetune("random", base_path, random_like(base_path, like, cfg, model), examples, cfg, out_dir, callback, heldout, progress, model)


def random_like(base_path, like: ExpertSelection, cfg, model=None) -> ExpertSelection:
    """The random-expert baseline's experts: as many as ``like``, disjoint from it where possible, drawn with ``cfg.seed``."""
    return random_selection(base_path, len(like), seed=cfg.seed, exclude=like.experts, model=model)


def finetune_full(base_path, examples: Sequence, cfg, out_dir, callback: Callable | None = None, heldout: Sequence | None = None, progress: bool = True, model=None) -> FinetuneResult:
    """Baseline: every parameter trained, same data and budget; writes a merged model folder."""
    return _finetune("full", base_path, None, examples, cfg, out_dir, callback, heldout, progress, model)


def _prepare(mode, base_path, selection, examples, cfg, out_dir, heldout, model) -> tuple[dict, list, list]:
    """The job of one run (and its training and held-out examples); an unfinished run's checkpoints are kept for resuming."""
    from steermoe.modeling import model_fingerprint, model_section

    base_path, out_dir = Path(base_path), Path(out_dir)
    if not examples:
        raise InputError("finetune: no training examples; build them with build_training_examples")
    if heldout is None:
        examples, heldout = split_heldout(examples, cfg.heldout_fraction, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / "checkpoints" / "latest").exists():
        _clear_outputs(out_dir)  # a fresh run: nothing from an earlier one may look like ours
    job = {
        "mode": mode,
        "base_path": str(base_path),
        "base_fingerprint": model_fingerprint(base_path),
        "selection": selection.to_dict() if selection is not None else None,
        "cfg": cfg.model_dump(mode="json"),
        "model": (model or model_section()).model_dump(mode="json"),
        "out_dir": str(out_dir),
    }
    return job, list(examples), list(heldout)


def _write_job(job: dict, examples: Sequence, heldout: Sequence) -> Path:
    from steermoe.finetune.data import save_examples

    job_dir = Path(job["out_dir"]) / "job"
    job_dir.mkdir(exist_ok=True)
    save_examples(examples, job_dir / "examples.jsonl")
    save_examples(heldout, job_dir / "heldout.jsonl")
    (job_dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
    return job_dir / "job.json"


def _replay_steps(out_dir: Path, callback: Callable | None) -> None:
    """A run trained in another process: its steps, as the callback would have seen them."""
    if callback is not None:
        for line in (out_dir / "steps.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            callback(row.pop("step"), row)


def _result(mode: str, out_dir: Path, selection) -> FinetuneResult:
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    patch = out_dir / "patch"
    merged = out_dir / "merged"
    return FinetuneResult(mode, out_dir, patch if patch.exists() else None, merged if merged.exists() else None, metrics, selection)


def _uses_launcher(cfg) -> bool:
    return cfg.num_processes > 1 or bool(cfg.hostfile) or cfg.separate_process


def _finetune(mode, base_path, selection, examples, cfg, out_dir, callback, heldout, progress, model) -> FinetuneResult:
    job, examples, heldout = _prepare(mode, base_path, selection, examples, cfg, out_dir, heldout, model)
    out_dir = Path(job["out_dir"])
    if _uses_launcher(cfg):
        _launch(_write_job(job, examples, heldout), cfg)
        _replay_steps(out_dir, callback)
    else:
        run_job(job, examples, heldout, callback=callback, progress=progress)
    return _result(mode, out_dir, selection)


@dataclass
class FinetuneRun:
    """One run of :func:`finetune_runs`: ``mode`` "selective" or "random" (with its ``selection``)
    or "full" (none), written into ``out_dir``; ``callback(step, metrics)`` after each optimizer step."""

    mode: str
    selection: ExpertSelection | None
    out_dir: Path
    callback: Callable | None = None


def finetune_runs(
    base_path, runs: Sequence[FinetuneRun], examples: Sequence, cfg, *, concurrent: bool = False, heldout: Sequence | None = None, progress: bool = True, model=None
) -> list[FinetuneResult]:
    """Train several runs on the same data and budget (the selected experts and the baselines), one after another,
    or with ``concurrent`` all at the same time on this machine: the first in this process, each other one in a
    process of its own (``python -m steermoe.finetune.launch``). Every run keeps this process's torch thread count
    (the result of a CPU run depends on it): the same patches and metrics as one after another, which a test holds
    equal. On a few CPU cores a small model's step gains little from a second thread, so runs side by side share the
    cores better than one run does. With ``finetune.num_processes`` > 1, a hostfile or ``separate_process`` the runs
    go one after another."""
    import torch

    runs = list(runs)
    if not concurrent or _uses_launcher(cfg) or len(runs) < 2:
        return [_finetune(r.mode, base_path, r.selection, examples, cfg, r.out_dir, r.callback, heldout, progress, model) for r in runs]
    jobs = [_prepare(r.mode, base_path, r.selection, examples, cfg, r.out_dir, heldout, model) for r in runs]
    children = [_start_job(_write_job({**job, "progress": False}, ex, held), torch.get_num_threads()) for job, ex, held in jobs[1:]]
    try:
        job, ex, held = jobs[0]
        run_job(job, ex, held, callback=runs[0].callback, progress=progress)
    except BaseException:
        for child in children:
            child.kill()
            child.wait()
        raise
    for (job, _, _), run, child in zip(jobs[1:], runs[1:], children):
        if child.wait() != 0:
            raise RuntimeError(f"fine-tuning {run.mode} ({job['out_dir']}) failed with exit code {child.returncode}; its log is {run.out_dir / 'job' / 'train.log'}")
        _replay_steps(Path(job["out_dir"]), run.callback)
    return [_result(r.mode, Path(job["out_dir"]), r.selection) for (job, _, _), r in zip(jobs, runs)]


def _start_job(job_path: Path, threads: int) -> subprocess.Popen:
    """One job in a process of its own with ``threads`` torch threads, without the deepspeed launcher (one rank; it sets its
    own torch.distributed variables)."""
    env = {**_child_env(), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(job_path.parent / "train.log", "w", encoding="utf-8") as log:
        return subprocess.Popen([sys.executable, "-m", "steermoe.finetune.launch", "--job", str(job_path)], env=env, stdout=log, stderr=subprocess.STDOUT)


def _clear_outputs(out_dir: Path) -> None:
    for name in ("patch", "merged", "checkpoints"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)


def launch_command(job_path: Path, cfg) -> list[str]:
    """The ``deepspeed`` launcher command for a job: ``finetune.num_processes`` per node, on this node or
    on the first ``finetune.num_nodes`` hosts of ``finetune.hostfile``."""
    from steermoe.finetune.engine import _free_port

    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(cfg.num_processes), "--master_port", str(_free_port())]
    if cfg.hostfile:
        hosts = _hostfile_hosts(Path(cfg.hostfile))
        if len(hosts) < cfg.num_nodes:
            raise InputError(f"finetune.num_nodes: {cfg.num_nodes} nodes asked for, but {cfg.hostfile} lists {len(hosts)} ({', '.join(hosts)}); add hosts or lower num_nodes")
        cmd += ["--hostfile", str(cfg.hostfile), "--num_nodes", str(cfg.num_nodes), "--launcher", cfg.launcher]
        if cfg.master_addr:
            cmd += ["--master_addr", cfg.master_addr]
        elif cfg.num_nodes == 1:
            # One node launches here, on this machine: DeepSpeed's ssh probe of the first host has nothing to check.
            cmd += ["--no_ssh_check", "--master_addr", "127.0.0.1"]
    return cmd + ["--module", "steermoe.finetune.launch", "--job", str(job_path)]


def _hostfile_hosts(path: Path) -> list[str]:
    """Host names of a DeepSpeed hostfile (``host slots=N`` lines; ``#`` comments)."""
    if not path.is_file():
        raise InputError(f"finetune.hostfile: {path} does not exist; write one line 'host slots=N' per node")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    for line in entries:
        if len(line.split()) != 2 or not line.split()[1].startswith("slots="):
            raise InputError(f"finetune.hostfile: {path}: {line!r} is not 'host slots=N'")
    if not entries:
        raise InputError(f"finetune.hostfile: {path} lists no hosts; write one line 'host slots=N' per node")
    return [line.split()[0] for line in entries]


# torch.distributed variables of this process: a launcher (or a job's own process) sets its own.
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "STEERMOE_OWN_DIST_ENV")


def _child_env() -> dict[str, str]:
    """The environment of a training process started from here: without this process's torch.distributed variables
    (the launcher, or the job itself, sets them), with the DeepSpeed op cache kept between runs."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "steermoe" / "torch_extensions"))
    return env


def _launch(job_path: Path, cfg) -> None:
    """Start the training processes with the ``deepspeed`` launcher (one per GPU; on CPU they talk over gloo)."""
    cmd = launch_command(job_path, cfg)
    env = _child_env()
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"deepspeed launcher failed with exit code {result.returncode}: {' '.join(cmd)}")


def _device(cfg):
    import torch

    from steermoe.modeling import resolve_device

    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def run_job(job: dict, examples: Sequence, heldout: Sequence, callback: Callable | None = None, progress: bool = True) -> dict:
    """Train one job in this process (the whole world when alone, one rank under the launcher)."""
    import deepspeed

    from steermoe.config import FinetuneConfig
    from steermoe.finetune.engine import ensure_dist_env, run_training, skip_shm_comm_build
    from steermoe.finetune.experts import prepare_full, prepare_selective
    from steermoe.finetune.integrity import frozen_snapshot, verify_frozen
    from steermoe.modeling import load_pretrained

    cfg = FinetuneConfig.model_validate(job["cfg"])
    out_dir = Path(job["out_dir"])
    ensure_dist_env()
    device = _device(cfg)
    skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="nccl" if device.startswith("cuda") else "gloo")
    rank = int(os.environ["RANK"])
    started = time.perf_counter()
    model = load_pretrained(_job_model(job, device), job["base_path"], tokenizer=False).model
    load_seconds = time.perf_counter() - started
    selection = ExpertSelection.from_dict(job["selection"]) if job["selection"] else None
    plan = prepare_selective(model, selection) if selection is not None else prepare_full(model)
    zero3 = cfg.zero_stage == 3
    frozen = frozen_snapshot(model, plan) if plan is not None else None  # before the first forward writes rows
    ckpt_dir = out_dir / "checkpoints"
    steps_log = out_dir / "steps.jsonl"
    if rank == 0 and not (ckpt_dir / "latest").exists():
        steps_log.unlink(missing_ok=True)
    engine, metrics = run_training(
        model, examples, heldout, cfg, selective=plan is not None, ckpt_dir=ckpt_dir if cfg.checkpoint_every else None,
        callback=callback, progress=progress, metrics_log=steps_log,
    )
    metrics.update(mode=job["mode"], base_fingerprint=job["base_fingerprint"], n_train=len(examples), n_heldout=len(heldout))
    if frozen is not None:  # the guarantee, checked before any patch exists
        checked = verify_frozen(model, frozen, zero3=zero3)
        metrics.update(bit_identical_tensors=checked["tensors"], bit_identical_expert_rows=checked["expert_rows"])
    metrics["model_load_seconds"] = round(load_seconds, 2)
    if device.startswith("cuda"):
        import torch

        metrics["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)  # this process's allocator peak
    if selection is not None:
        metrics["selected_experts"] = len(selection)
    _write_outputs(engine, model, plan, selection, job, cfg, metrics, rank)
    return metrics


def _write_outputs(engine, model, plan, selection, job, cfg, metrics, rank) -> None:
    import deepspeed
    import torch.distributed as dist

    from steermoe.finetune.experts import materialize
    from steermoe.finetune.patch import atomic_dir, save_merged, save_patch

    out_dir = Path(job["out_dir"])
    params = [p for p in model.parameters() if p.requires_grad] if plan is not None else list(model.parameters())
    # ZeRO-3 holds shards: gather (collectively) before rank 0 reads the weights.
    with deepspeed.zero.GatheredParameters(params, enabled=cfg.zero_stage == 3):
        if rank == 0:
            if plan is not None:
                save_patch(out_dir / "patch", plan, job["base_fingerprint"], selection, extra={"metrics": _small(metrics)})
            if plan is None or cfg.merge:
                tokenizer = _tokenizer(job)
                if plan is not None and cfg.zero_stage == 3:
                    _merge_from_patch(job, out_dir, tokenizer)
                else:
                    if plan is not None:
                        materialize(model, plan)
                    save_merged(model, tokenizer, out_dir / "merged")
            with atomic_dir(out_dir / ".metrics") as tmp:
                (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            os.replace(out_dir / ".metrics" / "metrics.json", out_dir / "metrics.json")
            shutil.rmtree(out_dir / ".metrics", ignore_errors=True)
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _job_model(job: dict, device: str):
    """The model section a job loads with: the run's, in the training precision, on this rank's device."""
    from steermoe.modeling import model_section

    dtype = "bfloat16" if job["cfg"]["precision"] == "bf16" else "float32"
    return model_section(**{**job.get("model", {}), "dtype": dtype, "device": device})


def _merge_from_patch(job, out_dir: Path, tokenizer) -> None:
    from steermoe.finetune.patch import save_merged
    from steermoe.modeling import load_pretrained

    model = load_pretrained(_job_model(job, "cpu"), job["base_path"], patch=out_dir / "patch", tokenizer=False).model
    save_merged(model, tokenizer, out_dir / "merged")


def _tokenizer(job: dict):
    from steermoe.modeling import load_pretrained

    try:
        return load_pretrained(_job_model(job, "cpu"), job["base_path"], weights=False).tokenizer
    except (OSError, ValueError, TypeError):
        return None  # a weights-only folder: the merged model gets no tokenizer


def _small(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
