"""Inference-time steering in the SteerMoE manner: force experts on or off at every router.

SteerMoE (Fayyaz et al. 2025, "Steering MoE LLMs via Expert (De)Activation") edits the router's
log-probabilities before top-k: an expert to activate gets a value just above the token's maximum, an
expert to deactivate just below its minimum, so the former always enter the top-k and the latter never
do, while every other expert keeps its relative order. At most k experts per layer are activated.

transformers routers compute top-k inside their own ``forward``, so :func:`steer` replaces each
router's ``forward`` (restored on exit) with a re-implementation of that router family's routing that
applies the edit. Layers with nothing to steer run the same re-implementation without the edit, which
matches the original router bit for bit (tested), so a steered model differs only where asked.
Forward hooks on the routers (routing capture) still run and see the steered choices.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from steermoe.adapters import adapter_for, moe_layers
from steermoe.errors import InputError
from steermoe.selection import ExpertSelection

__all__ = ["SUPPORTED_ROUTING", "LayerSteering", "plan_steering", "steer"]

# routing kind -> description; kinds come from ArchitectureAdapter.routing.
SUPPORTED_ROUTING = {
    "softmax_topk": "softmax over all experts, then top-k (Qwen2/3-MoE, OLMoE, Mixtral)",
    "topk_softmax": "top-k of the logits, then softmax over the chosen (GPT-OSS)",
}
# Router families whose top-k weights stay float32 (the others cast back to the logits' dtype).
_KEEP_FLOAT_WEIGHTS = {"mixtral"}


@dataclass(frozen=True)
class LayerSteering:
    """Experts to force on and off in one MoE layer (``layer`` = the model's decoder-layer index)."""

    layer: int
    activate: tuple[int, ...]
    deactivate: tuple[int, ...]


def plan_steering(selection: ExpertSelection, layers: list[int], num_experts: int, top_k: int) -> dict[int, LayerSteering]:
    """Group a selection by layer, check it against the model, and cap activations at ``top_k`` per
    layer (keeping the selection's order, i.e. the highest-scored first)."""
    unknown = sorted({layer for layer, _ in selection.experts + selection.negative} - set(layers))
    if unknown:
        raise InputError(f"steering: layers {unknown} are not MoE layers of this model (MoE layers: {layers})")
    for layer, expert in selection.experts + selection.negative:
        if not 0 <= expert < num_experts:
            raise InputError(f"steering: expert {expert} of layer {layer} is out of range; the model has {num_experts} experts per layer")
    overlap = sorted(set(selection.experts) & set(selection.negative))
    if overlap:
        raise InputError(f"steering: {overlap} are both activated and deactivated; remove them from one list")
    plan: dict[int, LayerSteering] = {}
    for layer in layers:
        act = list(dict.fromkeys(e for lay, e in selection.experts if lay == layer))
        deact = tuple(dict.fromkeys(e for lay, e in selection.negative if lay == layer))
        if len(act) > top_k:
            warnings.warn(f"steering: layer {layer} asks to activate {len(act)} experts; keeping the first {top_k} (top-k)", stacklevel=3)
            act = act[:top_k]
        if act or deact:
            plan[layer] = LayerSteering(layer, tuple(act), deact)
    return plan


def _steering_indices(steering: LayerSteering, device):
    """(activate, deactivate) expert indices as device tensors (None where empty)."""
    import torch

    def as_tensor(experts):
        return torch.tensor(experts, device=device) if experts else None

    return as_tensor(steering.activate), as_tensor(steering.deactivate)


def _edit_log_probs(logits, steering: LayerSteering, epsilon: float, indices=None):
    """SteerMoE's edit on router log-probabilities ``(tokens, experts)``, in float32. ``indices`` (from
    :func:`_steering_indices`) keeps host-to-device copies out of the step, so a CUDA graph can capture it."""
    import torch

    activate, deactivate = indices if indices is not None else _steering_indices(steering, logits.device)
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (T, E)
    top = log_probs.max(dim=-1, keepdim=True).values  # (T, 1)
    bottom = log_probs.min(dim=-1, keepdim=True).values  # (T, 1)
    if activate is not None:
        log_probs[:, activate] = (top + epsilon).expand(-1, len(activate))
    if deactivate is not None:
        log_probs[:, deactivate] = (bottom - epsilon).expand(-1, len(deactivate))
    return log_probs


def _make_forward(router, kind: str, steering: LayerSteering | None, keep_float: bool, epsilon: float):
    """A replacement ``forward`` returning ``(logits, weights, indices)`` like the original."""
    import torch
    import torch.nn.functional as F

    top_k = router.top_k
    normalise = getattr(router, "norm_topk_prob", True)  # Mixtral's router always renormalises
    bias = getattr(router, "bias", None)
    steer_index: dict = {}  # device -> (activate, deactivate), made on the first (eager) call

    def forward(hidden_states):
        hidden_states = hidden_states.reshape(-1, router.weight.shape[1])  # (T, hidden)
        logits = F.linear(hidden_states, router.weight, bias)  # (T, E)
        if steering is not None and logits.device not in steer_index:
            steer_index[logits.device] = _steering_indices(steering, logits.device)
        scores = logits if steering is None else _edit_log_probs(logits, steering, epsilon, steer_index[logits.device])
        if kind == "softmax_topk":
            probs = torch.softmax(scores, dim=-1, dtype=torch.float)  # (T, E)
            weights, indices = torch.topk(probs, top_k, dim=-1)  # (T, k)
            if normalise:
                weights /= weights.sum(dim=-1, keepdim=True)
            if not keep_float:
                weights = weights.to(logits.dtype)
        else:  # topk_softmax
            top, indices = torch.topk(scores, top_k, dim=-1)  # (T, k)
            weights = torch.softmax(top, dim=1, dtype=top.dtype).to(logits.dtype)
        # Steered layers report the edited log-probabilities, so logits and indices stay consistent.
        return (logits if steering is None else scores.to(logits.dtype)), weights, indices

    return forward


@contextmanager
def steer(model, selection: ExpertSelection, epsilon: float = 1e-2) -> Iterator[dict[int, LayerSteering]]:
    """Within the block, every router of ``model`` activates ``selection.experts`` and deactivates
    ``selection.negative`` (per layer, at most top-k activations). Yields the per-layer plan.

    Works for the ``softmax_topk`` and ``topk_softmax`` routing kinds; other kinds (DeepSeek-V3's
    grouped sigmoid routing) raise :class:`InputError`.
    """
    adapter = adapter_for(model)
    if adapter.routing not in SUPPORTED_ROUTING:
        raise InputError(
            f"steering: {adapter.model_type} routes with {adapter.routing!r}, which steering does not support; "
            f"supported: {', '.join(f'{k} ({v})' for k, v in SUPPORTED_ROUTING.items())}"
        )
    blocks = moe_layers(model, adapter)
    plan = plan_steering(selection, [b.layer for b in blocks], adapter.num_experts(model.config), adapter.top_k(model.config))
    keep_float = adapter.model_type in _KEEP_FLOAT_WEIGHTS
    saved = []
    try:
        for block in blocks:
            router = block.router
            if not hasattr(router, "weight") or not hasattr(router, "top_k"):
                raise InputError(f"steering: the router of layer {block.layer} ({type(router).__name__}) has no weight/top_k; update steermoe/steering.py")
            # An instance attribute shadows the class's forward; nn.Module.__call__ (and its hooks) use it.
            saved.append((router, router.__dict__.get("forward")))
            router.forward = _make_forward(router, adapter.routing, plan.get(block.layer), keep_float, epsilon)
        yield plan
    finally:
        for router, previous in saved:
            if previous is None:
                del router.forward
            else:
                router.forward = previous
