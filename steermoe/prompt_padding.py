"""Prompt sets of a fixed token length: the demo requests behind benign context, padded to exactly N tokens.

Benchmark-scale runs need many prompts of a known length (the Qwen3-30B-A3B tables use 64 prompt tokens); the
demo sets are 992 short requests. :func:`padded_prompt_set` repeats them behind different benign context
sentences (a user explaining why they ask; nothing in the padding is a request, so labels and categories carry
over unchanged), the request first, and trims or extends the context word by word until the chat-rendered prompt is exactly
``tokens`` long for the given tokenizer. ``steermoe prompts pad`` writes such a set as JSONL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from steermoe.errors import InputError

__all__ = ["CONTEXT_SENTENCES", "padded_prompt_set", "write_prompt_set"]

CONTEXT_SENTENCES = (
    "I am putting together notes for a small evening class at the community centre.",
    "My family asked me about this over dinner and nobody knew the answer.",
    "I like to understand things properly before I make up my mind.",
    "This came up in a group chat with some friends from work last week.",
    "I read a short article about it on the train this morning.",
    "Please keep the answer short and written in plain everyday language.",
    "I am a beginner, so a simple explanation would help me the most.",
    "I would like to write a tidy summary of this for my own notebook.",
    "A neighbour mentioned it while we were fixing the garden fence.",
    "I want to compare what different sources say about this topic.",
    "It is a rainy weekend and I finally have some time to read.",
    "My teacher suggested that I ask a few questions like this one.",
)
_FILLERS = (" please", " thanks", " now", " here", " today", " again", " too", " then", " so", " well", " a", ".", "!", "?")


def _rendered_length(tokenizer, text: str, chat_template_kwargs: dict | None) -> int:
    from steermoe.modeling import render_chat

    rendered = render_chat(tokenizer, [{"role": "user", "content": text}], chat_template_kwargs)
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def _fit(tokenizer, request: str, context: list[str], tokens: int, chat_template_kwargs: dict | None) -> str | None:
    """The request, then ``context`` words, cut or padded until the rendered chat prompt is ``tokens`` long."""
    words = list(context)
    # Binary search on how many context words fit, then short fillers for the last few tokens.
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _rendered_length(tokenizer, " ".join([request] + words[:mid]), chat_template_kwargs) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join([request] + words[:lo])
    n = _rendered_length(tokenizer, text, chat_template_kwargs)
    while n < tokens:
        # The first filler that adds tokens without overshooting (single characters last: they always fit one token).
        for filler in _FILLERS:
            m = _rendered_length(tokenizer, text + filler, chat_template_kwargs)
            if n < m <= tokens:
                text, n = text + filler, m
                break
        else:
            return None
    return text if n == tokens else None


def padded_prompt_set(
    tokenizer, tokens: int = 64, train: int = 1024, eval: int = 256, seed: int = 0, chat_template_kwargs: dict | None = None
) -> pd.DataFrame:
    """``train`` + ``eval`` rows whose chat-rendered prompt is exactly ``tokens`` tokens for ``tokenizer``.

    Each split cycles over the demo prompts of that split that fit the budget (safe and unsafe interleaved, so any
    prefix is balanced), giving each repeat other context sentences; ids are ``<demo id>~<repeat>``.
    """
    import random

    from steermoe.demo import load_demo_prompts

    if tokens < 8:
        raise InputError(f"prompts pad: --tokens {tokens} is too short for a chat prompt; use at least 8")
    demo = load_demo_prompts()
    rng = random.Random(seed)
    rows = []
    for split, count in (("train", train), ("eval", eval)):
        if not count:
            continue
        part = demo[demo["split"] == split]
        # Free-wording requests can be longer than a short budget: keep those that fit on their own, so a
        # short --tokens still gives a balanced set instead of failing on the longest request.
        by_label = [
            [r for r in part[part["label"] == lab].to_dict("records") if _rendered_length(tokenizer, r["prompt"], chat_template_kwargs) < tokens]
            for lab in ("unsafe", "safe")
        ]
        if not all(by_label):
            raise InputError(f"prompts pad: no {split} request of both labels fits in {tokens} tokens; raise --tokens")
        order = [r for pair in zip(*by_label) for r in pair] + by_label[0][len(by_label[1]) :] + by_label[1][len(by_label[0]) :]
        for i in range(count):
            row = order[i % len(order)]
            repeat = i // len(order)
            sentences = rng.sample(CONTEXT_SENTENCES, len(CONTEXT_SENTENCES))
            text = _fit(tokenizer, row["prompt"], " ".join(sentences).split(), tokens, chat_template_kwargs)
            if text is None:
                raise InputError(f"prompts pad: {row['id']} does not fit in {tokens} tokens; raise --tokens")
            rows.append({**row, "id": f"{row['id']}~{repeat}", "prompt": text, "source": f"steermoe-demo-padded-{tokens}"})
    return pd.DataFrame(rows)


def write_prompt_set(frame: pd.DataFrame, path: str | Path) -> Path:
    """JSONL, written atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in frame.to_dict("records"):
            f.write(json.dumps({k: v for k, v in row.items() if v is not None and v == v}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
