"""Collect routing for a prompt set into a store: sharding, resume, progress; the HF backend by default.

A backend is a function ``run_batch(prompt_token_ids, first_seq) -> list[SequenceRouting]``; the
driver cuts the prompts into shards of ``shard_sequences`` (the unit of resume), each shard into
batches that never cross a shard boundary, so a resumed run recomputes exactly the same batches as
an uninterrupted one and writes byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from steermoe.errors import InputError
from steermoe.failpoints import failpoint
from steermoe.generation import GenerationSettings
from steermoe.routing.hf_backend import (
    eos_ids_of,
    generate_batch,
    inline_batch,
    split_on_oom,
    static_inline_batch,
    teacher_forced_batch,
)
from steermoe.routing.recorder import RouterRecorder
from steermoe.routing.records import SequenceRouting, shard_tables, trim_generated
from steermoe.routing.store import RoutingStore, RoutingStoreWriter

__all__ = [
    "collect_routing", "run_collection", "batch_plan", "fresh_plan", "routing_session", "RoutingSession", "RoutingSettings",
    "route_shard", "shard_bounds", "shard_count",
    "store_header", "generation_header", "model_header", "tokenizer_fingerprint", "tokenize_prompts",
]

GENERATION_SEGMENT = "generated tokens before EOS, each recorded where it was the model's input"
BatchFn = Callable[[list[list[int]], int], list[SequenceRouting]]


def tokenizer_fingerprint(tokenizer) -> dict:
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "fingerprint": digest.hexdigest()[:16]}


def _weights_fingerprint(model) -> str:
    """Hash of config + parameters for a model that is not a saved folder (tests, random benchmarks)."""
    digest = hashlib.sha256(model.config.to_json_string().encode())
    for name, p in model.state_dict().items():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_header(model, recorder: RouterRecorder, fingerprint: str | None = None) -> dict:
    from steermoe.modeling import model_fingerprint

    if fingerprint is None:
        path = Path(str(getattr(model.config, "_name_or_path", "") or ""))
        from steermoe.random_model import is_random_folder

        has_weights = path.is_dir() and (any(path.glob("*.safetensors")) or is_random_folder(path))
        fingerprint = model_fingerprint(path) if has_weights else _weights_fingerprint(model)
    dense = [i for i in range(len(model.model.layers)) if i not in set(recorder.layers)]
    return {
        "fingerprint": fingerprint,
        "model_type": model.config.model_type,
        "layers": recorder.layers,
        "dense_layers": dense,
        "num_experts": recorder.num_experts,
        "top_k": recorder.top_k,
        "shared_experts": list(recorder.adapter.shared),  # always active; never counted as routed
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def tokenize_prompts(tokenizer, prompts_df: pd.DataFrame, chat_template_kwargs: dict | None) -> list[list[int]]:
    from steermoe.modeling import render_chat
    from steermoe.prompts import to_messages

    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; routing answers chat prompts")
    rendered = [render_chat(tokenizer, to_messages(row), chat_template_kwargs) for row in prompts_df.to_dict("records")]
    return [list(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def shard_count(n: int, shard_sequences: int) -> int:
    return (n + shard_sequences - 1) // shard_sequences


def shard_bounds(index: int, shard_sequences: int, n: int) -> tuple[int, int]:
    """``[lo, hi)`` positions of shard ``index`` in the prompt table: fixed by the prompt order and
    ``shard_sequences`` alone, so every executor (and every worker count) cuts the same shards."""
    return index * shard_sequences, min(n, (index + 1) * shard_sequences)


def route_shard(
    run_batch: BatchFn, prompt_ids: Sequence[list[int]], lo: int, hi: int, batch_size: int,
    on_batch: Callable[[list[SequenceRouting]], None] | None = None,
) -> tuple[list[SequenceRouting], int]:
    """Answer and record the prompts ``[lo, hi)`` in batches that never leave the shard (a resumed or
    distributed run recomputes exactly these batches); returns the routing and the batch size that fit."""

    def run(chunk, offset):
        out = run_batch(chunk, lo + offset)
        if on_batch:
            on_batch(out)
        return out

    return split_on_oom(run, [list(p) for p in prompt_ids[lo:hi]], batch_size)


def batch_plan(shards: Sequence[int], n: int, batch_size: int, shard_sequences: int) -> list[tuple[int, int]]:
    """The ``(first_seq, stop)`` of every batch :func:`run_collection` asks for to write ``shards`` (in order) of ``n``
    prompts: batches of ``batch_size`` that never cross a shard boundary."""
    bounds = [shard_bounds(s, shard_sequences, n) for s in shards]
    return [(b, min(b + batch_size, hi)) for lo, hi in bounds for b in range(lo, hi, batch_size)]


def fresh_plan(out_dir: str | Path, n: int, batch_size: int, shard_sequences: int) -> list[tuple[int, int]] | None:
    """The batches :func:`run_collection` will announce for ``out_dir`` when no store is there yet (no manifest: nothing
    to resume, every shard is written), known before the store's header is built; ``None`` where a store exists (which
    shards it holds is known only once its header has been checked)."""
    path = Path(out_dir)
    if path.exists() and (not path.is_dir() or (path / "manifest.json").exists()):
        return None
    return batch_plan(range(shard_count(n, shard_sequences)), n, batch_size, shard_sequences)


def run_collection(
    prompts_df: pd.DataFrame, prompt_ids: Sequence[list[int]], out_dir: str | Path, header: dict, run_batch: BatchFn, *,
    batch_size: int, shard_sequences: int, progress: bool = True, on_shard: Callable[[int], None] | None = None,
    on_plan: Callable[[list[tuple[int, int]]], None] | None = None,
) -> RoutingStore:
    """Backend-independent driver: write every missing shard, then finish the manifest.

    A shard is encoded and written on a background thread while the next one is generated (Parquet encoding
    releases the GIL); at most one write is in flight, and ``on_shard`` runs once its shard is on disk.
    ``on_plan`` receives, before the first batch, the ``(first_seq, stop)`` of every batch this run will ask
    ``run_batch`` for, in order (a backend can then start generating the next batch early).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    writer = RoutingStoreWriter(out_dir, header)
    n = len(prompts_df)
    shards = list(range(shard_count(n, shard_sequences)))
    done = writer.done_shards()
    rows = prompts_df.to_dict("records")
    bar = tqdm(total=n, desc="routing", unit="seq", disable=not progress)
    bar.update(sum(min(shard_sequences, n - s * shard_sequences) for s in shards if s in done))
    started, state = time.perf_counter(), {"batch_size": batch_size, "tokens": 0}
    pending: list = []  # (shard index, future of its token count)
    if on_plan:
        on_plan(batch_plan([s for s in shards if s not in done], n, batch_size, shard_sequences))

    def write(s: int, lo: int, hi: int, routed: list) -> int:
        sequences, table = shard_tables(lo, rows[lo:hi], routed)
        writer.write_shard(s, sequences, table)
        failpoint("routing.shard_written")
        return table.num_rows

    def settle() -> int:
        written = 0
        while pending:
            s, future = pending.pop(0)
            written += future.result()
            if on_shard:
                on_shard(s)
        return written

    tokens = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="routing-shard-writer") as pool:
        try:
            for s in shards:
                if s in done:
                    continue
                lo, hi = shard_bounds(s, shard_sequences, n)

                def progressed(out):
                    state["tokens"] += sum(len(r.prompt_experts) + len(r.generated_experts) for r in out)
                    bar.update(len(out))
                    bar.set_postfix(tok_s=f"{state['tokens'] / max(time.perf_counter() - started, 1e-9):.0f}")

                routed, state["batch_size"] = route_shard(run_batch, prompt_ids, lo, hi, state["batch_size"], on_batch=progressed)
                tokens += settle()  # the previous shard is on disk before this one starts writing
                pending.append((s, pool.submit(write, s, lo, hi, routed)))
            tokens += settle()
        finally:
            for _, future in pending:
                future.cancel()
    bar.close()
    elapsed = time.perf_counter() - started
    return writer.finish(
        shards, seconds=round(elapsed, 3), recorded_tokens_this_run=tokens,
        tokens_per_second=round(tokens / elapsed, 1) if elapsed > 0 and tokens else None, final_batch_size=state["batch_size"],
    )


