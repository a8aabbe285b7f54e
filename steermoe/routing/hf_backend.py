"""Hugging Face backend: batched generation with router hooks (inline) or a teacher-forced pass (two-phase).

Generation segment (both modes agree on it): the generated tokens before EOS, each recorded at the
step where it was fed to the model. ``model.generate`` never feeds the last token it samples, so the
inline mode asks for ``max_new_tokens + 1`` tokens and drops the extra one: every kept token has then
been through the model once (cost: one decode step per batch). Two-phase runs one forward over
``prompt + generated-before-EOS`` with the same left padding and position ids as ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from steermoe.generation import GenerationSettings
from steermoe.modeling import eos_ids_of  # noqa: F401 (re-exported: the backends and benchmarks use it from here)
from steermoe.routing.recorder import Capture, RouterRecorder
from steermoe.routing.records import SequenceRouting, trim_generated

__all__ = [
    "left_pad", "eos_ids_of", "inline_batch", "static_inline_batch", "generate_batch", "teacher_forced_batch",
    "split_on_oom",
]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[Any, Any, Any]:
    """``(input_ids, attention_mask, position_ids)``, each ``(batch, width)``; positions as ``generate`` makes them."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return ids.to(device), mask.to(device), positions.to(device)


def _device(model):
    return next(model.parameters()).device


def _generate(
    model, tokenizer, ids, mask, params: GenerationSettings, new_tokens: int, eos: set[int], eager: bool = False,
    generate_kwargs: Mapping[str, Any] | None = None,
):
    import torch

    extra = dict(generate_kwargs or {})  # e.g. cache_implementation="static" (benchmarks)
    if eager:
        # Router hooks write at host-side cursors; a compiled/graph-captured decode would not run them per step.
        extra["disable_compile"] = True
    if params.do_sample:
        torch.manual_seed(params.seed)
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=params.do_sample,
            temperature=params.temperature if params.do_sample else None,
            top_p=params.top_p if params.do_sample else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos),
            **extra,
        )


def _slice(cap: Capture, i: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    def part(a):
        return None if a is None else a[i, start:stop]

    return part(cap.experts), part(cap.weights), part(cap.logits)


def _routed(tokenizer, prompt, gen, stop, cap: Capture, i: int, prompt_span, gen_span) -> SequenceRouting:
    pe, pw, pl = _slice(cap, i, *prompt_span)
    ge, gw, gl = _slice(cap, i, *gen_span)
    return SequenceRouting(
        prompt_token_ids=list(prompt), generated_token_ids=gen,
        generated_text=tokenizer.decode(gen, skip_special_tokens=True), stop=stop,
        prompt_experts=pe, generated_experts=ge, prompt_weights=pw, generated_weights=gw, prompt_logits=pl, generated_logits=gl,
    )


def inline_batch(model, tokenizer, recorder: RouterRecorder, prompts: Sequence[Sequence[int]], params: GenerationSettings) -> list[SequenceRouting]:
    """Generate for one batch of tokenised prompts while ``recorder`` (entered) captures routing
    (``params`` are the batch's: :meth:`GenerationSettings.for_batch`)."""
    eos = eos_ids_of(model, tokenizer)
    ids, mask, _ = left_pad(prompts, tokenizer.pad_token_id, _device(model))
    b, width = ids.shape
    n = params.max_new_tokens
    recorder.start_batch(b, width + n + 1)
    try:
        out = _generate(model, tokenizer, ids, mask, params, n + 1, eos, eager=True)
        cap = recorder.end_batch()  # (B, width + decode steps, L, k) on host: the one copy of this batch
    finally:
        recorder.abort_batch()
    gen_rows = out[:, width:].cpu().tolist()
    result = []
    for i, prompt in enumerate(prompts):
        gen, stop = trim_generated(gen_rows[i], eos, n)
        kept = len(gen) - (stop == "eos")
        assert width + kept <= cap.filled, "a kept token was never fed through the model"
        result.append(_routed(tokenizer, prompt, gen, stop, cap, i, (width - len(prompt), width), (width, width + kept)))
    return result


def static_inline_batch(decoder, tokenizer, recorder: RouterRecorder, prompts: Sequence[Sequence[int]], first_seq: int = 0) -> list[SequenceRouting]:
    """Like :func:`inline_batch`, generating with a :class:`~steermoe.routing.static_decode.StaticDecoder`
    whose (graph-replayed) steps record through the recorder's device cursor."""
    eos = set(decoder.eos)
    try:
        generated, filled = decoder.generate(prompts, first_seq, recorder=recorder)
        cap = recorder.end_batch(filled)
    finally:
        recorder.abort_batch()
    width = max(len(p) for p in prompts)
    result = []
    for i, (prompt, gen) in enumerate(zip(prompts, generated)):
        stop = "eos" if gen and gen[-1] in eos else "length"
        kept = len(gen) - (stop == "eos")
        assert width + kept <= cap.filled, "a kept token was never fed through the model"
        result.append(_routed(tokenizer, prompt, gen, stop, cap, i, (width - len(prompt), width), (width, width + kept)))
    return result


def generate_batch(
    model, tokenizer, prompts: Sequence[Sequence[int]], params: GenerationSettings, generate_kwargs: Mapping[str, Any] | None = None
) -> list[list[int]]:
    """Plain batched generation (no hooks): generated ids per prompt, up to and including EOS;
    ``generate_kwargs`` go to ``model.generate`` as they are."""
    eos = eos_ids_of(model, tokenizer)
    ids, mask, _ = left_pad(prompts, tokenizer.pad_token_id, _device(model))
    out = _generate(model, tokenizer, ids, mask, params, params.max_new_tokens, eos, generate_kwargs=generate_kwargs)
    return [trim_generated(row, eos, params.max_new_tokens)[0] for row in out[:, ids.shape[1] :].cpu().tolist()]


def teacher_forced_batch(
    model, tokenizer, recorder: RouterRecorder, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]], eos: set[int]
) -> list[SequenceRouting]:
    """One forward over ``prompt + generated-before-EOS`` per sequence, recording the routing of every token."""
    import torch

    rows = []
    for p, g in zip(prompts, generated):
        kept = len(g) - (1 if g and g[-1] in eos else 0)
        rows.append(list(p) + list(g[:kept]))
    ids, mask, positions = left_pad(rows, tokenizer.pad_token_id, _device(model))
    b, width = ids.shape
    recorder.start_batch(b, width)
    try:
        with torch.no_grad():
            # logits_to_keep=1: the vocabulary projection of every position is not needed.
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1)
        cap = recorder.end_batch()
    finally:
        recorder.abort_batch()
    result = []
    for i, (p, g) in enumerate(zip(prompts, generated)):
        g = [int(t) for t in g]
        stop = "eos" if g and g[-1] in eos else "length"
        start = width - len(rows[i])
        result.append(_routed(tokenizer, p, g, stop, cap, i, (start, start + len(p)), (start + len(p), width)))
    return result


def split_on_oom(run: Callable[[list], list], items: list, batch_size: int, on_shrink: Callable[[int], None] | None = None) -> tuple[list, int]:
    """Run ``run`` over ``items`` in batches, halving the batch size on CUDA out-of-memory.

    Returns the results and the batch size that worked (callers keep it for later batches).
    """
    import torch

    results: list = []
    start = 0
    while start < len(items):
        chunk = items[start : start + batch_size]
        try:
            results.extend(run(chunk, start))
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            if on_shrink:
                on_shrink(batch_size)
            continue
        start += len(chunk)
    return results, batch_size
