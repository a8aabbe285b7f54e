"""steermoe.execution without a cluster: addresses nothing answers at, impossible worker shapes and
descriptions of shards fail fast with the key, and never hang on Ray's own retries."""

from __future__ import annotations

import socket

import pytest

from steermoe.config import ExecutionConfig
from steermoe.errors import ConfigError
from steermoe.execution import describe_ids, ray_cluster

pytest.importorskip("ray", reason="needs the [ray] extra")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_nothing_answers_at_fails_at_once_with_the_key(scheme):
    address = f"{scheme}127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=r"execution.ray_address: nothing answers at .*ray start --head"):
        with ray_cluster(ExecutionConfig(executor="ray", ray_address=address)):
            pass


def test_auto_without_a_cluster_says_how_to_start_one(monkeypatch):
    import os

    if os.path.exists("/tmp/ray/ray_current_cluster"):
        pytest.skip("a Ray cluster started with `ray start` runs on this machine: 'auto' would find it")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="execution.ray_address: cannot reach a Ray cluster at 'auto'"):
        with ray_cluster(ExecutionConfig(executor="ray", ray_address="auto")):
            pass


def test_shards_are_described_by_their_prompt_ids():
    assert describe_ids(["a", "b"]) == "a, b"
    assert describe_ids([f"p{i}" for i in range(10)]) == "p0, p1, p2, p3, p4, p5, ... (10 prompts)"


def test_the_executor_is_in_no_cache_key():
    """Ray or local, the records are the same: switching executors reuses every cached stage."""
    from steermoe.config import RunConfig
    from steermoe.stage_specs import STAGE_SPECS

    local = RunConfig()
    ray = RunConfig.model_validate({"execution": {"executor": "ray", "num_workers": 8, "gpus_per_worker": 1, "ray_address": "auto"}})
    for name, spec in STAGE_SPECS.items():
        assert not any(key.split(".")[0] == "execution" for key in spec.reads), name
        assert spec.config_values(ray) == spec.config_values(local), name