@dataclass(frozen=True)
class RoutingSettings:
    """What a collection records and how (the ``routing`` section less its choice of backend).

    ``mode``: ``"inline"`` records during generation, ``"two_phase"`` generates first and records in one
    teacher-forced forward per batch. ``engine`` (HF backends): ``"generate"`` (``model.generate``) or
    ``"static"`` (:class:`~steermoe.routing.static_decode.StaticDecoder`)."""

    mode: str = "inline"
    record_logits: bool = False
    record_weights: bool = False
    shard_sequences: int = 64
    engine: str = "generate"

    def __post_init__(self):
        if self.mode not in ("inline", "two_phase"):
            raise InputError(f"routing.mode: {self.mode!r} is not one of inline, two_phase")
        if self.engine not in ("generate", "static"):
            raise InputError(f"engine: {self.engine!r} is not one of generate, static")
        if self.shard_sequences < 1:
            raise InputError(f"routing.shard_sequences must be at least 1, not {self.shard_sequences}")

    @classmethod
    def from_config(cls, routing_cfg) -> RoutingSettings:
        r = routing_cfg
        engine = "static" if r.backend == "hf_static" else "generate"
        return cls(r.mode, r.record_logits, r.record_weights, r.shard_sequences, engine)

    def replace(self, **changes: Any) -> RoutingSettings:
        return replace(self, **changes)

    def record_header(self) -> dict:
        """The store header's ``record`` entry."""
        return {"logits": self.record_logits, "weights": self.record_weights, "shard_sequences": self.shard_sequences}


def store_header(model: dict, tokenizer, prompts_df: pd.DataFrame, generation: dict, routing: RoutingSettings) -> dict:
    """A routing store's header: the model's and tokenizer's identity, how it answered, which prompts, what was recorded."""
    from steermoe.prompts import fingerprint as prompts_fingerprint

    return {
        "model": model,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "generation": generation,
        "prompts": {"fingerprint": prompts_fingerprint(prompts_df), "count": len(prompts_df)},
        "record": routing.record_header(),
    }


