"""The demo model's training loop: next-token loss on answers plus the routing prior."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["TrainResult", "model_config", "encode_examples", "designed_unsafe_experts", "train_model"]


@dataclass
class TrainResult:
    losses: list[float]
    final_loss: float
    seconds: float


def model_config(recipe, vocab_size: int, pad_id: int, eos_id: int):
    """A standard transformers config of the recipe's architecture (what vLLM reads too)."""
    from transformers import AutoConfig

    common = dict(
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max(256, recipe.max_length * 2),
        num_experts_per_tok=recipe.experts_per_token,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
        intermediate_size=recipe.expert_intermediate_size,
    )
    per_arch = {
        "qwen3_moe": dict(
            num_experts=recipe.num_experts, moe_intermediate_size=recipe.expert_intermediate_size,
            head_dim=recipe.head_dim, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        ),
        "olmoe": dict(num_experts=recipe.num_experts, norm_topk_prob=True),
        "mixtral": dict(num_local_experts=recipe.num_experts, head_dim=recipe.head_dim),
    }
    return AutoConfig.for_model(recipe.arch, **common, **per_arch[recipe.arch])


def encode_examples(examples, tokenizer, max_length: int, prior_span: str = "answer"):
    """(token ids, where the answer starts, where the routing prior starts, unsafe) per example. The prior covers
    the answer and the last prompt token (``prior_span="answer"``) or the answer and the whole assistant header from
    the user turn's end marker on (``"header"``): header tokens have read the whole request, like the answer's."""
    from steermoe.demo.corpus import IM_END, answer_text, render_user_turn

    if prior_span not in ("answer", "header"):
        raise ValueError(f"routing_prior_span {prior_span!r}: choose 'answer' or 'header'")
    end_id = tokenizer.token_to_id(IM_END)
    encoded = []
    for ex in examples:
        prompt_ids = tokenizer.encode(render_user_turn(ex.prompt)).ids
        answer_ids = tokenizer.encode(answer_text(ex.answer)).ids
        if len(prompt_ids) >= max_length:  # no room left for the answer: keep the prompt's end (and its assistant header)
            prompt_ids = prompt_ids[-(max_length // 2) :]
        ids = (prompt_ids + answer_ids)[:max_length]
        answer_from = len(prompt_ids)
        prior_from = answer_from - 1
        if prior_span == "header":
            prior_from = len(prompt_ids) - 1 - prompt_ids[::-1].index(end_id)
        encoded.append((ids, answer_from, prior_from, ex.label == "unsafe"))
    return encoded


def designed_unsafe_experts(recipe) -> dict[int, list[int]]:
    """layer -> the experts the routing prior pulls unsafe answers onto (seeded, per layer)."""
    import torch

    gen = torch.Generator().manual_seed(recipe.seed + 1)
    return {
        layer: sorted(torch.randperm(recipe.num_experts, generator=gen)[: recipe.unsafe_experts_per_layer].tolist())
        for layer in range(recipe.num_layers)
    }


def _batch(encoded, idx, pad_id):
    import torch

    rows = [encoded[i] for i in idx]
    width = max(len(ids) for ids, *_ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    prior_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    unsafe = torch.tensor([u for *_, u in rows])
    for r, (ids, start, prior_from, _) in enumerate(rows):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids)
        attention[r, :n] = 1
        labels[r, start:n] = input_ids[r, start:n]
        # The last prompt token predicts the first answer token: the decision point is routed too.
        prior_mask[r, prior_from:n] = True
    return input_ids, attention, labels, prior_mask, unsafe


def _prior_loss(router_logits, layers, unsafe_experts, prior_mask, unsafe):
    """Pull router mass of unsafe answer tokens onto the designed experts, push safe tokens' mass off."""
    import torch

    flat_mask = prior_mask.reshape(-1)  # (B*T,)
    token_unsafe = unsafe[:, None].expand_as(prior_mask).reshape(-1)[flat_mask]  # (N,)
    total = 0.0
    for layer, logits in zip(layers, router_logits):
        probs = torch.softmax(logits.float(), dim=-1)[flat_mask]  # (N, E)
        mass = probs[:, unsafe_experts[layer]].sum(-1).clamp(1e-6, 1 - 1e-6)  # (N,)
        total = total - torch.where(token_unsafe, mass.log(), (1 - mass).log()).mean()
    return total / len(router_logits)


def _answer_loss(model, input_ids, attention, labels):
    """Next-token loss on answer tokens, the vocabulary projection computed only where a label is (the same
    value as the model's own ``labels=`` loss; a prompt token's logits cost as much and are never used)."""
    import torch

    hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])  # (N, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def _length_bucketed_batches(encoded, batch_size: int, gen) -> list[list[int]]:
    """One seeded epoch of batches: shuffled, then sorted by length within windows of 16 batches so a
    batch pads to similar lengths (less padding, less compute), then the batch order shuffled."""
    import torch

    order = torch.randperm(len(encoded), generator=gen).tolist()
    window = 16 * batch_size
    batches = []
    for start in range(0, len(order) - batch_size + 1, window):
        chunk = sorted(order[start : start + window], key=lambda i: len(encoded[i][0]))
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk) - batch_size + 1, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def train_model(model, encoded, recipe, pad_id: int, progress: bool = True) -> TrainResult:
    """Seeded AdamW with warm-up and cosine decay; the loss is on answer tokens only."""
    import torch
    from tqdm.auto import tqdm

    from steermoe.adapters import moe_layers

    blocks = moe_layers(model)
    device = next(model.parameters()).device  # batches are built on the CPU and go where the model is
    unsafe_experts = designed_unsafe_experts(recipe)
    captured: list = []
    hooks = [b.router.register_forward_hook(lambda _m, _i, out: captured.append(out[0])) for b in blocks]
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        t = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches: list[list[int]] = []
    losses, started = [], time.perf_counter()
    model.train()
    bar = tqdm(range(recipe.steps), desc="training demo model", unit="step", disable=not progress)
    try:
        for _ in bar:
            if not batches:
                batches = _length_bucketed_batches(encoded, recipe.batch_size, gen)
            idx = batches.pop()
            input_ids, attention, labels, prior_mask, unsafe = (t.to(device) for t in _batch(encoded, idx, pad_id))
            captured.clear()
            lm_loss = _answer_loss(model, input_ids, attention, labels)
            loss = lm_loss
            if recipe.routing_prior > 0:
                loss = loss + recipe.routing_prior * _prior_loss(captured, range(len(blocks)), unsafe_experts, prior_mask, unsafe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(lm_loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        for h in hooks:
            h.remove()
    model.eval()
    return TrainResult(losses, sum(losses[-10:]) / len(losses[-10:]), time.perf_counter() - started)
