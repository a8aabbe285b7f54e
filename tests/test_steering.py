"""SteerMoE steering: bit-identical with an empty selection, forced experts always in the top-k, removed ones never."""

import pytest
import torch

from steermoe.adapters import moe_layers
from steermoe.errors import InputError
from steermoe.selection import ExpertSelection
from steermoe.steering import plan_steering, steer
from tests.fixtures.tiny_moe import TINY_CONFIGS, tiny_model

ARCHS = sorted(TINY_CONFIGS)
EMPTY = ExpertSelection([], [], "none")


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def _router_calls(model, ids):
    """Every router's (logits, weights, indices) for one forward pass, via forward hooks."""
    seen = []
    hooks = [m.router.register_forward_hook(lambda mod, a, out: seen.append(tuple(t.clone() for t in out))) for m in moe_layers(model)]
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def test_empty_selection_is_bit_identical(arch_model):
    arch, model = arch_model
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_calls = _router_calls(model, ids)
    with steer(model, EMPTY) as plan:
        assert plan == {}
        assert "forward" in moe_layers(model)[0].router.__dict__  # the re-implementation really runs
        logits, calls = _router_calls(model, ids)
    assert torch.equal(logits, ref_logits)
    for ours, theirs in zip(calls, ref_calls):
        assert len(ours) == len(theirs) == 3
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and torch.equal(a, b), arch
    assert "forward" not in moe_layers(model)[0].router.__dict__  # restored


def test_activate_and_deactivate(arch_model):
    arch, model = arch_model
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_calls = _router_calls(model, ids)
    layers = [m.layer for m in moe_layers(model)]
    # the expert layer 1 picks most often, to deactivate; one it picks least, to force on in layer 0
    counts0 = torch.bincount(ref_calls[0][2].flatten(), minlength=8)
    counts1 = torch.bincount(ref_calls[1][2].flatten(), minlength=8)
    forced, removed = int(counts0.argmin()), int(counts1.argmax())
    selection = ExpertSelection([(layers[0], forced)], [1.0], "test", negative=[(layers[1], removed)], negative_scores=[-1.0])
    with steer(model, selection):
        logits, calls = _router_calls(model, ids)
    assert (calls[0][2] == forced).any(dim=-1).all(), f"{arch}: forced expert missing from some token's top-k"
    assert not (calls[1][2] == removed).any(), f"{arch}: deactivated expert still chosen"
    assert not torch.equal(logits, ref_logits)
    weight_sums = calls[0][1].float().sum(-1)
    if getattr(moe_layers(model)[0].router, "norm_topk_prob", True):
        assert torch.allclose(weight_sums, torch.ones_like(weight_sums))
    else:  # top-k of the full softmax, not renormalised
        assert (weight_sums <= 1 + 1e-6).all()
    after, _ = _router_calls(model, ids)
    assert torch.equal(after, ref_logits)


def test_generation_under_steering(arch_model):
    arch, model = arch_model
    ids = torch.randint(1, 128, (2, 5), generator=torch.Generator().manual_seed(2))
    layer = moe_layers(model)[0].layer
    seen = []
    hook = moe_layers(model)[0].router.register_forward_hook(lambda m, a, out: seen.append(out[2].clone()))
    try:
        with steer(model, ExpertSelection([(layer, 5), (layer, 6)], [1.0, 0.5], "t")), torch.no_grad():
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        hook.remove()
    chosen = torch.cat(seen)  # (tokens over all steps, k)
    assert (chosen.sort(dim=-1).values == torch.tensor([5, 6])).all()


def test_plan_caps_activations_at_k_and_checks_input():
    sel = ExpertSelection([(0, 1), (0, 2), (0, 3), (1, 4)], [0.9, 0.8, 0.7, 0.5], "t", negative=[(1, 0)])
    with pytest.warns(UserWarning, match="keeping the first 2"):
        plan = plan_steering(sel, [0, 1], num_experts=8, top_k=2)
    assert plan[0].activate == (1, 2) and plan[1].activate == (4,) and plan[1].deactivate == (0,)
    with pytest.raises(InputError, match="not MoE layers"):
        plan_steering(ExpertSelection([(5, 1)], [1.0], "t"), [0, 1], 8, 2)
    with pytest.raises(InputError, match="out of range"):
        plan_steering(ExpertSelection([(0, 8)], [1.0], "t"), [0, 1], 8, 2)
    with pytest.raises(InputError, match="both activated and deactivated"):
        plan_steering(ExpertSelection([(0, 1)], [1.0], "t", negative=[(0, 1)]), [0, 1], 8, 2)


def test_unsupported_routing_is_a_clear_error():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "deepseek_v3", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1,
        n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(InputError, match="sigmoid_group_topk.*supported: softmax_topk"):
        with steer(model, EMPTY):
            pass
