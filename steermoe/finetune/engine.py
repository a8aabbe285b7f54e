"""The DeepSpeed side: config, engine, training loop, checkpoints and resume.

One process (environment variables filled in when missing) or several started by the ``deepspeed``
launcher through :mod:`steermoe.finetune.launch`; both run :func:`run_training`. The data order is a
pure function of (seed, step), so a resumed run reads exactly the batches the killed one would have.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from steermoe.errors import ConfigError
from steermoe.failpoints import failpoint

__all__ = [
    "ensure_dist_env",
    "skip_shm_comm_build",
    "deepspeed_config",
    "total_steps",
    "batch_indices",
    "heldout_loss",
    "optimizer_state_bytes",
    "run_training",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Set when the torch.distributed variables are our own single-process defaults, not a launcher's.
OWN_DIST_ENV = "STEERMOE_OWN_DIST_ENV"


def ensure_dist_env() -> None:
    """DeepSpeed needs the torch.distributed variables even for one process.

    A launcher's variables are kept. Our own defaults get a fresh port on every start: a process that
    inherited them (a Prefect worker's flow run, a test's subprocess) would otherwise rendezvous on the
    port its parent's process group still listens on and fail with EADDRINUSE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    if os.environ.get(OWN_DIST_ENV) == "1" or "MASTER_PORT" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        os.environ[OWN_DIST_ENV] = "1"
    default_ext = Path.home() / ".cache" / "steermoe" / "torch_extensions"
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default_ext))


def skip_shm_comm_build() -> None:
    """Tell DeepSpeed its shared-memory all-reduce op is unavailable, so setting up communication does
    not JIT-compile it (about a minute of C++ on two cores, the first time on a machine).

    Only DeepSpeed's inference all-reduce (tensor-parallel serving) calls that op; training reduces
    through torch.distributed, so results are the same. DeepSpeed keeps the probed table in one dict
    for the process and reads it when its TorchBackend is created."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_config(cfg, world_size: int) -> dict:
    """The DeepSpeed JSON config for a :class:`~steermoe.config.FinetuneConfig`."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        if cfg.zero_stage == 0:
            raise ConfigError("finetune.offload_optimizer: needs zero_stage 1, 2 or 3; raise zero_stage or turn offload off")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if cfg.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation,
        "train_batch_size": cfg.batch_size * cfg.gradient_accumulation * world_size,
        "gradient_clipping": cfg.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        # We pass a torch AdamW (no fused-Adam build; weight decay only on trained tensors).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def total_steps(cfg, n_examples: int, world_size: int) -> int:
    per_step = cfg.batch_size * cfg.gradient_accumulation * world_size
    steps = math.ceil(cfg.epochs * n_examples / per_step)
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def batch_indices(n: int, seed: int, step: int, micro: int, cfg, rank: int, world_size: int) -> list[int]:
    """Example indices of one micro-batch: a seeded permutation per epoch, read as an endless stream."""
    import torch

    bs = cfg.batch_size
    start = ((step * cfg.gradient_accumulation + micro) * world_size + rank) * bs
    out = []
    for pos in range(start, start + bs):
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perm[offset]))
    return out


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def heldout_loss(model, examples: Sequence, batch_size: int, pad_id: int, device) -> dict[str, float]:
    """Mean per-token loss on held-out examples, overall and per kind (refusal / benign)."""
    import torch

    from steermoe.finetune.data import collate

    sums: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = _to_device(collate(chunk, pad_id), device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]  # (batch, width-1)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none")
            mask = labels != -100
            for i, x in enumerate(chunk):
                for key in ("all", x.kind):
                    acc = sums.setdefault(key, [0.0, 0.0])
                    acc[0] += float(nll[i][mask[i]].sum())
                    acc[1] += float(mask[i].sum())
    model.train(was_training)
    return {k: s / max(c, 1.0) for k, (s, c) in sums.items()}


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict | None) -> None:
    import numpy as np
    import torch

    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def enable_gradient_checkpointing(model) -> None:
    """Activation checkpointing per decoder layer (transformers' own). Non-reentrant: the embeddings are frozen, so a
    layer's input carries no gradient, and the reentrant variant would then drop the trained experts' gradients."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _init_engine(model, cfg, world_size: int):
    import deepspeed
    import torch

    from steermoe.finetune.experts import moe_block_classes, trainable_parameters

    if cfg.zero_stage == 3:
        from deepspeed.utils import set_z3_leaf_modules

        # Expert routing is data dependent: gather each MoE block whole instead of per sub-module.
        set_z3_leaf_modules(model, moe_block_classes(model))
        # ZeRO-3 releases a block's weights when the gradient of its input is done; with frozen
        # embeddings that input carries no gradient, and the release would come before the trained
        # rows' gradients. Make the embeddings' output require grad so every block input has one.
        model.enable_input_require_grads()
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    # Linear warm-up whose first step already learns (lr/(w+1), 2lr/(w+1), ... lr), then constant.
    warmup = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, world_size))
    return engine


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the optimizer's state tensors in this process (AdamW: two moments per trained
    element); DeepSpeed's ZeRO wrappers are unwrapped to the torch optimizer holding the state."""
    import torch

    seen = set()
    while not isinstance(optimizer, torch.optim.Optimizer) and getattr(optimizer, "optimizer", None) is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    state = getattr(optimizer, "state", {})
    return int(sum(t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t)))


