"""Data-parallel execution on Ray: a pool of workers that each load a model once and work through shards.

The stages that generate (routing collection, evaluation) cut their prompts into shards fixed by the
prompt order and a shard size (never by the worker count), and hand them to a :class:`WorkerPool`:
``execution.num_workers`` Ray actors, each holding one *session* (a loaded model with whatever it
needs: router hooks, a steering edit) and running shard after shard on it. Results come back to the
stage's process, which writes them exactly as a single-process run would, so the merged output is
the same record for record whatever the worker count.

Why the stage dispatches to Ray itself instead of running each shard as a Prefect task on
``prefect_ray.RayTaskRunner``: a task runner turns every task into a stateless Ray task, so each shard
would load the model again (minutes for a 30B MoE), while an actor loads it once per worker and
keeps it. Per-shard caching is kept anyway, one level down: a shard is on disk (checksummed in the
store's manifest) or it is not, and a re-run computes only the missing ones, with or without
Prefect. The flow keeps one task per stage and reads like the process.

Faults: a worker process that dies (killed, OOM-killed, node lost) is restarted by Ray and its
in-flight shards are retried, at most ``execution.max_retries`` times; shards are pure functions of
their prompts and the model, so a retried shard is identical. A shard that still fails (or raises)
stops the stage with one line naming the shard and its prompt ids; shards already written stay, so
the next run resumes.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from steermoe.errors import ConfigError, SteerMoEError, WorkerFailed

__all__ = ["WorkUnit", "WorkerPool", "ray_cluster", "ray_available", "describe_ids"]

log = logging.getLogger(__name__)
IN_FLIGHT_PER_WORKER = 2  # one running, one queued: a worker never waits for the driver between shards


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("execution.executor: 'ray' needs Ray; install the extra: pip install 'steermoe[ray]'") from None
    return ray


@dataclass(frozen=True)
class WorkUnit:
    """One shard: its index (its identity in the output), the ids of its prompts (for error messages)
    and the arguments of the session method that computes it."""

    index: int
    prompt_ids: tuple[str, ...]
    args: tuple = ()


def describe_ids(ids: Sequence[str], show: int = 6) -> str:
    """``a, b, c, ... (N prompts)``: enough to find a shard's prompts, short enough for one line."""
    head = ", ".join(str(i) for i in ids[:show])
    return f"{head}, ... ({len(ids)} prompts)" if len(ids) > show else head


@contextmanager
def ray_cluster(execution_cfg) -> Iterator[Any]:
    """Ray, connected: the cluster at ``ray_address``, the instance this process already joined, or a
    local one started for the run (and stopped after it). Yields the ``ray`` module."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        address = execution_cfg.ray_address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable, as `ray.init` reads it
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if address:
            _check_reachable(address)
        else:  # a local instance with room for every worker (Ray would otherwise wait forever for CPUs)
            need = execution_cfg.num_workers * execution_cfg.cpus_per_worker
            options["num_cpus"] = max(os.cpu_count() or 1, int(need + 0.999))
        try:
            ray.init(address=address, **options)
        except ConnectionError as e:
            raise ConfigError(f"execution.ray_address: cannot reach a Ray cluster at {address!r} ({str(e).splitlines()[0]}); start one with `ray start --head`") from None
        started = True
    try:
        _check_resources(ray, execution_cfg)
        yield ray
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """Refuse an address nothing listens on at once (Ray itself retries such an address for minutes)."""
    import socket

    hostport = address.removeprefix("ray://")
    if address == "auto" or ":" not in hostport:
        return  # 'auto' finds the cluster this node joined; Ray says so quickly when there is none
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"execution.ray_address: nothing answers at {address!r} ({e.strerror or e}); start the head with "
            "`ray start --head --port=6379`, or leave ray_address empty to start a local Ray for the run"
        ) from None


def _check_resources(ray, cfg) -> None:
    """Fail at once when the workers can never be placed (Ray would wait forever)."""
    total = ray.cluster_resources()
    for resource, per_worker in (("GPU", cfg.gpus_per_worker), ("CPU", cfg.cpus_per_worker)):
        if per_worker > total.get(resource, 0):
            key = f"execution.{resource.lower()}s_per_worker"
            raise ConfigError(
                f"{key}: {per_worker:g} asked for, but the Ray cluster has {total.get(resource, 0):g} {resource}s in all; "
                f"lower {key} or add nodes with {resource}s"
            )
    need = cfg.num_workers * cfg.gpus_per_worker
    if need > total.get("GPU", 0):
        log.warning("execution: %d workers x %g GPUs exceeds the cluster's %g GPUs; some workers wait for free GPUs", cfg.num_workers, cfg.gpus_per_worker, total.get("GPU", 0))


class _Worker:
    """The Ray actor: one session at a time, opened on first use and kept for the shards that follow."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self._key: str | None = None
        self._session: Any = None

    def run(self, key: str, opener_ref: list, method: str, *args):
        if key != self._key:
            self._close()
            import ray

            # The opener travels as an object ref inside a list so Ray does not fetch it for every shard.
            self._session = ray.get(opener_ref[0])()
            self._key = key
        return getattr(self._session, method)(*args)

    def pid(self) -> int:
        return os.getpid()

    def _close(self) -> None:
        close = getattr(self._session, "close", None)
        if close is not None:
            close()
        self._session, self._key = None, None