def generation_header(backend: str, mode: str, generation: GenerationSettings) -> dict:
    """The store header's ``generation`` entry of an HF backend (``hf`` or ``hf_static``)."""
    return {"backend": backend, "mode": mode, **generation.as_dict(), "generation_segment": GENERATION_SEGMENT}


@dataclass
class RoutingSession:
    """A model ready to record: the store header, every prompt's token ids and the batch function.

    Opened once per process that collects (this one, or each Ray worker of
    :mod:`steermoe.routing.distributed`), then used for any number of shards."""

    header: dict
    prompt_ids: list[list[int]]
    run_batch: BatchFn
    batch_size: int
    shard_sequences: int

    def shard_tables(self, index: int, prompt_rows: Sequence[dict]) -> tuple[Any, Any]:
        """The ``(sequences, tokens)`` tables of shard ``index``; ``prompt_rows`` are all the prompts' records."""
        lo, hi = shard_bounds(index, self.shard_sequences, len(self.prompt_ids))
        routed, self.batch_size = route_shard(self.run_batch, self.prompt_ids, lo, hi, self.batch_size)
        return shard_tables(lo, prompt_rows[lo:hi], routed)


GenerateFn = Callable[[list[list[int]], int], list[list[int]]]


@contextmanager
def routing_session(
    model, tokenizer, prompts_df: pd.DataFrame, *, generation: GenerationSettings = GenerationSettings(),
    routing: RoutingSettings = RoutingSettings(), generate_fn: GenerateFn | None = None, fingerprint: str | None = None,
) -> Iterator[RoutingSession]:
    """Router hooks on ``model`` (removed on exit) and what :func:`run_collection` needs; arguments as
    :func:`collect_routing`."""
    if len(prompts_df) == 0:
        raise InputError("no prompts to collect routing on; check routing.split and the prompt sources")
    if tokenizer.pad_token_id is None:
        raise InputError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token)")
    g, static = generation, routing.engine == "static"
    prompt_ids = tokenize_prompts(tokenizer, prompts_df, g.chat_template_kwargs)
    with RouterRecorder(model, logits=routing.record_logits, weights=routing.record_weights) as recorder:
        backend = "hf_static" if static else "hf"
        header = store_header(model_header(model, recorder, fingerprint), tokenizer, prompts_df, generation_header(backend, routing.mode, g), routing)
        eos = eos_ids_of(model, tokenizer)
        decoder = None
        if static:
            from steermoe.routing.static_decode import StaticDecoder

            decoder = StaticDecoder(model, g, pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos)
            generate_fn = generate_fn or decoder

        def inline(chunk, first_seq):
            if decoder is not None:
                return static_inline_batch(decoder, tokenizer, recorder, chunk, first_seq)
            return inline_batch(model, tokenizer, recorder, chunk, g.for_batch(first_seq))

        def two_phase(chunk, first_seq):
            recorder.enabled = False  # generation is not recorded in this mode
            try:
                if generate_fn is not None:
                    generated = [trim_generated(t, eos, g.max_new_tokens)[0] for t in generate_fn(chunk, first_seq)]
                else:
                    generated = generate_batch(model, tokenizer, chunk, g.for_batch(first_seq))
            finally:
                recorder.enabled = True
            return teacher_forced_batch(model, tokenizer, recorder, chunk, generated, eos)

        run_batch = inline if routing.mode == "inline" else two_phase
        yield RoutingSession(header, prompt_ids, run_batch, g.batch_size, routing.shard_sequences)


def collect_routing(
    model, tokenizer, prompts_df: pd.DataFrame, out_dir: str | Path, *, generation: GenerationSettings = GenerationSettings(),
    routing: RoutingSettings = RoutingSettings(), progress: bool = True, generate_fn: GenerateFn | None = None,
    fingerprint: str | None = None, on_shard: Callable[[int], None] | None = None,
) -> RoutingStore:
    """Answer every prompt with ``model`` as ``generation`` says and record the routing of every prompt and
    generated token as ``routing`` says.

    ``routing.mode="inline"`` records during ``model.generate``; ``"two_phase"`` generates first (with
    ``generate_fn(prompt_token_ids, first_seq)`` if given, e.g. a compiled or vLLM engine; else plain HF
    ``generate``) and records in one teacher-forced forward per batch. ``routing.engine="static"`` decodes
    with :class:`~steermoe.routing.static_decode.StaticDecoder` (static KV cache; on CUDA each step a
    replayed graph, routing recorded inside it) instead of ``model.generate``.
    Re-running with the same arguments resumes: only missing shards are computed.
    """
    with routing_session(model, tokenizer, prompts_df, generation=generation, routing=routing, generate_fn=generate_fn, fingerprint=fingerprint) as session:
        return run_collection(
            prompts_df, session.prompt_ids, out_dir, session.header, session.run_batch,
            batch_size=generation.batch_size, shard_sequences=routing.shard_sequences, progress=progress, on_shard=on_shard,
        )