def _resume(engine, ckpt_dir: Path | None, selective: bool) -> dict:
    if ckpt_dir is None or not (ckpt_dir / "latest").exists():
        return {}
    _, client = engine.load_checkpoint(str(ckpt_dir), load_module_strict=not selective)
    _set_rng_state(client.get("rng"))
    return client or {}


def run_training(
    model,
    examples: Sequence,
    heldout: Sequence,
    cfg,
    *,
    selective: bool,
    ckpt_dir: Path | None,
    callback: Callable[[int, dict], None] | None = None,
    pad_id: int = 0,
    progress: bool = True,
    metrics_log: Path | None = None,
) -> tuple[object, dict]:
    """Train ``model`` (already parametrised) with DeepSpeed; returns ``(engine, metrics)``.

    Resumes from ``ckpt_dir`` when it holds a checkpoint. ``callback(step, metrics)`` runs on rank 0
    after every optimizer step; an exception there stops the run (the last checkpoint stays).
    """
    from tqdm.auto import tqdm

    from steermoe.finetune.experts import count_parameters

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    trainable, total = count_parameters(model)
    if getattr(cfg, "gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    engine = _init_engine(model, cfg, world)
    device = engine.device
    client = _resume(engine, ckpt_dir, selective)
    start = int(client.get("step", 0))
    before = client.get("heldout_before") or (heldout_loss(engine.module, heldout, cfg.batch_size, pad_id, device) if heldout else {})
    steps = total_steps(cfg, len(examples), world)
    bar = tqdm(total=steps, initial=start, desc="fine-tuning", unit="step", disable=not progress or rank != 0)
    engine.train()
    history, t_start, loss_value = list(client.get("history", [])), time.perf_counter(), float("nan")
    step_times: list[float] = []
    for step in range(start, steps):
        t0 = time.perf_counter()
        loss_value = _optimizer_step(engine, examples, cfg, step, pad_id, rank, world)
        metrics = {"loss": loss_value, "lr": float(engine.get_lr()[0]), "step_seconds": time.perf_counter() - t0}
        history.append(loss_value)
        step_times.append(metrics["step_seconds"])
        done = step + 1
        if rank == 0:
            bar.set_postfix(loss=f"{loss_value:.4f}", s_per_step=f"{metrics['step_seconds']:.2f}")
            bar.update(1)
            if metrics_log is not None:
                with open(metrics_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": done, **metrics}) + "\n")
        if ckpt_dir is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps:
            state = {"step": done, "rng": _rng_state(), "heldout_before": before, "history": history}
            engine.save_checkpoint(str(ckpt_dir), tag=f"step{done}", client_state=state, exclude_frozen_parameters=selective)
        if rank == 0 and callback is not None:
            callback(done, metrics)
        failpoint("finetune.step")
    bar.close()
    after = heldout_loss(engine.module, heldout, cfg.batch_size, pad_id, device) if heldout else {}
    run = {"steps": steps, "resumed_from_step": start, "final_loss": loss_value, "loss_history": history, "seconds": time.perf_counter() - t_start}
    return engine, {**run, **_run_metrics(engine, cfg, trainable, total, step_times, world), **_heldout_metrics(before, after)}


def _optimizer_step(engine, examples: Sequence, cfg, step: int, pad_id: int, rank: int, world: int) -> float:
    """One optimizer step (``gradient_accumulation`` micro-batches); the mean loss over micro-batches and ranks."""
    import torch
    import torch.distributed as dist

    from steermoe.finetune.data import collate

    losses = []
    for micro in range(cfg.gradient_accumulation):
        idx = batch_indices(len(examples), cfg.seed, step, micro, cfg, rank, world)
        batch = _to_device(collate([examples[i] for i in idx], pad_id), engine.device)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach().float())
    loss_t = torch.stack(losses).mean()
    if world > 1:
        dist.all_reduce(loss_t)
        loss_t /= world
    value = float(loss_t)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()  # the step's time is measured after this returns
    return value


def _run_metrics(engine, cfg, trainable: int, total: int, step_times: list[float], world: int) -> dict:
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / max(total, 1),
        # What the comparison shows per row: optimizer memory (this process) and the typical step time.
        "optimizer_state_bytes": optimizer_state_bytes(engine.optimizer),
        "step_seconds": float(sorted(step_times)[len(step_times) // 2]) if step_times else float("nan"),
        "world_size": world,
        "zero_stage": cfg.zero_stage,
        "precision": cfg.precision,
    }


def _heldout_metrics(before: dict, after: dict) -> dict:
    metrics = {f"heldout_{key}_loss_before": value for key, value in before.items()}
    metrics.update({f"heldout_{key}_loss_after": value for key, value in after.items()})
    if "all" in after:
        metrics["heldout_loss"] = after["all"]
    return metrics
