"""Architecture adapters: where an MoE model keeps its routers and experts, and how to read them.

One registry entry per ``config.model_type``. Every stage that touches experts (routing capture,
fine-tuning masks, steering) goes through an adapter, so adding a model is one entry here.

transformers 5 stores the experts of a block *fused*: ``experts.gate_up_proj`` is
``[num_experts, ...]``. Routers return ``(logits, weights, indices)``; the adapter reads the indices
the router itself returned (never a top-k recomputed from logits: GPT-OSS and DeepSeek-V3 route
differently from a plain softmax top-k).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steermoe.errors import InputError
from steermoe.registry import Registry

__all__ = ["ArchitectureAdapter", "MoELayer", "ADAPTERS", "adapter_for", "moe_layers"]


@dataclass(frozen=True)
class ArchitectureAdapter:
    """How one model family lays out its MoE blocks.

    ``router``/``experts`` are attribute names on the MoE block; ``expert_params`` are the fused
    per-expert tensors on the experts module (first dim = expert); ``shared`` names shared-expert
    submodules that are always active (noted, never counted as routed); ``num_experts_key`` and
    ``top_k_key`` are config attributes.
    """

    model_type: str
    router: str = "gate"
    experts: str = "experts"
    expert_params: tuple[str, ...] = ("gate_up_proj", "down_proj")
    shared: tuple[str, ...] = ()
    num_experts_key: str = "num_experts"
    top_k_key: str = "num_experts_per_tok"
    routing: str = "softmax_topk"  # documentation only: how the router turns logits into a top-k
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def num_experts(self, config) -> int:
        return int(getattr(config, self.num_experts_key))

    def top_k(self, config) -> int:
        return int(getattr(config, self.top_k_key))

    def is_moe_block(self, module) -> bool:
        return hasattr(module, self.router) and hasattr(module, self.experts)

    def router_module(self, block):
        return getattr(block, self.router)

    def experts_module(self, block):
        return getattr(block, self.experts)

    @staticmethod
    def parse_router_output(output) -> tuple[Any, Any | None, Any | None]:
        """Split a router's output into ``(indices, weights, logits)``.

        Indices are the integer tensor; logits the float tensor with one column per expert;
        weights the float tensor with one column per chosen expert.
        """
        import torch

        tensors = output if isinstance(output, (tuple, list)) else (output,)
        indices = next((t for t in tensors if torch.is_tensor(t) and not t.is_floating_point()), None)
        floats = [t for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
        if indices is None:
            raise RuntimeError("router output has no integer expert-index tensor; the adapter needs updating")
        k = indices.shape[-1]
        weights = next((t for t in floats if t.shape[-1] == k), None)
        logits = next((t for t in floats if t.shape[-1] != k), None)
        return indices, weights, logits


ADAPTERS: Registry[ArchitectureAdapter] = Registry("architecture")

ADAPTERS.register("qwen3_moe", ArchitectureAdapter("qwen3_moe", notes="softmax over experts, then top-k"))
ADAPTERS.register(
    "qwen2_moe",
    ArchitectureAdapter("qwen2_moe", shared=("shared_expert", "shared_expert_gate"), notes="plus a gated shared expert"),
)
ADAPTERS.register("olmoe", ArchitectureAdapter("olmoe"))
ADAPTERS.register("mixtral", ArchitectureAdapter("mixtral", num_experts_key="num_local_experts"))
ADAPTERS.register(
    "gpt_oss",
    ArchitectureAdapter(
        "gpt_oss",
        router="router",
        expert_params=("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"),
        num_experts_key="num_local_experts",
        routing="topk_softmax",
        notes="top-k of logits, then softmax over the chosen; experts have biases",
    ),
)
ADAPTERS.register(
    "deepseek_v3",
    ArchitectureAdapter(
        "deepseek_v3",
        shared=("shared_experts",),
        num_experts_key="n_routed_experts",
        routing="sigmoid_group_topk",
        notes="sigmoid scores plus a correction bias, top groups then top-k; first_k_dense_replace layers are dense",
    ),
)


def adapter_for(model_or_config) -> ArchitectureAdapter:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise InputError(
            f"model type {model_type!r} has no architecture adapter; supported: {', '.join(ADAPTERS.names())} "
            "(add one entry in steermoe/adapters.py)"
        )
    return ADAPTERS.get(model_type)


@dataclass(frozen=True)
class MoELayer:
    """An MoE block and its true decoder-layer index (dense layers keep their numbers)."""

    layer: int
    block: Any
    router: Any
    experts: Any


def moe_layers(model, adapter: ArchitectureAdapter | None = None) -> list[MoELayer]:
    """Every MoE block of a causal LM, in layer order, with the model's own layer numbering."""
    adapter = adapter or adapter_for(model)
    decoder = getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise InputError(f"{type(model).__name__}: no decoder layers found at .model.layers")
    found = []
    for index, layer in enumerate(layers):
        block = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe", None)
        if block is not None and adapter.is_moe_block(block):
            found.append(MoELayer(index, block, adapter.router_module(block), adapter.experts_module(block)))
    if not found:
        raise InputError(f"{type(model).__name__}: no MoE blocks found; is this a Mixture-of-Experts model?")
    return found
