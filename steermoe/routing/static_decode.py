"""Fast batched decoding for two-phase routing capture: a static KV cache, and on CUDA a replayed graph per step.

At MoE scale Hugging Face ``generate`` spends most of a decode step in Python and kernel launches (on an H100,
~400 ms per step for a Qwen3-30B-A3B shape at batch 128, where reading the weights takes ~20 ms). Here every
decode step has the same shapes (one token per sequence, a preallocated cache, a ``(batch, 1, 1, cache_len)``
mask), so on CUDA the whole forward is captured once as a CUDA graph and replayed; elsewhere the same loop runs
eagerly. Experts must dispatch without host syncs inside the graph: the decoder switches the model to the
``grouped_mm`` experts implementation while it runs. With sdpa attention on CUDA it also attends with
:func:`~steermoe.routing.gqa_attention.grouped_query_sdpa`, which does not copy the KV cache to every query head.

Routing is recorded inside the graph too: with a :class:`RouterRecorder` in device-cursor mode, each router hook
writes its top-k at a device-side position that the loop moves between replays (``generate(..., recorder=...)``).
Without a recorder the decoder is a plain ``generate_fn`` for two-phase capture.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from steermoe.errors import InputError
from steermoe.generation import GenerationSettings

__all__ = ["StaticDecoder"]

_MASKED_ATTENTION = ("sdpa", "eager")


@dataclass
class _Slot:
    """Everything one (batch, cache length) shape keeps between batches: the cache and the step's static buffers."""

    cache: object
    ids: object  # (B, 1) token fed at this step
    positions: object  # (B, 1) its position id
    mask: object  # (B, 1, 1, L) which cache slots it may attend to
    record_at: object  # (1,) where router hooks in device-cursor mode write this step
    graph: object | None = None
    graph_token: tuple = ()  # the recorder buffers the graph writes to ((): none)
    logits: object | None = None  # (B, V) written by the step


