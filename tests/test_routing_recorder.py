"""RouterRecorder records exactly the experts each MoE block dispatched to, for every architecture."""

import numpy as np
import pytest
import torch

from steermoe.adapters import adapter_for, moe_layers
from steermoe.routing import RouterRecorder
from steermoe.routing.hf_backend import left_pad
from tests.routing_fixtures import ARCHS, make_model, one_thread  # noqa: F401 (autouse fixture)


def _reference_topk(arch, router, logits):
    """Top-k ids from ``output_router_logits``, by each family's published routing rule (independent of the hook)."""
    k = router.top_k
    if arch == "deepseek_v3":
        scores = logits.float().sigmoid() + router.e_score_correction_bias
        groups = scores.view(-1, router.num_group, router.num_experts // router.num_group)  # (T, G, E/G)
        best = groups.topk(2, dim=-1).values.sum(-1).topk(router.topk_group, dim=-1).indices  # (T, topk_group)
        keep = torch.zeros_like(groups[..., 0], dtype=torch.bool).scatter_(1, best, True)  # (T, G)
        scores = scores.masked_fill(~keep.unsqueeze(-1).expand_as(groups).reshape(scores.shape), float("-inf"))
        return scores.topk(k, dim=-1).indices
    if arch == "gpt_oss":
        return logits.topk(k, dim=-1).indices
    return logits.float().softmax(-1).topk(k, dim=-1).indices


def _sets(a):
    return np.sort(np.asarray(a), axis=-1)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_recorded_topk_equals_dispatched_experts(arch):
    model = make_model(arch)
    layers = moe_layers(model)
    dispatched = {m.layer: [] for m in layers}

    def experts_hook(layer):
        def hook(module, args, kwargs):
            idx = kwargs.get("top_k_index", args[1] if len(args) > 1 else None)  # what the experts module was told to run
            dispatched[layer].append(idx.detach().clone())

        return hook

    handles = [m.experts.register_forward_pre_hook(experts_hook(m.layer), with_kwargs=True) for m in layers]
    rows = [[5 + (i * 3 + j) % 60 for j in range(4 + 3 * i)] for i in range(3)]  # different lengths: padded batch
    ids, mask, pos = left_pad(rows, 0, "cpu")
    try:
        with RouterRecorder(model, logits=True, weights=True) as rec, torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_router_logits=True)
        cap = rec.stacked()  # (T, L, k)
    finally:
        for h in handles:
            h.remove()
    expected_layers = [1, 2] if arch == "deepseek_v3" else [0, 1, 2]  # first_k_dense_replace=1 keeps true numbering
    assert rec.layers == expected_layers
    assert cap.experts.dtype == np.int16 and cap.experts.shape == (ids.numel(), len(expected_layers), 2)
    real = mask.reshape(-1).bool().numpy()
    for slot, m in enumerate(layers):
        got = _sets(cap.experts[real, slot])
        sent = _sets(torch.cat(dispatched[m.layer]).numpy()[real])
        ref = _sets(_reference_topk(arch, m.router, out.router_logits[slot]).numpy()[real])
        np.testing.assert_array_equal(got, sent)
        np.testing.assert_array_equal(got, ref)
    assert cap.logits.shape == (ids.numel(), len(expected_layers), 8) and cap.logits.dtype == np.float16
    assert cap.weights.shape == cap.experts.shape


def test_recorder_removes_hooks_and_resets():
    model = make_model("qwen3_moe")
    ids = torch.tensor([[5, 6, 7]])
    with RouterRecorder(model) as rec, torch.no_grad():
        model(input_ids=ids)
        model(input_ids=ids)
        assert rec.stacked().experts.shape == (6, 3, 2)
        rec.reset()
        assert rec.stacked().experts.shape == (0, 3, 2)
    assert all(not m.router._forward_hooks for m in moe_layers(model))


def test_batch_mode_rejects_mismatched_batch():
    model = make_model("olmoe")
    with RouterRecorder(model) as rec, torch.no_grad():
        rec.start_batch(batch=2, capacity=8)
        with pytest.raises(AssertionError):
            model(input_ids=torch.tensor([[5, 6, 7]]))  # 3 tokens cannot be 2 rows
        rec.abort_batch()


def test_adapter_is_needed_for_unknown_model_types():
    from transformers import AutoConfig

    from steermoe.errors import InputError

    with pytest.raises(InputError, match="no architecture adapter"):
        adapter_for(AutoConfig.for_model("llama"))
