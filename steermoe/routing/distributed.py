"""Routing collection on Ray workers (``execution.executor: ray``): the same shards, the same store.

Each worker opens a :class:`~steermoe.routing.collect.RoutingSession` once (model loaded, router
hooks on) and computes whole shards with it; this process writes each shard into the store as it
arrives and finishes the manifest once all are in. Shards are cut by
:func:`~steermoe.routing.collect.shard_bounds` (prompt order and ``routing.shard_sequences``), and
batches never leave a shard, so every record equals a single-process run's, whatever the worker
count. A store left by an interrupted run (local or Ray) resumes with its missing shards only.
Why actors rather than one Prefect task per shard: see :mod:`steermoe.execution`.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from steermoe.errors import WorkerFailed
from steermoe.execution import WorkerPool, WorkUnit, ray_cluster
from steermoe.generation import GenerationSettings
from steermoe.routing.collect import RoutingSettings, routing_session, shard_bounds, shard_count
from steermoe.routing.store import RoutingStore, RoutingStoreWriter

__all__ = ["RoutingWorker", "collect_routing_on_ray", "routing_units"]


class RoutingWorker:
    """A session on a Ray worker: the model loaded once, router hooks on, shards computed on demand."""

    def __init__(
        self, model_cfg, model_path: str, prompts_df: pd.DataFrame, fingerprint: str, generation: GenerationSettings, routing: RoutingSettings
    ):
        from steermoe.modeling import load_pretrained

        model, tokenizer = load_pretrained(model_cfg, model_path)
        self._rows = prompts_df.to_dict("records")
        self._stack = ExitStack()
        session = routing_session(model, tokenizer, prompts_df, generation=generation, routing=routing, fingerprint=fingerprint)
        self._session = self._stack.enter_context(session)

    def header(self) -> dict:
        return self._session.header

    def shard(self, index: int) -> tuple[Any, Any, int]:
        """``(sequences, tokens, batch size that fit)`` of shard ``index``."""
        sequences, tokens = self._session.shard_tables(index, self._rows)
        return sequences, tokens, self._session.batch_size

    def close(self) -> None:
        self._stack.close()


def routing_units(prompts_df: pd.DataFrame, shard_sequences: int, skip: set[int] = frozenset()) -> list[WorkUnit]:
    """One unit per shard not in ``skip``, carrying its prompts' ids."""
    ids = prompts_df["id"].astype(str).tolist()
    units = []
    for s in range(shard_count(len(ids), shard_sequences)):
        if s not in skip:
            lo, hi = shard_bounds(s, shard_sequences, len(ids))
            units.append(WorkUnit(s, tuple(ids[lo:hi]), (s,)))
    return units


def collect_routing_on_ray(
    execution_cfg, model_cfg, model_path: str | Path, prompts_df: pd.DataFrame, out_dir: str | Path, *,
    generation: GenerationSettings = GenerationSettings(), routing: RoutingSettings = RoutingSettings(), progress: bool = True,
    on_shard=None,
) -> RoutingStore:
    """Collect routing for ``prompts_df`` into the store at ``out_dir`` on ``execution.num_workers`` Ray
    workers, answering and recording as :func:`~steermoe.routing.collect.collect_routing` does;
    ``on_shard(index)`` runs once a shard is on disk."""
    from tqdm.auto import tqdm

    from steermoe.modeling import model_fingerprint

    fingerprint = model_fingerprint(model_path)  # once here, not once per worker
    opener = partial(RoutingWorker, model_cfg, str(model_path), prompts_df, fingerprint, generation, routing)
    n, per_shard = len(prompts_df), routing.shard_sequences
    started = time.perf_counter()
    with ray_cluster(execution_cfg), WorkerPool(execution_cfg, "routing") as pool:
        headers = pool.call_all("routing", opener, "header")
        startup = time.perf_counter() - started  # workers placed, model loaded in each
        if any(h != headers[0] for h in headers[1:]):
            raise WorkerFailed("routing: the Ray workers loaded different models or tokenizers; give every node the same model folder")
        writer = RoutingStoreWriter(out_dir, headers[0])
        units = routing_units(prompts_df, per_shard, skip=writer.done_shards())
        bar = tqdm(total=n, initial=n - sum(len(u.prompt_ids) for u in units), desc=f"routing ({execution_cfg.num_workers} Ray workers)", unit="seq", disable=not progress)
        tally = {"tokens": 0, "batch_size": generation.batch_size}

        def write(unit: WorkUnit, result) -> None:
            sequences, tokens, batch_size = result
            writer.write_shard(unit.index, sequences, tokens)
            tally["tokens"] += tokens.num_rows
            tally["batch_size"] = min(tally["batch_size"], batch_size)
            bar.update(len(unit.prompt_ids))
            if on_shard:
                on_shard(unit.index)

        pool.map("routing", opener, "shard", units, write)
        bar.close()
    elapsed = time.perf_counter() - started
    return writer.finish(
        list(range(shard_count(n, per_shard))), seconds=round(elapsed, 3), recorded_tokens_this_run=tally["tokens"],
        tokens_per_second=round(tally["tokens"] / elapsed, 1) if tally["tokens"] else None, final_batch_size=tally["batch_size"],
        executor="ray", workers=execution_cfg.num_workers, startup_seconds=round(startup, 3),
    )
