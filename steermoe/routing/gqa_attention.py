"""Masked grouped-query attention without copying the KV cache: the static decoder's attention on CUDA.

transformers' ``sdpa`` attention on CUDA repeats the key and value heads to the query heads (``repeat_kv``)
whenever a mask is given, because the fused kernels that take a mask do not take grouped heads. At decode time
that copies the whole cache twice per layer per step: at batch 256, a 192-token cache and Qwen3-30B-A3B's 32
query / 4 key-value heads, 2 x 0.4 GB per layer (the "weight-sized device-to-device copies" of the static
decoder's profile, about a fifth of its step). Here the query heads that share a key-value head are folded into
the query length instead: ``(B, H, Q, D) -> (B, H_kv, (H / H_kv) * Q, D)``, so one SDPA call over the
un-repeated cache computes the same attention (every folded query row sees its own row's mask), with the
memory-efficient kernel rather than the math fallback.
"""

from __future__ import annotations

__all__ = ["GQA_SDPA", "grouped_query_sdpa", "register"]

GQA_SDPA = "steermoe_gqa_sdpa"


def grouped_query_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """Same signature and result layout as transformers' ``sdpa_attention_forward``: ``((B, Q, H, D), None)``."""
    import torch

    b, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if groups == 1 or attention_mask is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # Query head j uses key-value head j // groups (repeat_kv's order): fold each group into the query length.
    folded = query.reshape(b, kv_heads, groups * q_len, dim)
    mask = attention_mask[:, :, -q_len:, : key.shape[2]]  # (B or 1, 1, Q, L)
    if q_len > 1:
        mask = mask[:, :, None].expand(mask.shape[0], mask.shape[1], groups, q_len, mask.shape[-1])
        mask = mask.reshape(mask.shape[0], mask.shape[1], groups * q_len, mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=mask, dropout_p=dropout if module.training else 0.0, scale=scaling,
    )  # (B, H_kv, groups * Q, D)
    out = out.reshape(b, heads, q_len, dim).transpose(1, 2).contiguous()
    return out, None


def register() -> str:
    """Register the attention (and the sdpa mask builder under its name) with transformers; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GQA_SDPA, grouped_query_sdpa)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)
    return GQA_SDPA
