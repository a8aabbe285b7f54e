"""The bit-identity guarantee, checked at run time: everything but the selected experts stays as it was.

Before training, :func:`frozen_snapshot` hashes every frozen tensor of the prepared model (one digest per
tensor; one per expert row for a fused expert tensor that holds selected experts, so the selected rows can
be left out). After training, :func:`verify_frozen` hashes them again and raises
:class:`~steermoe.errors.BitIdentityError` naming the first tensor (or expert row) that changed, before
any patch is written. Hashing streams one tensor at a time through the CPU (a CUDA tensor is hashed on its
device), so memory stays at one tensor and a 30 B-parameter model costs one read of its weights (no copy of
the model is kept).

Under ZeRO-3 every rank gathers each parameter in turn (a collective: all ranks walk the same order) and
hashes it itself, so every rank reaches the same verdict without a further collective.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from steermoe.errors import BitIdentityError

__all__ = ["FrozenSnapshot", "frozen_snapshot", "verify_frozen", "display_name", "tensor_digest"]

_PARAMETRIZED = ".parametrizations."


def display_name(name: str) -> str:
    """The base model's state-dict name of a (possibly parametrised) tensor:
    ``...experts.parametrizations.gate_up_proj.original`` -> ``...experts.gate_up_proj``."""
    if _PARAMETRIZED in name and name.endswith(".original"):
        owner, _, attr = name.removesuffix(".original").partition(_PARAMETRIZED)
        return f"{owner}.{attr}"
    return name


def tensor_digest(t: torch.Tensor) -> bytes:
    """128-bit BLAKE2b of a tensor's raw bytes (dtype and shape included, so a cast or reshape also differs).
    A CUDA tensor is digested where it is (:func:`steermoe.hashing.device_digest`): streaming a 61 GB model
    through a CPU hash takes minutes, on the GPU about a second."""
    t = t.detach()
    if t.device.type == "cuda":
        from steermoe.hashing import device_digest

        return device_digest(t)
    if t.device.type != "cpu":
        t = t.cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.digest()


@dataclass
class FrozenSnapshot:
    """Digests of a model's frozen tensors: ``whole[name]`` per tensor, ``rows[name]`` per expert row
    for fused tensors whose ``selected[name]`` rows are being trained."""

    whole: dict[str, bytes] = field(default_factory=dict)
    rows: dict[str, list[bytes]] = field(default_factory=dict)
    selected: dict[str, frozenset[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.whole) + len(self.rows)


def _selected_rows(plan) -> dict[str, frozenset[int]]:
    """Base name of each fused tensor -> the expert rows the plan trains (per-module experts are trainable
    parameters of their own, so they are simply not frozen)."""
    return {s.name: frozenset(s.experts) for s in (plan.slices if plan is not None else ()) if s.attr}


def _frozen_tensors(model: nn.Module):
    """(name, tensor, is_parameter) for every frozen parameter and every buffer, in a fixed order."""
    for name, p in model.named_parameters():
        if not p.requires_grad:
            yield name, p, True
    for name, b in model.named_buffers():
        yield name, b, False


def _gathered(p: torch.Tensor, zero3: bool):
    if zero3 and hasattr(p, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([p], enabled=True)
    return nullcontext()


def _digests(model: nn.Module, selected: dict[str, frozenset[int]], zero3: bool):
    for name, t, is_param in _frozen_tensors(model):
        base = display_name(name)
        with _gathered(t, zero3 and is_param):
            if base in selected:
                yield base, [tensor_digest(row) for row in t]  # (num_experts,) digests
            else:
                yield base, tensor_digest(t)


def frozen_snapshot(model: nn.Module, plan, zero3: bool = False) -> FrozenSnapshot:
    """Hash every frozen tensor of a model prepared by :func:`~steermoe.finetune.experts.prepare_selective`
    (before its first forward pass: the fused tensors still hold the base rows)."""
    selected = _selected_rows(plan)
    snap = FrozenSnapshot(selected=selected)
    for name, digest in _digests(model, selected, zero3):
        (snap.rows if isinstance(digest, list) else snap.whole)[name] = digest
    return snap


def verify_frozen(model: nn.Module, snapshot: FrozenSnapshot, zero3: bool = False) -> dict[str, int]:
    """Hash the frozen tensors again; raise :class:`BitIdentityError` naming the first one that changed.

    Returns what was checked: ``{"tensors": ..., "expert_rows": ...}`` (rows of fused tensors outside the
    selection), for the run's metrics."""
    seen: set[str] = set()
    changed: list[str] = []
    rows_checked = 0
    for name, digest in _digests(model, snapshot.selected, zero3):
        seen.add(name)
        if isinstance(digest, list):
            before = snapshot.rows.get(name)
            keep = [i for i in range(len(digest)) if i not in snapshot.selected[name]]
            rows_checked += len(keep)
            if before is None or len(before) != len(digest):
                changed.append(f"{name} (shape changed)")
            else:
                changed += [f"{name}[expert {i}]" for i in keep if before[i] != digest[i]]
        elif snapshot.whole.get(name) != digest:
            changed.append(name if name in snapshot.whole else f"{name} (not in the base model)")
    changed += [f"{n} (missing after training)" for n in (*snapshot.whole, *snapshot.rows) if n not in seen]
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise BitIdentityError(
            f"finetune: frozen tensor {changed[0]} changed during training{more}; no patch was written. "
            "Only the selected experts may change: this is a bug, please report it with your config"
        )
    return {"tensors": len(snapshot.whole) + len(snapshot.rows), "expert_rows": rows_checked}