class WorkerPool:
    """``execution.num_workers`` Ray actors with the configured CPUs/GPUs and restart budget."""

    def __init__(self, execution_cfg, name: str):
        ray = _ray()
        self.cfg, self.name = execution_cfg, name
        retries = execution_cfg.max_retries
        actor = ray.remote(_Worker).options(
            num_cpus=execution_cfg.cpus_per_worker,
            num_gpus=execution_cfg.gpus_per_worker,
            max_restarts=retries,
            max_task_retries=retries,  # a call in flight when its worker died runs again on the restarted one
        )
        self.workers = [actor.remote(int(execution_cfg.cpus_per_worker)) for _ in range(execution_cfg.num_workers)]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker, no_restart=True)

    def pids(self) -> list[int]:
        import ray

        return ray.get([w.pid.remote() for w in self.workers])

    def call_all(self, key: str, opener: Callable[[], Any], method: str, *args) -> list[Any]:
        """``method(*args)`` on every worker's session (e.g. to check that all loaded the same model)."""
        import ray

        ref = [ray.put(opener)]
        return self._get(ray, [w.run.remote(key, ref, method, *args) for w in self.workers], None)

    def map(
        self, key: str, opener: Callable[[], Any], method: str, units: Sequence[WorkUnit], on_result: Callable[[WorkUnit, Any], None],
        label: str | None = None,
    ) -> None:
        """Run ``method(*unit.args)`` for every unit on the workers' sessions (``key`` names the session;
        ``opener()`` opens it); ``on_result(unit, result)`` runs here, in completion order. ``label``
        (default: the pool's name) is what a failure message calls the work."""
        import ray

        ref = [ray.put(opener)]
        queue = deque(units)
        in_flight: dict[Any, tuple[WorkUnit, int]] = {}
        load = [0] * len(self.workers)
        while queue or in_flight:
            for i, worker in enumerate(self.workers):
                while queue and load[i] < IN_FLIGHT_PER_WORKER:
                    unit = queue.popleft()
                    in_flight[worker.run.remote(key, ref, method, *unit.args)] = (unit, i)
                    load[i] += 1
            (done,), _ = ray.wait(list(in_flight), num_returns=1)
            unit, i = in_flight.pop(done)
            load[i] -= 1
            on_result(unit, self._get(ray, done, unit, label))

    def _get(self, ray, refs, unit: WorkUnit | None, label: str | None = None):
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:  # the session raised: deterministic, not retried
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if unit is None and isinstance(cause, SteerMoEError):  # e.g. a model folder a worker cannot read
                raise cause from None
            raise WorkerFailed(f"{self._where(unit, label)} failed on a Ray worker: {type(cause).__name__}: {_first_line(cause)}") from None
        except ray.exceptions.RayActorError as e:  # the worker died more often than max_retries allows
            raise WorkerFailed(
                f"{self._where(unit, label)}: its Ray worker died and was restarted {self.cfg.max_retries} times (execution.max_retries) "
                f"without finishing it ({_first_line(e)}); check the worker logs (out of memory?) and re-run to resume"
            ) from None

    def _where(self, unit: WorkUnit | None, label: str | None = None) -> str:
        if unit is None:
            return f"{self.name}: starting a worker"
        return f"{label or self.name}: shard {unit.index} (prompt ids {describe_ids(unit.prompt_ids)})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
