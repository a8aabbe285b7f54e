"""Routing collection on a local Ray cluster (2 CPUs, 2 workers, the tiny demo model): the store it
writes equals the single-process store record for record (from the CLI, on a Ray it starts itself),
a killed worker is retried without changing a record, and a shard that runs out of retries fails
with one line and resumes with only the missing shards."""

from __future__ import annotations

import os
import signal

import pytest

from steermoe.config import RunConfig
from steermoe.errors import ConfigError, WorkerFailed
from steermoe.generation import GenerationSettings
from steermoe.routing import RoutingStore
from steermoe.routing.collect import RoutingSettings
from steermoe.stages import collect_with_backend
from tests.ray_fixtures import ray_local  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("ray_local")
N_PROMPTS, PER_SHARD = 24, 4
# As the single-process store's config below says (generation and routing sections).
SETTINGS = dict(
    generation=GenerationSettings(max_new_tokens=8, batch_size=4, chat_template_kwargs={"enable_thinking": False}),
    routing=RoutingSettings(shard_sequences=PER_SHARD),
)


@pytest.fixture(scope="module")
def prompts():
    from steermoe.demo import load_demo_prompts

    return load_demo_prompts().head(N_PROMPTS).reset_index(drop=True)


def config(model_path, **execution) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"source": str(model_path), "device": "cpu"},
        "generation": {"max_new_tokens": 8, "batch_size": 4},
        "routing": {"shard_sequences": PER_SHARD},
        "execution": {"executor": "ray", "num_workers": 2, **execution},
    })


@pytest.fixture(scope="module")
def single_process(tiny_demo_model, prompts, tmp_path_factory):
    cfg = config(tiny_demo_model, executor="local")
    return collect_with_backend(cfg, tiny_demo_model, prompts, tmp_path_factory.mktemp("local") / "store", progress=False)


def records(store: RoutingStore) -> dict[str, tuple]:
    """Every sequence and its recorded tokens, by prompt id (order-independent)."""
    out = {}
    for shard in store.iter_shards():
        for row in shard.sequences.to_dict("records"):
            mask = shard.seq == row["seq"]
            tokens = (shard.segment[mask].tolist(), shard.token_id[mask].tolist(), shard.experts[mask].tolist())
            out[row["prompt_id"]] = (row["seq"], row["generated_text"], list(row["generated_token_ids"]), tokens)
    return out


def assert_same_store(got: RoutingStore, want: RoutingStore) -> None:
    got.verify()
    assert got.complete
    assert records(got) == records(want)
    assert len(records(got)) == N_PROMPTS
    # Same shard contents, byte for byte: the manifests carry the same checksums.
    assert got.manifest["shards"] == want.manifest["shards"]
    for key in ("model", "tokenizer", "generation", "prompts", "record", "counts"):
        assert got.manifest[key] == want.manifest[key], key


def worker_pids() -> set[int]:
    """This test process's own Ray workers (never another test run's on the same machine)."""
    import psutil

    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and " ".join(p.cmdline()).startswith("ray::_Worker"):
                pids.add(p.pid)
        except psutil.Error:  # exited (or was killed) meanwhile
            continue
    return pids


def test_a_worker_killed_mid_run_is_retried_and_the_store_is_unchanged(tiny_demo_model, prompts, single_process, tmp_path):
    from steermoe.routing.distributed import collect_routing_on_ray

    cfg = config(tiny_demo_model, max_retries=2)
    killed: list[int] = []

    def kill_a_busy_worker(shard: int) -> None:
        if not killed:  # after the first shard lands, the other calls are still running or queued
            pid = min(worker_pids())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    settings = SETTINGS
    store = collect_routing_on_ray(cfg.execution, cfg.model, tiny_demo_model, prompts, tmp_path / "store", **settings, progress=False, on_shard=kill_a_busy_worker)
    assert killed
    assert_same_store(store, single_process)


