import json
import subprocess
import sys

import numpy as np
import pytest

from steermoe.analysis import risk_difference_from_counts
from steermoe.config import SelectionConfig
from steermoe.errors import InputError
from steermoe.selection import (
    STRATEGIES,
    ExpertSelection,
    per_layer_cap,
    random_baseline,
    random_like,
    select_experts,
    select_from_config,
    signed_pair,
    significance,
    threshold_top_k,
    top_p_per_layer,
)


@pytest.fixture(scope="module")
def table():
    """4 layers x 16 experts with known activation counts (2000 tokens per class)."""
    rng = np.random.default_rng(3)
    layers, experts, n = [0, 2, 4, 6], 16, 2000
    p_safe = rng.uniform(0.05, 0.3, size=len(layers) * experts)
    effect = np.zeros_like(p_safe)
    effect[[3, 17, 18, 40, 41, 42, 43]] = [0.30, 0.20, 0.18, 0.15, 0.12, 0.10, 0.01]
    effect[[5, 60]] = [-0.04, -0.2]
    a_safe = np.round(p_safe * n)
    a_unsafe = np.round(np.clip(p_safe + effect, 0, 1) * n)
    return risk_difference_from_counts(np.repeat(layers, experts), np.tile(np.arange(experts), len(layers)), a_unsafe, n, a_safe, n)


def pairs(rows):
    return list(zip(rows["layer"].tolist(), rows["expert"].tolist()))


def test_threshold_top_k_is_the_seed_rule(table):
    sel = threshold_top_k(table, threshold=0.05, top_k=4)
    expected = table[table["risk_diff"] > 0.05].sort_values("risk_diff", ascending=False).head(4)
    assert sel.experts == pairs(expected) and sel.scores == pytest.approx(expected["risk_diff"].tolist())
    assert sel.experts[0] == (0, 3) and sel.params == {"threshold": 0.05, "top_k": 4}
    assert len(threshold_top_k(table, threshold=0.05, top_k=None)) == int((table["risk_diff"] > 0.05).sum())


def test_per_layer_cap(table):
    sel = per_layer_cap(table, threshold=0.05, top_k=10, per_layer_cap=2)
    per_layer = {layer: len(v) for layer, v in sel.by_layer().items()}
    assert max(per_layer.values()) == 2 and per_layer[4] == 2  # layer 4 has four strong experts, capped at two
    assert sel.scores == sorted(sel.scores, reverse=True)


def test_significance_uses_q_and_ci_lower_bound(table):
    sel = significance(table, alpha=0.01, threshold=0.05)
    ok = table[(table["q_value"] < 0.01) & (table["ci_low"] > 0.05)].sort_values("ci_low", ascending=False)
    assert sel.experts == pairs(ok) and len(sel) >= 5
    assert (1, 1) not in sel.experts and all(table.set_index(["layer", "expert"]).loc[sel.experts, "ci_low"] > 0.05)


def test_top_p_per_layer_by_hand():
    # layer 0 positives 0.5, 0.3, 0.2 (shares .5 .3 .2); layer 1 a single 0.1.
    t = risk_difference_from_counts([0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 0, 1], [60, 40, 30, 0, 20, 10], 100, [10, 10, 10, 10, 10, 10], 100)
    assert top_p_per_layer(t, top_p=0.5).experts == [(0, 0), (1, 0)]
    assert top_p_per_layer(t, top_p=0.6).experts == [(0, 0), (0, 1), (1, 0)]
    assert top_p_per_layer(t, top_p=1.0).experts == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_random_baseline_is_seeded_and_can_exclude(table):
    chosen = threshold_top_k(table, threshold=0.05, top_k=5)
    a, b = random_like(chosen, table, seed=1), random_like(chosen, table, seed=1)
    assert a.experts == b.experts and len(a) == 5 and len(set(a.experts)) == 5
    assert random_like(chosen, table, seed=2).experts != a.experts
    all_but_five = random_baseline(table, size=len(table) - 5, seed=0, exclude=chosen)
    assert not set(all_but_five.experts) & set(chosen.experts)
    with pytest.raises(InputError, match="exceeds the 59 candidate"):
        random_baseline(table, size=60, exclude=chosen)


