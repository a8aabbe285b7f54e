"""Selective parametrisation: only the selected experts' rows train, on every supported architecture."""

import pytest
import torch

from steermoe.errors import InputError
from steermoe.finetune.experts import count_parameters, materialize, prepare_selective, trainable_parameters
from steermoe.selection import ExpertSelection

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
ARCHS = {
    "qwen3_moe": dict(moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, head_dim=8),
    "qwen2_moe": dict(moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, eos_token_id=1, pad_token_id=0),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "deepseek_v3": dict(
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1, n_group=2,
        topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, num_key_value_heads=4,
    ),
}
SELECTION = ExpertSelection([(1, 0), (1, 3), (2, 5)], [0.3, 0.2, 0.1], "manual")


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, **{**SMALL, **ARCHS[arch]})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def assert_bit_identity(tuned: dict, base: dict, selection: ExpertSelection) -> None:
    """Every parameter and expert row outside ``selection`` equals the base bit for bit; every selected row changed."""
    by_layer = selection.by_layer()
    assert set(tuned) == set(base)
    touched = 0
    for name, value in tuned.items():
        parts = name.split(".")
        layer = int(parts[2]) if name.startswith("model.layers.") else None
        if ".mlp.experts." in name and layer in by_layer:
            sel = torch.tensor(sorted(by_layer[layer]))
            keep = torch.ones(value.shape[0], dtype=torch.bool)
            keep[sel] = False
            assert torch.equal(value[keep], base[name][keep]), f"{name}: an unselected expert moved"
            changed = (value[sel] != base[name][sel]).reshape(len(sel), -1).any(1)
            assert changed.all(), f"{name}: selected experts {sel[~changed].tolist()} did not change"
            touched += 1
        else:
            assert torch.equal(value, base[name]), f"{name} moved but is not a selected expert"
    assert touched >= 2 * len(by_layer)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_only_selected_rows_train_with_weight_decay(arch):
    model = tiny_model(arch)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    plan = prepare_selective(model, SELECTION)
    params = trainable_parameters(model)
    # Trainable tensors are the selected rows only: (n_selected_in_layer, ...).
    assert sorted({p.shape[0] for p in params}) == [1, 2]
    trainable, total = count_parameters(model)
    assert 0 < trainable < total / 5
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5)  # strong decay: it must not reach frozen rows
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(0, 128, (4, 12), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    materialize(model, plan)
    assert not any(p.requires_grad for p in model.parameters())
    assert_bit_identity(model.state_dict(), base, SELECTION)


def test_selection_outside_the_model_is_rejected():
    model = tiny_model("deepseek_v3")  # layer 0 is dense
    with pytest.raises(InputError, match="layer 0 is not an MoE layer"):
        prepare_selective(model, ExpertSelection([(0, 1)], [1.0], "manual"))
    with pytest.raises(InputError, match="outside 0..7"):
        prepare_selective(tiny_model("qwen3_moe"), ExpertSelection([(1, 9)], [1.0], "manual"))


def test_per_module_expert_layout_unfreezes_only_selected_modules():
    from torch import nn

    model = tiny_model("qwen3_moe")
    for layer in model.model.layers:  # an older per-module layout: experts[i] is its own MLP
        layer.mlp.experts = nn.ModuleList(nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 32)) for _ in range(8))
    plan = prepare_selective(model, SELECTION)
    assert plan.layout == "modules"
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"model.layers.{layer}.mlp.experts.{e}.{i}.{w}" for layer, e in SELECTION.experts for i in (0, 1) for w in ("weight", "bias")}
    assert trained == expected
