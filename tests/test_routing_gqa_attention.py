"""Folded grouped-query SDPA (the static decoder's attention on CUDA) computes transformers' sdpa attention."""

import numpy as np
import pytest
import torch

from steermoe.generation import GenerationSettings
from steermoe.routing.collect import tokenize_prompts
from steermoe.routing.gqa_attention import grouped_query_sdpa
from steermoe.routing.hf_backend import generate_batch
from steermoe.routing.static_decode import StaticDecoder
from tests.routing_fixtures import make_model, make_prompts, make_tokenizer, one_thread  # noqa: F401 (autouse fixture)


class _Attention(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("q_len", [1, 5])
def test_folded_heads_equal_repeated_heads_under_a_padding_mask(q_len):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    b, heads, kv_heads, cache, dim = 3, 8, 2, 11, 16
    q = torch.randn(b, heads, q_len, dim, dtype=torch.float64)
    k, v = torch.randn(b, kv_heads, cache, dim, dtype=torch.float64), torch.randn(b, kv_heads, cache, dim, dtype=torch.float64)
    mask = torch.rand(b, 1, q_len, cache) > 0.3
    mask[..., -1] = True  # every query row attends to something
    module = _Attention(heads // kv_heads).eval()
    ours, _ = grouped_query_sdpa(module, q, k, v, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (b, q_len, heads, dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_static_decoder_with_folded_heads_decodes_and_records_like_generate():
    """Folding is the default on CUDA only; forced on here, the CPU eager loop must still match ``generate`` (tokens)
    and the unfolded decoder (every recorded expert set, which the other tests tie to ``generate``)."""
    from steermoe.routing.recorder import RouterRecorder

    tok = make_tokenizer()
    model = make_model("qwen3_moe")
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # really grouped
    ids = tokenize_prompts(tok, make_prompts(6), None)

    def decoder(fold):
        return StaticDecoder(model, GenerationSettings(max_new_tokens=10), pad_token_id=tok.pad_token_id, eos_token_ids=[2], gqa_attention=fold)

    folded, plain = decoder(True), decoder(False)
    assert folded.gqa_attention and not plain.gqa_attention
    assert folded(ids) == generate_batch(model, tok, ids, GenerationSettings(max_new_tokens=10))
    assert model.config._attn_implementation == "sdpa"  # restored after decoding
    caps = []
    for dec in (folded, plain):
        with RouterRecorder(model) as rec:
            out, filled = dec.generate(ids, recorder=rec)
            caps.append((out, rec.end_batch(filled)))
    assert caps[0][0] == caps[1][0]
    np.testing.assert_array_equal(caps[0][1].experts, caps[1][1].experts)
