"""One local Ray instance per test module (2 CPUs, no dashboard: ~7 s to start), shut down after it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="needs the [ray] extra")
    if ray.is_initialized():  # another module's instance: reuse it
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