def test_a_shard_out_of_retries_fails_with_one_line_and_the_run_resumes(tiny_demo_model, prompts, single_process, tmp_path):
    cfg = config(tiny_demo_model, max_retries=0)
    out = tmp_path / "store"
    from steermoe.routing.distributed import collect_routing_on_ray

    killed: list[int] = []

    def kill_a_worker(shard: int) -> None:
        if not killed:
            killed.append(min(worker_pids()))
            os.kill(killed[0], signal.SIGKILL)

    settings = SETTINGS
    with pytest.raises(WorkerFailed) as failed:
        collect_routing_on_ray(cfg.execution, cfg.model, tiny_demo_model, prompts, out, **settings, progress=False, on_shard=kill_a_worker)
    message = str(failed.value)
    assert "\n" not in message and "routing: shard " in message and "execution.max_retries" in message
    shard = int(message.split("shard ")[1].split(" ")[0])
    ids = prompts["id"].astype(str).tolist()[shard * PER_SHARD : (shard + 1) * PER_SHARD]
    assert ", ".join(ids) in message  # the failing shard's prompts, by id

    partial = RoutingStore(out)
    assert not partial.complete and 0 < len(partial.shard_names()) < N_PROMPTS // PER_SHARD
    kept = {int(n.split("-")[1]) for n in partial.shard_names()}
    computed: list[int] = []
    resumed = collect_routing_on_ray(config(tiny_demo_model).execution, cfg.model, tiny_demo_model, prompts, out, **settings, progress=False, on_shard=computed.append)
    assert sorted(computed) == sorted(set(range(N_PROMPTS // PER_SHARD)) - kept)  # only the missing shards ran
    assert_same_store(resumed, single_process)


def test_vllm_backend_on_ray_is_refused_with_the_key(tiny_demo_model, prompts, tmp_path):
    cfg = config(tiny_demo_model)
    cfg.routing.backend = "vllm"
    with pytest.raises(ConfigError, match="execution.executor"):
        collect_with_backend(cfg, tiny_demo_model, prompts, tmp_path / "store", progress=False)


def test_cli_collect_starts_its_own_ray_and_writes_the_same_store(tiny_demo_model, tmp_path):
    """`steermoe collect --set execution.executor=ray` with no ray_address: a local Ray started for the
    run (and stopped after it) in a fresh process, as a user runs it."""
    import json
    import subprocess
    import sys

    from steermoe.cli.routing import load_routing_prompts
    from steermoe.config import load_config
    from tests.conftest import make_prompts

    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(n_safe=5, n_unsafe=5)), encoding="utf-8")
    sets = [f"model.source={tiny_demo_model}", "model.device=cpu", f"prompts.sources=[{{path: {source}}}]", "generation.max_new_tokens=8",
            "generation.batch_size=4", f"routing.shard_sequences={PER_SHARD}", "execution.executor=ray", "execution.num_workers=2"]
    argv = [sys.executable, "-m", "steermoe", "collect", "--out", str(tmp_path / "ray")] + [a for s in sets for a in ("--set", s)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr[-2000:]

    cfg = load_config(None, sets + ["execution.executor=local"])
    want = collect_with_backend(cfg, tiny_demo_model, load_routing_prompts(cfg), tmp_path / "local", progress=False)
    got = RoutingStore(tmp_path / "ray")
    got.verify()
    assert got.complete and records(got) == records(want) and got.manifest["shards"] == want.manifest["shards"]
    assert got.manifest["summary"]["executor"] == "ray" and got.manifest["summary"]["workers"] == 2


def test_workers_the_cluster_cannot_place_fail_at_once_with_the_key(tiny_demo_model, prompts, tmp_path):
    with pytest.raises(ConfigError, match=r"execution.gpus_per_worker: 1 asked for, but the Ray cluster has 0 GPUs in all"):
        collect_with_backend(config(tiny_demo_model, gpus_per_worker=1), tiny_demo_model, prompts, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()  # nothing half-written
