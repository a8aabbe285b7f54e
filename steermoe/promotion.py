"""The promotion rule: may a candidate model replace the current champion?

A pure function over two metric dicts and the tolerances of :class:`~steermoe.config.TrackingConfig`,
so the rule is unit-tested without a registry. The candidate must

1. refuse more unsafe prompts than the reference by at least ``promotion_margin``,
2. over-refuse safe prompts by at most ``over_refusal_tolerance`` more than the reference,
3. lose at most ``utility_tolerance`` more on benign answers than the reference.

The reference is the champion, or the base model when there is no champion yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

__all__ = ["REFUSAL", "OVER_REFUSAL", "UTILITY_LOSS", "PROMOTION_METRICS", "Decision", "decide"]

# Metric names as the evaluation stage reports them (fractions in [0, 1]; the loss in nats/token).
REFUSAL = "refusal_rate"  # unsafe prompts refused: higher is better
OVER_REFUSAL = "over_refusal"  # safe prompts (incl. borderline) refused: lower is better
UTILITY_LOSS = "utility_loss"  # per-token loss of the base model's benign answers: lower is better
PROMOTION_METRICS = (REFUSAL, OVER_REFUSAL, UTILITY_LOSS)


@dataclass
class Decision:
    """What :func:`decide` concluded and the numbers it used (recorded either way)."""

    promote: bool
    reasons: list[str]
    reference: str  # "champion" or "base"
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        return f"{verdict} (vs {self.reference}): " + "; ".join(self.reasons)


def _get(metrics: Mapping[str, float], name: str, who: str) -> float:
    if name not in metrics or metrics[name] is None:
        raise KeyError(f"{who} metrics lack {name!r}; have {sorted(metrics)}")
    return float(metrics[name])


def decide(
    candidate: Mapping[str, float],
    reference: Mapping[str, float],
    *,
    promotion_margin: float,
    over_refusal_tolerance: float,
    utility_tolerance: float,
    reference_name: str = "champion",
) -> Decision:
    """Compare a candidate's metrics with the reference's; every rule must pass to promote.

    A metric the candidate lacks refuses promotion (with the reason) rather than raising: a
    half-evaluated model must never become champion.
    """
    numbers: dict[str, float] = {
        "promotion_margin": promotion_margin,
        "over_refusal_tolerance": over_refusal_tolerance,
        "utility_tolerance": utility_tolerance,
    }
    try:
        c = {m: _get(candidate, m, "candidate") for m in PROMOTION_METRICS}
        r = {m: _get(reference, m, reference_name) for m in PROMOTION_METRICS}
    except KeyError as e:
        return Decision(False, [str(e.args[0])], reference_name, numbers)
    for m in PROMOTION_METRICS:
        numbers[f"candidate.{m}"] = c[m]
        numbers[f"{reference_name}.{m}"] = r[m]
    gain = c[REFUSAL] - r[REFUSAL]
    extra_over = c[OVER_REFUSAL] - r[OVER_REFUSAL]
    extra_loss = c[UTILITY_LOSS] - r[UTILITY_LOSS]
    numbers.update({"refusal_gain": gain, "extra_over_refusal": extra_over, "extra_utility_loss": extra_loss})

    eps = 1e-9  # rates are ratios of counts; do not refuse a tie on float noise
    checks = [
        (gain + eps >= promotion_margin, f"refusal {c[REFUSAL]:.3f} vs {r[REFUSAL]:.3f}: gain {gain:+.3f}, need >= {promotion_margin:.3f}"),
        (
            extra_over <= over_refusal_tolerance + eps,
            f"over-refusal {c[OVER_REFUSAL]:.3f} vs {r[OVER_REFUSAL]:.3f}: {extra_over:+.3f}, allowed <= {over_refusal_tolerance:.3f}",
        ),
        (
            extra_loss <= utility_tolerance + eps,
            f"utility loss {c[UTILITY_LOSS]:.3f} vs {r[UTILITY_LOSS]:.3f}: {extra_loss:+.3f}, allowed <= {utility_tolerance:.3f}",
        ),
    ]
    reasons = [("ok: " if ok else "FAIL: ") + text for ok, text in checks]
    return Decision(all(ok for ok, _ in checks), reasons, reference_name, numbers)
