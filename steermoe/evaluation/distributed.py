"""Evaluation generation on Ray workers (``execution.executor: ray``): the same answers, losses and drift.

:func:`ray_model_opener` gives :func:`~steermoe.evaluation.comparison.compare_models` an ``open_model``
whose :class:`RayModel` spreads the three model passes of an evaluation (answering the prompts, the
loss of the base model's benign answers, the expert usage for drift) over the workers in shards of
whole generation batches. Each worker loads a model entry once (steered, when the entry says so) and
keeps it until the next entry; judges and metrics run here, on the gathered results. Shards are cut
from the prompt order and ``execution.evaluation_shard_prompts`` rounded up to whole batches, so
every batch is the one a single process would run and every response and metric is the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from steermoe.evaluation.comparison import LoadedModel, ModelEntry, open_loaded_model
from steermoe.execution import WorkerPool, WorkUnit, ray_cluster
from steermoe.generation import GenerationSettings

__all__ = ["EvaluationWorker", "RayModel", "ray_model_opener", "batch_aligned_shards"]


class EvaluationWorker:
    """A session on a Ray worker: one model entry loaded (and steered) for all its shards."""

    def __init__(self, name: str, entry: ModelEntry):
        self._open = open_loaded_model(name, entry)
        self._model: LoadedModel = self._open.__enter__()

    def generate_frame(self, prompts_df: pd.DataFrame, generation: GenerationSettings) -> pd.DataFrame:
        return self._model.generate_frame(prompts_df, generation, progress=False)

    def answer_losses(self, prompt_ids, answer_ids, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return self._model.answer_losses(prompt_ids, answer_ids, batch_size)

    def expert_usage(self, prompt_ids, answer_ids, batch_size: int) -> np.ndarray:
        return self._model.expert_usage(prompt_ids, answer_ids, batch_size)

    def close(self) -> None:
        self._open.__exit__(None, None, None)


def batch_aligned_shards(n: int, shard_prompts: int, batch_size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each shard: ``shard_prompts`` rounded up to whole batches, so a shard's batches
    are exactly a single process's (same rows padded together, same numbers)."""
    size = -(-shard_prompts // batch_size) * batch_size
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


class RayModel:
    """One model entry evaluated on the pool's workers; the methods of :class:`LoadedModel`."""

    def __init__(self, pool: WorkerPool, name: str, entry: ModelEntry, shard_prompts: int):
        self.pool, self.name, self.shard_prompts = pool, name, shard_prompts
        self._opener = partial(EvaluationWorker, name, entry)

    def _gather(self, method: str, n: int, batch_size: int, ids: Sequence[str], args_of) -> list:
        shards = batch_aligned_shards(n, self.shard_prompts, batch_size)
        units = [WorkUnit(i, tuple(ids[lo:hi]), args_of(lo, hi)) for i, (lo, hi) in enumerate(shards)]
        results: dict[int, Any] = {}
        self.pool.map(self.name, self._opener, method, units, lambda unit, result: results.__setitem__(unit.index, result), label=f"evaluation of {self.name} ({method})")
        return [results[i] for i in range(len(shards))]

    def generate_frame(self, prompts_df: pd.DataFrame, generation: GenerationSettings, progress=True) -> pd.DataFrame:
        parts = self._gather(
            "generate_frame", len(prompts_df), generation.batch_size, prompts_df["id"].astype(str).tolist(),
            lambda lo, hi: (prompts_df.iloc[lo:hi], generation.for_batch(lo)),
        )
        return pd.concat(parts, ignore_index=True)

    def answer_losses(self, prompt_ids, answer_ids, batch_size: int, ids=None) -> tuple[np.ndarray, np.ndarray]:
        parts = self._gather("answer_losses", len(prompt_ids), batch_size, _ids(ids, prompt_ids), lambda lo, hi: (prompt_ids[lo:hi], answer_ids[lo:hi], batch_size))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def expert_usage(self, prompt_ids, answer_ids, batch_size: int, ids=None) -> np.ndarray:
        parts = self._gather("expert_usage", len(prompt_ids), batch_size, _ids(ids, prompt_ids), lambda lo, hi: (prompt_ids[lo:hi], answer_ids[lo:hi], batch_size))
        return np.concatenate(parts)


def _ids(ids, rows) -> list[str]:
    return [str(i) for i in ids] if ids is not None else [f"#{i}" for i in range(len(rows))]


@contextmanager
def ray_model_opener(execution_cfg) -> Iterator[Any]:
    """An ``open_model`` for :func:`~steermoe.evaluation.comparison.compare_models` backed by one Ray
    worker pool for the whole comparison (workers switch model entries as the comparison does)."""
    with ray_cluster(execution_cfg), WorkerPool(execution_cfg, "evaluation") as pool:

        @contextmanager
        def open_model(name: str, entry: ModelEntry) -> Iterator[RayModel]:
            yield RayModel(pool, name, entry, execution_cfg.evaluation_shard_prompts)

        yield open_model
