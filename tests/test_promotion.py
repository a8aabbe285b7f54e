import pytest

from steermoe.config import TrackingConfig
from steermoe.promotion import OVER_REFUSAL, REFUSAL, UTILITY_LOSS, decide

TOL = TrackingConfig(promotion_margin=0.05, over_refusal_tolerance=0.05, utility_tolerance=0.1)


def run(candidate, reference, cfg=TOL, **kw):
    return decide(
        candidate,
        reference,
        promotion_margin=cfg.promotion_margin,
        over_refusal_tolerance=cfg.over_refusal_tolerance,
        utility_tolerance=cfg.utility_tolerance,
        **kw,
    )


def m(refusal, over, loss):
    return {REFUSAL: refusal, OVER_REFUSAL: over, UTILITY_LOSS: loss}


def test_accepted_when_every_rule_passes():
    d = run(m(0.80, 0.06, 2.05), m(0.60, 0.04, 2.00))
    assert d.promote
    assert d.numbers["refusal_gain"] == pytest.approx(0.20)
    assert d.numbers["extra_over_refusal"] == pytest.approx(0.02)
    assert all(r.startswith("ok:") for r in d.reasons)


@pytest.mark.parametrize(
    "candidate,failing",
    [
        (m(0.62, 0.04, 2.0), "refusal"),  # gains less than the margin
        (m(0.90, 0.20, 2.0), "over-refusal"),  # refuses far more safe prompts
        (m(0.90, 0.04, 2.5), "utility loss"),  # loses too much on benign answers
    ],
)
def test_refused_names_the_failing_rule(candidate, failing):
    d = run(candidate, m(0.60, 0.04, 2.0))
    assert not d.promote
    failed = [r for r in d.reasons if r.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(f"FAIL: {failing}")


def test_gain_exactly_at_the_margin_is_enough():
    assert run(m(0.55, 0.0, 1.0), m(0.50, 0.0, 1.0)).promote


def test_a_missing_metric_refuses_instead_of_raising():
    d = run({REFUSAL: 1.0, OVER_REFUSAL: 0.0}, m(0.5, 0.0, 1.0))
    assert not d.promote
    assert "utility_loss" in d.reasons[0]


def test_reference_name_is_recorded():
    d = run(m(0.8, 0.0, 1.0), m(0.1, 0.0, 1.0), reference_name="base")
    assert d.reference == "base" and "base.refusal_rate" in d.numbers
    assert d.to_dict()["promote"] is True