class StaticDecoder:
    """Batched decoding with a static cache: ``decoder(prompt_token_ids, first_seq) -> generated ids`` (a
    ``generate_fn`` for two-phase capture), or ``decoder.generate(..., recorder=...)`` recording as it decodes.

    ``generation`` gives the token budget and the decoding (its batch size and chat-template options are the
    caller's). Greedy by default; with ``do_sample`` it samples with temperature and top-p from a generator seeded with
    ``seed + first_seq`` (the same per-batch seeding as the HF backend, not the same random stream).
    ``cuda_graph=None`` uses a graph for bf16 models on CUDA and falls back to the eager loop, with a warning, if
    capture fails; ``True`` insists (errors propagate), ``False`` never captures. ``gqa_attention=None`` folds
    grouped query heads instead of repeating the cache (sdpa models on CUDA); ``True``/``False`` force it.
    """

    def __init__(
        self, model, generation: GenerationSettings, *, pad_token_id: int, eos_token_ids: Sequence[int], cuda_graph: bool | None = None,
        check_every: int = 8, gqa_attention: bool | None = None,
    ):
        import torch

        impl = getattr(model.config, "_attn_implementation", "sdpa")
        if impl not in _MASKED_ATTENTION:
            raise InputError(
                f"the static decoder needs attn_implementation sdpa or eager, not {impl!r}; load the model with "
                "attn_implementation='sdpa' or use routing.backend=hf"
            )
        self.model = model
        self._attn_impl = impl
        self.pad_token_id = int(pad_token_id)
        self.eos = sorted({int(e) for e in eos_token_ids})
        self.max_new_tokens = int(generation.max_new_tokens)  # at least 1: GenerationSettings checks it
        g = generation
        self.do_sample, self.temperature, self.top_p, self.seed = g.do_sample, float(g.temperature), float(g.top_p), int(g.seed)
        self.device = next(model.parameters()).device
        # grouped_mm, the graph-safe experts kernel, runs bf16 only; other dtypes decode with the eager loop.
        graphable = self.device.type == "cuda" and model.dtype == torch.bfloat16
        self.use_graph = graphable if cuda_graph is None else bool(cuda_graph)
        self._strict_graph = cuda_graph is True
        fold = self.device.type == "cuda" if gqa_attention is None else bool(gqa_attention)
        self.gqa_attention = fold and impl == "sdpa"
        self.check_every = max(1, int(check_every))
        self._slot: tuple[tuple[int, int], _Slot] | None = None
        self.graph_captures = 0  # how many graphs were captured (tests, benchmarks)

    # ------------------------------------------------------------------ public
    def __call__(self, prompts: Sequence[Sequence[int]], first_seq: int = 0) -> list[list[int]]:
        """Generated ids per prompt (up to ``max_new_tokens``, EOS included where reached; pads never)."""
        return self.generate(prompts, first_seq)[0]

    def generate(self, prompts: Sequence[Sequence[int]], first_seq: int = 0, recorder=None):
        """``(generated ids per prompt, filled)``; with ``recorder`` (entered, enabled) routing is recorded in
        device-cursor mode: positions ``[0, filled)`` of the left-padded rows, every kept token fed once.

        The caller owns the recorder's batch: ``recorder.end_batch(filled)`` after this returns.
        """
        import torch

        if not prompts or any(len(p) == 0 for p in prompts):
            raise InputError("the static decoder got an empty prompt; every prompt needs at least one token")
        with torch.no_grad(), self._sync_free_experts(), self._folded_gqa():
            tokens, lengths, filled = self._decode([list(map(int, p)) for p in prompts], first_seq, recorder)
        rows = tokens.cpu().tolist()
        return [row[:n] for row, n in zip(rows, lengths.cpu().tolist())], filled

    # ------------------------------------------------------------------ decoding
    def _decode(self, prompts: list[list[int]], first_seq: int, recorder):
        import torch

        from steermoe.routing.hf_backend import left_pad

        b, n = len(prompts), self.max_new_tokens
        ids, mask2d, positions = left_pad(prompts, self.pad_token_id, self.device)
        width = ids.shape[1]
        self._check_window(width + n)
        slot = self._slot_for(b, width + n)
        self._reset(slot, mask2d)
        if recorder is not None:
            recorder.start_batch(b, width + n, device=self.device, position=slot.record_at)
        generator = None
        if self.do_sample:
            generator = torch.Generator(device=self.device).manual_seed(self.seed + first_seq)
        eos = torch.tensor(self.eos or [-1], device=self.device)

        slot.record_at.fill_(0)
        out = self.model(
            input_ids=ids, attention_mask=self._prefill_mask(mask2d, slot), position_ids=positions,
            past_key_values=slot.cache, use_cache=True, logits_to_keep=1,
        )
        nxt = self._choose(out.logits[:, -1], generator)  # (B,)
        tokens = torch.full((b, n), self.pad_token_id, dtype=torch.long, device=self.device)
        tokens[:, 0] = nxt
        done = torch.isin(nxt, eos)
        lengths = torch.full((b,), n, dtype=torch.long, device=self.device)
        lengths.masked_fill_(done, 1)
        slot.positions.copy_(positions[:, -1:])
        # Recording feeds every kept token, the last one included (one step more than generating needs).
        last = n if recorder is not None else n - 1
        fed = 0
        for t in range(1, last + 1):
            if t % self.check_every == 0 and bool(done.all()):
                break
            slot.ids.copy_(nxt[:, None])
            slot.positions.add_(1)
            slot.record_at.fill_(width + t - 1)  # the cache slot (and record position) of this step's token
            slot.mask[..., width + t - 1] = self._allowed()
            logits = self._step(slot, width + t - 1, recorder)
            fed = t
            if t == n:
                break
            nxt = torch.where(done, self.pad_token_id, self._choose(logits, generator))
            tokens[:, t] = nxt
            newly = torch.isin(nxt, eos) & ~done
            lengths.masked_fill_(newly, t + 1)
            done |= newly
        return tokens, lengths, width + fed

    def _choose(self, logits, generator):
        import torch

        if not self.do_sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / max(self.temperature, 1e-6), dim=-1)  # (B, V)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # the smallest prefix reaching top_p
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p * keep)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def _check_window(self, cache_len: int) -> None:
        """Sliding-window layers keep a rolling cache once full, which one flat mask cannot address."""
        config = self.model.config
        window = getattr(config, "sliding_window", None)
        if window and "sliding_attention" in (getattr(config, "layer_types", None) or []) and cache_len > window:
            raise InputError(
                f"the static decoder supports sliding-window layers only within the window ({window} tokens; this batch needs "
                f"{cache_len}): use routing.backend=hf, or shorten prompts / generation.max_new_tokens"
            )

    # ------------------------------------------------------------------ step and graph
    def _forward_step(self, slot: _Slot):
        out = self.model(
            input_ids=slot.ids, attention_mask=slot.mask, position_ids=slot.positions, past_key_values=slot.cache,
            use_cache=True, logits_to_keep=1,
        )
        return out.logits[:, -1]  # (B, V)

    def _step(self, slot: _Slot, cached: int, recorder):
        """One decode step; ``cached`` = cache slots filled before it."""
        if not self.use_graph:
            return self._forward_step(slot)
        token = recorder.buffers_token() if recorder is not None else ()
        if slot.graph is None or slot.graph_token != token:
            slot.graph = slot.logits = None  # release the old graph (and its memory pool) first
            try:
                self._capture(slot, cached, token)
            except Exception as e:  # capture fails in model- and version-specific ways; the eager loop is still exact
                if self._strict_graph:
                    raise
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {str(e)[:200]}); decoding eagerly", stacklevel=2)
                self.use_graph = False
                self._set_lengths(slot, cached)
                return self._forward_step(slot)
        slot.graph.replay()
        return slot.logits

    def _capture(self, slot: _Slot, cached: int, token: tuple) -> None:
        import torch

        # Warm-up off the default stream (lazy inits, cuBLAS workspaces), as graph capture requires. The warm-up
        # steps write cache slots (and record positions) that this step and the next rewrite before anyone reads them.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward_step(slot)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._forward_step(slot)
        slot.graph, slot.logits, slot.graph_token = graph, logits, token
        self.graph_captures += 1
        self._set_lengths(slot, cached)  # undo the warm-up's cache advances

    # ------------------------------------------------------------------ cache and masks
    def _slot_for(self, batch: int, cache_len: int) -> _Slot:
        import torch
        from transformers import StaticCache

        key = (batch, cache_len)
        if self._slot is not None and self._slot[0] == key:
            return self._slot[1]
        self._slot = None  # free the previous shape's cache and graph first
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        masked = torch.zeros if self._bool_mask else torch.empty
        slot = _Slot(
            cache=StaticCache(config=self.model.config, max_cache_len=cache_len),
            ids=torch.zeros((batch, 1), dtype=torch.long, device=self.device),
            positions=torch.zeros((batch, 1), dtype=torch.long, device=self.device),
            mask=masked((batch, 1, 1, cache_len), dtype=self._mask_dtype, device=self.device),
            record_at=torch.zeros(1, dtype=torch.long, device=self.device),
        )
        self._slot = (key, slot)
        return slot

    @property
    def _bool_mask(self) -> bool:
        return self._attn_impl == "sdpa"

    @property
    def _mask_dtype(self):
        import torch

        return torch.bool if self._bool_mask else self.model.dtype

    def _allowed(self):
        return True if self._bool_mask else 0.0

    def _blocked(self):
        import torch

        return False if self._bool_mask else torch.finfo(self.model.dtype).min

    def _reset(self, slot: _Slot, mask2d) -> None:
        """New batch: cache back to empty (stale slots stay masked), decode mask = the prompt's real tokens."""
        width = mask2d.shape[1]
        self._set_lengths(slot, 0)
        slot.mask.fill_(self._blocked())
        real = mask2d.bool()[:, None, None, :]  # (B, 1, 1, W)
        slot.mask[..., :width].masked_fill_(real, self._allowed())

    def _prefill_mask(self, mask2d, slot: _Slot):
        """(B, 1, W, L): causal over the prompt's real tokens; a pad query sees only itself (no empty softmax row)."""
        import torch

        b, width = mask2d.shape
        cache_len = slot.mask.shape[-1]
        q = torch.arange(width, device=self.device)[:, None]
        k = torch.arange(cache_len, device=self.device)[None, :]
        real = torch.zeros((b, cache_len), dtype=torch.bool, device=self.device)
        real[:, :width] = mask2d.bool()
        allowed = ((k <= q) & real[:, None, :]) | (k == q)  # (B, W, L)
        allowed = allowed[:, None]
        if self._bool_mask:
            return allowed
        return torch.zeros(allowed.shape, dtype=self.model.dtype, device=self.device).masked_fill_(~allowed, self._blocked())

    @staticmethod
    def _set_lengths(slot: _Slot, length: int) -> None:
        for layer in getattr(slot.cache, "layers", []):
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.fill_(length)

    @contextmanager
    def _sync_free_experts(self):
        """On CUDA, dispatch experts with ``grouped_mm`` (no host sync, graph-safe) while decoding; restore after."""
        config = self.model.config
        before = getattr(config, "_experts_implementation", None)
        switch = self.use_graph and before not in (None, "grouped_mm") and hasattr(self.model, "set_experts_implementation")
        if switch:
            self.model.set_experts_implementation("grouped_mm")
        try:
            yield
        finally:
            if switch:
                self.model.set_experts_implementation(before)

    @contextmanager
    def _folded_gqa(self):
        """Attend with the grouped-query SDPA (no KV-cache copies) while decoding; restore the model's attention after."""
        if not self.gqa_attention:
            yield
            return
        from steermoe.routing.gqa_attention import register

        config = self.model.config
        before = config._attn_implementation
        config._attn_implementation = register()
        try:
            yield
        finally:
            config._attn_implementation = before
