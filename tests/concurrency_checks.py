"""What the concurrency tests check once every run finished, on SQLite (``tests/test_resilience.py``) and
on the stack (``tests/test_stack_resilience.py``): config X ran twice and config Y (one more expert)
once, side by side, on one cache directory."""

from __future__ import annotations

import json
from pathlib import Path

# Validation, model, routing and risk are shared by the three runs: computed once each; from the selection
# on X and Y differ: two keys, each computed once, whichever of X's runs got there first.
X_TWICE_AND_Y = {
    "validate_prompts": [1], "prepare_model": [1], "collect_routing": [1], "risk_difference": [1],
    "select_experts": [1, 1], "finetune": [1, 1], "evaluate": [1, 1], "register": [1, 1],
}


def audit(cache: Path) -> dict[str, list[int]]:
    """Stage -> how many times each of its keys was computed (one entry per key; see tasks.locking)."""
    out: dict[str, list[int]] = {}
    for f in sorted((cache / "locks").glob("*.computed")):
        out.setdefault(f.name.split("-")[0], []).append(len(f.read_text().splitlines()))
    return out


def assert_each_key_computed_once_and_every_result_intact(cache: Path) -> None:
    from steermoe.routing import RoutingStore
    from tasks.caching import record_is_valid

    assert audit(cache) == X_TWICE_AND_Y
    records = sorted((cache / "locks").glob("*.done.json"))
    assert len(records) == sum(len(keys) for keys in X_TWICE_AND_Y.values())
    assert all(record_is_valid(json.loads(p.read_text())) for p in records), "a finished record names a missing file or version"
    stores = list((cache / "runs").rglob("store/manifest.json"))
    assert len(stores) == 1
    RoutingStore(stores[0].parent).verify()  # every shard's checksum: no run wrote into another's collection
    selections = [json.loads(p.read_text())["experts"] for p in (cache / "runs").rglob("selection.json")]
    assert sorted(len(s) for s in selections) == [2, 3]