def test_signed_pair(table):
    # direction "safe" (what steer() needs for safety): activate safe-linked experts, deactivate unsafe-linked ones.
    sel = signed_pair(table, threshold=0.05, top_k=3)
    assert sel.negative == [(0, 3), (2, 1), (2, 2)] and sel.experts == [(6, 12)]
    assert sel.scores[0] == pytest.approx(table.loc[(table.layer == 6) & (table.expert == 12), "risk_diff"].item()) and sel.scores[0] < 0
    red = signed_pair(table, threshold=0.05, top_k=3, direction="unsafe")
    assert red.experts == sel.negative and red.negative == sel.experts
    with pytest.raises(InputError, match="direction"):
        signed_pair(table, direction="up")


def test_zero_selection_errors_carry_the_numbers(table):
    with pytest.raises(InputError, match=r"largest risk_diff is 0\.3.* \(layer 0, expert 3\), not above threshold 0\.5"):
        threshold_top_k(table, threshold=0.5)
    with pytest.raises(InputError, match="smallest q-value is"):
        significance(table, alpha=0.01, threshold=0.4)
    with pytest.raises(InputError, match="negative threshold"):
        signed_pair(table, threshold=0.9)


def test_json_round_trip_and_dispatcher(table, tmp_path):
    for name in STRATEGIES:
        params = {"size": 4} if name == "random" else {}
        sel = select_experts(table, name, **params)
        assert isinstance(sel, ExpertSelection) and sel.strategy == name
        again = ExpertSelection.from_json(sel.to_json(tmp_path / f"{name}.json"))
        assert again == sel
    with pytest.raises(InputError, match="available: per_layer_cap, random, signed, significance, threshold, top_p"):
        select_experts(table, "best")
    with pytest.raises(InputError, match=r"does not take \['alpha'\]"):
        select_experts(table, "threshold", alpha=0.1)
    cfg = SelectionConfig(strategy="per_layer_cap", per_layer_cap=1, top_k=3, threshold=0.05)
    assert select_from_config(table, cfg).experts == [(0, 3), (2, 1), (4, 8)]


def test_select_cli_json(table, tmp_path):
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    out = subprocess.run(
        [sys.executable, "-m", "steermoe", "select", "--table", str(path), "--strategy", "threshold", "--threshold", "0.05", "--top-k", "3", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # stdout holds the JSON and nothing else
    assert data["experts"] == [[0, 3], [2, 1], [2, 2]] and list(data)[0] == "experts"
    bad = subprocess.run([sys.executable, "-m", "steermoe", "select", "--table", str(path), "--strategy", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "unknown selection strategy 'nope'" in bad.stderr


def test_select_cli_takes_strategy_parameters_as_name_value_pairs(table, tmp_path):
    path = tmp_path / "t.parquet"
    table.to_parquet(path)

    def select(*args):
        return subprocess.run([sys.executable, "-m", "steermoe", "select", "--table", str(path), *args], capture_output=True, text=True)

    capped = select("--strategy", "per_layer_cap", "--threshold", "0.05", "--top-k", "3", "--param", "per_layer_cap=1", "--json")
    assert capped.returncode == 0, capped.stderr
    assert json.loads(capped.stdout)["experts"] == [[0, 3], [2, 1], [4, 8]]  # as select_from_config with the same settings
    wrong = select("--strategy", "threshold", "--param", "alpha=0.1")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and "does not take ['alpha']" in wrong.stderr
    shapeless = select("--param", "alpha")
    assert shapeless.returncode == 2 and "NAME=VALUE" in shapeless.stderr
