"""Tiny random MoE models of every supported architecture and a word-level chat tokenizer (built offline)."""

from __future__ import annotations

import pandas as pd
import pytest

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
ARCHS = {
    "qwen3_moe": dict(moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, head_dim=8),
    "qwen2_moe": dict(moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "deepseek_v3": dict(
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1, n_group=2,
        topk_group=1, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
    ),
}
SPECIALS = ["<pad>", "<unk>", "<eos>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "how do i bake bread cake soup tea number break into locked account door car phone user assistant system "
    "what is the best way to make a plan for garden water plants write poem about sea sky please help me with my "
    "homework explain why cats sleep so much tell story short long red blue green one two three four five"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(WORDS)))}
    assert len(vocab) <= SMALL["vocab_size"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def make_model(arch: str, seed: int = 0, dtype=None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, **{**SMALL, **ARCHS[arch]}, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    with torch.no_grad():
        # Random init gives near-uniform routers; sharper routers make top-k ties (and flips) rare, as in trained models.
        for name, p in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")):
                p.normal_(0, 1.0)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    return model.eval()


def make_prompts(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        words = WORDS[(i * 7) % 40 : (i * 7) % 40 + 2 + (i * 5) % 11]  # lengths differ: left padding is exercised
        rows.append({
            "id": f"p{i}", "prompt": " ".join(words), "messages": None, "label": "unsafe" if i % 2 else "safe",
            "category": "demo", "source": "fixture", "split": "train",
        })
    return pd.DataFrame(rows, dtype=object)


def recorded_tokens(store):
    """(seq, segment, position, token_id, sorted expert sets) of every token a store recorded, concatenated."""
    import numpy as np

    parts = [(s.seq, s.segment, s.position, s.token_id, np.sort(s.experts, -1)) for s in store.iter_shards()]
    return [np.concatenate(p) for p in zip(*parts)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two cores shared with other test processes thrash otherwise."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def routing_kwargs(**flat) -> dict:
    """Flat keyword settings (spelled as the config's ``generation`` and ``routing`` keys, plus ``engine``) as
    :func:`~steermoe.routing.collect_routing`'s ``generation`` and ``routing`` objects; other keywords pass through."""
    from dataclasses import fields

    from steermoe.generation import GenerationSettings
    from steermoe.routing.collect import RoutingSettings

    def take(cls):
        return cls(**{f.name: flat.pop(f.name) for f in fields(cls) if f.name in flat})

    generation, routing = take(GenerationSettings), take(RoutingSettings)
    return {"generation": generation, "routing": routing, **flat}
