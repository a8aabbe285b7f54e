"""Metrics: hand-computed agreement/kappa, seeded bootstrap, refusal rates, utility and routing drift on a tiny model."""

import numpy as np
import pandas as pd
import pytest

from steermoe.errors import InputError
from steermoe.evaluation.metrics import (
    METRICS,
    agreement,
    answer_losses,
    bootstrap_ci,
    cohen_kappa,
    compute_metrics,
    expert_usage,
    jensen_shannon,
    routing_drift,
)


def test_cohen_kappa_hand_computed():
    a = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    # p_o = 8/10; p_a = p_b = 0.5 -> p_e = 0.5; kappa = (0.8 - 0.5) / 0.5 = 0.6
    assert cohen_kappa(a, b) == pytest.approx(0.6)
    c = [1, 1, 1, 1, 0, 1, 1, 1, 0, 0]
    # agree at 0-3, 4 and 9: p_o = 6/10; p_a = .5, p_c = .7 -> p_e = .35 + .15 = .5; kappa = (.6 - .5) / .5 = .2
    assert cohen_kappa(a, c) == pytest.approx(0.2)
    # no better than chance: p_o = 5/10 = p_e -> 0
    assert cohen_kappa(a, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]) == pytest.approx(0.0)
    assert cohen_kappa([1, 1], [1, 1]) == 1.0
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_agreement_table():
    table = agreement({"x": [True, True, False, False], "y": [True, False, False, False], "z": [True, True, False, False]})
    assert list(zip(table.judge_a, table.judge_b)) == [("x", "y"), ("x", "z"), ("y", "z")]
    row = table.iloc[0]
    assert row.agreement == pytest.approx(0.75)
    # p_o=.75, p_x=.5, p_y=.25 -> p_e = .125 + .375 = .5 -> kappa = .5
    assert row.kappa == pytest.approx(0.5)
    assert table.iloc[1].kappa == pytest.approx(1.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    values = (rng.random(60) < 0.3).astype(float)
    p1, lo1, hi1 = bootstrap_ci(values, samples=500, seed=7)
    p2, lo2, hi2 = bootstrap_ci(values, samples=500, seed=7)
    _, lo3, hi3 = bootstrap_ci(values, samples=500, seed=8)
    assert (p1, lo1, hi1) == (p2, lo2, hi2)
    assert (lo1, hi1) != (lo3, hi3)
    assert p1 == pytest.approx(values.mean())
    assert lo1 <= p1 <= hi1 and hi1 - lo1 > 0.05
    num, den = rng.random(30) * 5, rng.integers(1, 10, 30).astype(float)
    p, lo, hi = bootstrap_ci((num, den), aggregation="ratio", samples=300, seed=0)
    assert p == pytest.approx(num.sum() / den.sum()) and lo <= p <= hi
    assert np.isnan(bootstrap_ci(values, samples=0)[1])


def _frame():
    return pd.DataFrame(
        {
            "label": ["unsafe"] * 4 + ["safe"] * 6,
            "category": ["x"] * 4 + ["cooking"] * 3 + ["borderline"] * 3,
            "refused": [True, True, True, False, False, False, True, True, False, False],
        }
    )


def test_refusal_metrics_hand_computed():
    out = compute_metrics(_frame(), samples=200, seed=0)
    assert out["refusal_rate"].value == pytest.approx(0.75) and out["refusal_rate"].higher_is_better
    assert out["over_refusal"].value == pytest.approx(2 / 6) and not out["over_refusal"].higher_is_better
    assert out["over_refusal_safe"].value == pytest.approx(1 / 3)
    assert out["over_refusal_borderline"].value == pytest.approx(1 / 3)
    assert out["refusal_rate"].n == 4 and out["over_refusal_borderline"].n == 3
    assert "utility_loss" not in out  # no loss columns, no utility metric
    for value in out.values():
        assert value.ci_low <= value.value <= value.ci_high


def test_metric_registry_declares_direction_and_aggregation():
    assert METRICS.get("refusal_rate").higher_is_better is True
    for name in ("over_refusal", "over_refusal_borderline", "utility_loss_delta", "routing_drift"):
        assert METRICS.get(name).higher_is_better is False
    assert METRICS.get("utility_loss").aggregation == "ratio"
    with pytest.raises(InputError, match="unknown metric"):
        METRICS.get("accuracy")


def test_jensen_shannon():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert jensen_shannon(p, p).tolist() == [0.0, 0.0]
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    # counts are normalised: scale does not matter
    assert jensen_shannon(np.array([2.0, 6.0]), np.array([1.0, 3.0])) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def tiny():
    from tests.fixtures.tiny_moe import tiny_model

    class Tok:
        pad_token_id = 0

    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 128, rng.integers(3, 7)).tolist() for _ in range(6)]
    answers = [rng.integers(1, 128, rng.integers(2, 5)).tolist() for _ in range(6)]
    return tiny_model("qwen3_moe"), Tok(), prompts, answers


def test_utility_and_drift_identical_then_perturbed(tiny):
    import copy

    import torch

    from steermoe.adapters import moe_layers

    model, tok, prompts, answers = tiny
    sums, counts = answer_losses(model, tok, prompts, answers, batch_size=4)
    assert counts.tolist() == [len(a) for a in answers]
    assert (sums > 0).all()
    base_usage = expert_usage(model, tok, prompts, answers, batch_size=4)
    # every real token routes to top-2 experts in each of the 2 layers
    assert base_usage.shape == (6, 2, 8)
    assert base_usage.sum(axis=2).tolist() == [[2 * (len(p) + len(a))] * 2 for p, a in zip(prompts, answers)]
    same = expert_usage(copy.deepcopy(model), tok, prompts, answers, batch_size=3)  # other batching, same counts
    drift, per_layer = routing_drift(base_usage, same, samples=100)
    assert drift.value == 0.0 and per_layer.tolist() == [0.0, 0.0] and drift.ci_high == 0.0

    other = copy.deepcopy(model)
    first = moe_layers(other)[0]
    used = int(np.argmax(base_usage[:, 0].sum(0)))
    with torch.no_grad():
        for name in ("gate_up_proj", "down_proj"):
            getattr(first.experts, name)[used].mul_(-50.0)  # one expert of layer 0 changes its output
    moved = expert_usage(other, tok, prompts, answers, batch_size=4)
    drift, per_layer = routing_drift(base_usage, moved, samples=100, seed=0)
    assert per_layer[0] == 0.0  # layer 0's routing sees the same inputs
    assert per_layer[1] > 0.0 and drift.value > 0.0
    assert drift.ci_low <= drift.value <= drift.ci_high
    new_sums, _ = answer_losses(other, tok, prompts, answers, batch_size=4)
    assert not np.allclose(new_sums, sums)
