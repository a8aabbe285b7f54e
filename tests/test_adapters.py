"""Architecture adapters: every registered family finds its MoE blocks, routers and experts with true layer numbers."""

import pytest

from steermoe.adapters import ADAPTERS, adapter_for, moe_layers
from steermoe.errors import InputError
from tests.routing_fixtures import ARCHS, make_model, one_thread  # noqa: F401 (autouse fixture)


def test_every_supported_architecture_is_registered():
    assert set(ARCHS) <= set(ADAPTERS.names())
    with pytest.raises(ValueError, match="already registered"):
        ADAPTERS.register("qwen3_moe", ADAPTERS.get("qwen3_moe"))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_moe_layers_router_and_experts(arch):
    model = make_model(arch)
    adapter = adapter_for(model)
    layers = moe_layers(model)
    assert [m.layer for m in layers] == ([1, 2] if arch == "deepseek_v3" else [0, 1, 2])
    assert adapter.num_experts(model.config) == 8 and adapter.top_k(model.config) == 2
    for m in layers:
        assert m.router is getattr(m.block, adapter.router) and m.experts is getattr(m.block, adapter.experts)
        for name in adapter.expert_params:
            assert getattr(m.experts, name).shape[0] == 8  # fused: first dim is the expert
        for name in adapter.shared:
            assert hasattr(m.block, name)  # shared experts exist and are noted, never routed


def test_a_dense_model_has_no_moe_layers():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3_moe", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=8, vocab_size=32, num_experts=4, moe_intermediate_size=8,
                                  mlp_only_layers=[0])
    with pytest.raises(InputError, match="no MoE blocks"):
        moe_layers(AutoModelForCausalLM.from_config(config))
