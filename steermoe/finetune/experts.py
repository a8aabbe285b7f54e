"""Selective parametrisation: only the selected experts' slices are trainable parameters.

transformers 5 fuses the experts of a block into 3D tensors (``experts.gate_up_proj`` is
``[num_experts, ...]``), so ``requires_grad`` cannot pick single experts. Instead every fused tensor
that holds a selected expert stays a *frozen* parameter, and a small trainable parameter of shape
``(n_selected_in_layer, ...)`` is written into its selected rows at each forward pass
(:class:`ExpertRows`, registered with :mod:`torch.nn.utils.parametrize`). Gradients and optimizer
states therefore exist for the selected experts only, and nothing outside them can move: the frozen
rows are never written, and weight decay only sees the small parameters.

Per-module layouts (``experts`` an ``nn.ModuleList`` of MLPs) need no trick: the selected expert
modules' parameters are simply unfrozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from steermoe.adapters import adapter_for, moe_layers
from steermoe.errors import InputError

__all__ = [
    "ExpertRows",
    "TrainedSlice",
    "SelectivePlan",
    "prepare_selective",
    "prepare_full",
    "materialize",
    "trainable_parameters",
    "count_parameters",
    "moe_block_classes",
]


class _WriteRows(torch.autograd.Function):
    """Write ``rows`` into ``base[index]`` in place and return ``base`` as a tensor that carries the gradient.

    Only the selected rows are copied (no full-size copy per forward); the backward gathers the
    gradient of those rows. ``base`` is a frozen parameter, so autograd never touches the others.
    """

    @staticmethod
    def forward(ctx, base, rows, index):
        ctx.save_for_backward(index)
        base.index_copy_(0, index, rows.to(base.dtype))
        # A new tensor on the same storage, not a view: ZeRO-3 swaps ``base.data`` after the forward,
        # and a view would be replayed from the swapped (empty) parameter in the backward.
        return torch.empty(0, dtype=base.dtype, device=base.device).set_(base.untyped_storage(), base.storage_offset(), base.shape, base.stride())

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return None, grad.index_select(0, index), None  # (n_selected, ...)


class ExpertRows(nn.Module):
    """Parametrisation of one fused expert tensor: trainable rows for the selected experts only.

    The trainable ``rows`` parameter is registered on the experts module itself (as ``<name>_rows``),
    not on this parametrisation: ZeRO-3 then gathers and releases it with the MoE block (a leaf
    module), instead of treating this helper as a sub-module of its own.
    """

    def __init__(self, experts_module: nn.Module, attr: str, experts: list[int]):
        super().__init__()
        base = getattr(experts_module, attr)
        index = torch.tensor(sorted(experts), dtype=torch.long, device=base.device)
        self.register_buffer("index", index, persistent=False)
        rows = nn.Parameter(base.detach().index_select(0, index).clone())  # (n_selected, ...)
        experts_module.register_parameter(f"{attr}_rows", rows)
        object.__setattr__(self, "_owner", experts_module)  # a plain reference, not a sub-module
        self.rows_name = f"{attr}_rows"

    @property
    def rows(self) -> nn.Parameter:
        return self._owner._parameters[self.rows_name]

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        index = self.index.to(base.device)
        return _WriteRows.apply(base, self.rows, index)


@dataclass(frozen=True)
class TrainedSlice:
    """One trainable piece: parameter ``name`` (state-dict name in the base model), rows ``experts``."""

    layer: int
    name: str
    experts: tuple[int, ...]
    module: nn.Module  # the ExpertRows (fused) or the expert's own module (per-module layout)
    attr: str  # the fused attribute name, or "" for a per-module expert


@dataclass
class SelectivePlan:
    """What :func:`prepare_selective` made trainable, for patches and reports."""

    arch: str
    slices: list[TrainedSlice]
    layout: str  # "fused" or "modules"


def _check_selection(layers: dict, by_layer: dict[int, list[int]], num_experts: int) -> None:
    from steermoe.preflight import check_experts

    check_experts(by_layer, layers, num_experts)


def _fused_names(adapter, experts_module) -> list[str]:
    names = [n for n in adapter.expert_params if isinstance(getattr(experts_module, n, None), nn.Parameter)]
    if not names:
        raise InputError(f"{type(experts_module).__name__}: none of the fused expert tensors {adapter.expert_params} found")
    return names


def prepare_selective(model: nn.Module, selection) -> SelectivePlan:
    """Freeze the whole model, then make the selected experts (and only those) trainable."""
    adapter = adapter_for(model)
    num_experts = adapter.num_experts(model.config)
    layers = {m.layer: m for m in moe_layers(model, adapter)}
    by_layer = {layer: sorted(set(es)) for layer, es in selection.by_layer().items()}
    _check_selection(layers, by_layer, num_experts)
    if not by_layer:
        raise InputError("selection: no experts selected; nothing to fine-tune")
    model.requires_grad_(False)
    names = {id(p): n for n, p in model.named_parameters()}
    module_names = {id(m): n for n, m in model.named_modules()}
    slices: list[TrainedSlice] = []
    layout = "fused"
    for layer, experts in sorted(by_layer.items()):
        module = layers[layer].experts
        if isinstance(module, nn.ModuleList):
            layout = "modules"
            for e in experts:
                module[e].requires_grad_(True)
                slices.append(TrainedSlice(layer, module_names[id(module[e])], (e,), module[e], ""))
            continue
        for attr in _fused_names(adapter, module):
            name = names[id(getattr(module, attr))]
            rows = ExpertRows(module, attr, experts)
            parametrize.register_parametrization(module, attr, rows, unsafe=True)
            slices.append(TrainedSlice(layer, name, tuple(experts), rows, attr))
    return SelectivePlan(model.config.model_type, slices, layout)


def prepare_full(model: nn.Module) -> None:
    """Full fine-tuning baseline: every parameter trainable."""
    model.requires_grad_(True)


def materialize(model: nn.Module, plan: SelectivePlan) -> None:
    """Write the trained rows into the fused tensors and drop the parametrisations (plain HF model again)."""
    with torch.no_grad():
        for s in plan.slices:
            if not s.attr:
                continue
            experts_module = _owner_of(model, s)
            original = experts_module.parametrizations[s.attr].original
            original.index_copy_(0, s.module.index.to(original.device), s.module.rows.to(original.dtype))
            parametrize.remove_parametrizations(experts_module, s.attr, leave_parametrized=False)
            del experts_module._parameters[s.module.rows_name]
    model.requires_grad_(False)


def _owner_of(model: nn.Module, s: TrainedSlice) -> nn.Module:
    path = s.name.rsplit(".", 1)[0]
    return model.get_submodule(path)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; the frozen fused originals count once, the trained rows not twice."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters() if not p.requires_grad)
    if not any(isinstance(m, ExpertRows) for m in model.modules()):
        total += trainable
    return trainable, total


def _numel(p: torch.Tensor) -> int:
    # ZeRO-3 partitions parameters; their full size is in ds_numel.
    return int(getattr(p, "ds_numel", p.numel()))


def moe_block_classes(model: nn.Module) -> list[type]:
    """Classes of the MoE blocks: ZeRO-3 must gather each block whole (leaf modules)."""
    return sorted({type(m.block) for m in moe_layers(model)}, key=lambda c: c.__name__)
