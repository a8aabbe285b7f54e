"""What a backend hands over for one sequence, and how a shard's tables are built from it.

A backend (HF, vLLM, ...) only has to produce :class:`SequenceRouting` objects: the token ids and,
for every recorded token, the ``(layers, k)`` expert ids. Everything else (sharding, resume,
checksums, manifest) is shared.

Segments: the prompt segment is every prompt token (after the chat template); the generation
segment is every generated token *before* EOS, each recorded at the step where it was the model's
input. EOS itself and anything after it are never recorded. The ids kept in ``generated_token_ids``
do include the EOS token when one was produced.

A backend that records only what its engine dispatched (vLLM's routed-experts return) has no routing for
the last token of an answer cut at ``max_new_tokens``: that token was sampled but never fed back. It says so
with ``last_token_fed=False``; the generation segment is then one token shorter for such answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from steermoe.modeling import trim_generated  # re-exported: the routing backends trim with it
from steermoe.routing.store import GENERATION, PROMPT, tokens_table

__all__ = ["SequenceRouting", "trim_generated", "shard_tables"]


@dataclass
class SequenceRouting:
    """One answered prompt and its routing. Arrays are ``(tokens, layers, k)`` (logits: ``(tokens, layers, E)``)."""

    prompt_token_ids: list[int]
    generated_token_ids: list[int]  # up to and including EOS
    generated_text: str
    prompt_experts: np.ndarray  # (prompt tokens, layers, k) int16
    generated_experts: np.ndarray  # (generated tokens before EOS, layers, k) int16
    stop: str = "length"  # "eos" or "length"
    prompt_weights: np.ndarray | None = None
    generated_weights: np.ndarray | None = None
    prompt_logits: np.ndarray | None = None
    generated_logits: np.ndarray | None = None
    last_token_fed: bool = True  # False: an answer stopped by length has no routing for its last token

    @property
    def recorded_generated_ids(self) -> list[int]:
        return self.generated_token_ids[: len(self.generated_experts)]

    def check(self) -> None:
        assert len(self.prompt_experts) == len(self.prompt_token_ids), "one prompt routing row per prompt token"
        n_gen = len(self.generated_token_ids) - (1 if self.stop == "eos" or not self.last_token_fed else 0)
        n_gen = max(n_gen, 0)
        assert len(self.generated_experts) == n_gen, f"{len(self.generated_experts)} generation rows for {n_gen} tokens"


def _concat(parts: list[np.ndarray | None]) -> np.ndarray | None:
    if any(p is None for p in parts):
        return None
    return np.concatenate(parts) if parts else None


def shard_tables(first_seq: int, prompt_rows: Sequence[Mapping], routed: Sequence[SequenceRouting]) -> tuple[pa.Table, pa.Table]:
    """The ``(sequences, tokens)`` tables of one shard; sequence numbers start at ``first_seq``."""
    assert len(prompt_rows) == len(routed)
    seq, segment, position, token_id = [], [], [], []
    experts, weights, logits = [], [], []
    for offset, r in enumerate(routed):
        r.check()
        s = first_seq + offset
        for seg, ids, ex, w, lg in (
            (PROMPT, r.prompt_token_ids, r.prompt_experts, r.prompt_weights, r.prompt_logits),
            (GENERATION, r.recorded_generated_ids, r.generated_experts, r.generated_weights, r.generated_logits),
        ):
            n = len(ex)
            seq.append(np.full(n, s, dtype=np.int32))
            segment.append(np.full(n, seg, dtype=np.int8))
            position.append(np.arange(n, dtype=np.int32))
            token_id.append(np.asarray(ids, dtype=np.int32).reshape(n))
            experts.append(ex)
            weights.append(w)
            logits.append(lg)
    tokens = tokens_table(
        np.concatenate(seq), np.concatenate(segment), np.concatenate(position), np.concatenate(token_id),
        np.concatenate(experts), _concat(weights), _concat(logits),
    )

    def text(key: str) -> pa.Array:
        return pa.array([None if row.get(key) is None else str(row.get(key)) for row in prompt_rows], type=pa.string())

    ids_type = pa.list_(pa.int32())
    sequences = pa.table(
        {
            "seq": pa.array(range(first_seq, first_seq + len(routed)), type=pa.int32()),
            "prompt_id": text("id"),
            "label": text("label"),
            "category": text("category"),
            "split": text("split"),
            "source": text("source"),
            "prompt_token_ids": pa.array([r.prompt_token_ids for r in routed], type=ids_type),
            "generated_token_ids": pa.array([r.generated_token_ids for r in routed], type=ids_type),
            "generated_text": pa.array([r.generated_text for r in routed], type=pa.string()),
            "prompt_tokens": pa.array([len(r.prompt_experts) for r in routed], type=pa.int32()),
            "generated_tokens": pa.array([len(r.generated_experts) for r in routed], type=pa.int32()),
            "stop": pa.array([r.stop for r in routed], type=pa.string()),
        }
    )
    return sequences, tokens
