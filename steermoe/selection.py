"""Expert selection: which (layer, expert) pairs to fine-tune or steer.

Every strategy returns an :class:`ExpertSelection`, so downstream stages never care how it was made.
Strategies take a risk table (see :mod:`steermoe.analysis`; columns ``layer, expert, risk_diff`` and,
for ``significance``, ``ci_low, q_value``) and are registered in :data:`STRATEGIES`; call them by name
with :func:`select_experts`. Ties in ``risk_diff`` are broken by (layer, expert), so results are
deterministic. A strategy that selects nothing raises :class:`InputError` with the numbers that caused it.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from steermoe.errors import InputError
from steermoe.registry import Registry

__all__ = [
    "ExpertSelection",
    "STRATEGIES",
    "select_experts",
    "select_from_config",
    "threshold_top_k",
    "per_layer_cap",
    "significance",
    "top_p_per_layer",
    "random_baseline",
    "random_like",
    "signed_pair",
]


@dataclass
class ExpertSelection:
    """An ordered list of (layer, expert) pairs, their scores, and what chose them.

    ``negative`` is only used by signed selections for steering: ``experts`` are the experts to
    activate and ``negative`` those to deactivate (see :func:`signed_pair`). For fine-tuning,
    ``experts`` are the experts to train.
    Layers are the model's own decoder-layer indices.
    """

    experts: list[tuple[int, int]]
    scores: list[float]
    strategy: str
    params: dict = field(default_factory=dict)
    negative: list[tuple[int, int]] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.experts = [(int(layer), int(e)) for layer, e in self.experts]
        self.negative = [(int(layer), int(e)) for layer, e in self.negative]
        self.scores = [float(s) for s in self.scores]
        self.negative_scores = [float(s) for s in self.negative_scores]
        assert len(self.scores) == len(self.experts), "one score per expert"

    def __len__(self) -> int:
        return len(self.experts)

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, expert in self.experts:
            out.setdefault(layer, []).append(expert)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["experts"] = [list(x) for x in self.experts]
        d["negative"] = [list(x) for x in self.negative]
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from steermoe.files import write_text_atomic

            write_text_atomic(path, text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> ExpertSelection:
        return cls(
            experts=[tuple(x) for x in d["experts"]],
            scores=d["scores"],
            strategy=d["strategy"],
            params=d.get("params", {}),
            negative=[tuple(x) for x in d.get("negative", [])],
            negative_scores=d.get("negative_scores", []),
        )

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> ExpertSelection:
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        where = str(p) if p is not None else "selection"
        if p is not None and not p.is_file():
            raise InputError(f"{p}: {'is a directory' if p.is_dir() else 'no such file'}; give the selection.json `steermoe select --out` wrote")
        try:
            data = json.loads(p.read_text(encoding="utf-8") if p is not None else str(path_or_text))
            return cls.from_dict(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: not a selection JSON file ({e}); give the selection.json `steermoe select --out` wrote") from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(
                f"{where}: not an expert selection (needs 'experts': [[layer, expert], ...], 'scores' and 'strategy'); "
                "give the selection.json `steermoe select --out` wrote"
            ) from None


# ---------------------------------------------------------------- strategies

STRATEGIES: Registry = Registry("selection strategy")


def _ranked(table: pd.DataFrame, by: str = "risk_diff", ascending: bool = False, columns=("layer", "expert", "risk_diff")) -> pd.DataFrame:
    """Rows with a finite ``by``, best first; ties broken by (layer, expert)."""
    missing = [c for c in (*columns, by) if c not in table.columns]
    if missing:
        raise InputError(f"risk table lacks column(s) {missing}; make it with `steermoe analyze` or `steermoe import-table`")
    rows = table[np.isfinite(table[by].to_numpy(dtype=float))]
    return rows.sort_values([by, "layer", "expert"], ascending=[ascending, True, True], kind="stable")


def _selection(rows: pd.DataFrame, strategy: str, params: dict, negative: pd.DataFrame | None = None) -> ExpertSelection:
    neg = negative if negative is not None else rows.iloc[:0]
    return ExpertSelection(
        experts=list(zip(rows["layer"].tolist(), rows["expert"].tolist())),
        scores=rows["risk_diff"].tolist(),
        strategy=strategy,
        params=params,
        negative=list(zip(neg["layer"].tolist(), neg["expert"].tolist())),
        negative_scores=neg["risk_diff"].tolist(),
    )


def _best(ranked: pd.DataFrame, column: str = "risk_diff") -> str:
    if ranked.empty:
        return f"the table has no finite {column}"
    row = ranked.iloc[0]
    return f"the largest {column} is {row[column]:.4g} (layer {int(row['layer'])}, expert {int(row['expert'])})"


def _positive(name: str, value, minimum: int = 1) -> None:
    if value is not None and (int(value) != value or value < minimum):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value}")


@STRATEGIES.register("threshold")
def threshold_top_k(table: pd.DataFrame, threshold: float = 0.05, top_k: int | None = 16) -> ExpertSelection:
    """The seed's rule: ``risk_diff > threshold``, sorted descending, first ``top_k`` (None: all)."""
    _positive("top_k", top_k)
    ranked = _ranked(table)
    rows = ranked[ranked["risk_diff"] > threshold].head(top_k if top_k is not None else len(ranked))
    if rows.empty:
        raise InputError(f"threshold strategy selected no experts: {_best(ranked)}, not above threshold {threshold}; lower the threshold")
    return _selection(rows, "threshold", {"threshold": threshold, "top_k": top_k})


@STRATEGIES.register("per_layer_cap")
def per_layer_cap(table: pd.DataFrame, threshold: float = 0.05, top_k: int | None = 16, per_layer_cap: int = 4) -> ExpertSelection:
    """Like ``threshold``, walking the global ranking but taking at most ``per_layer_cap`` experts per layer."""
    _positive("top_k", top_k)
    _positive("per_layer_cap", per_layer_cap)
    ranked = _ranked(table)
    above = ranked[ranked["risk_diff"] > threshold]
    rows = above[above.groupby("layer").cumcount().to_numpy() < per_layer_cap]
    rows = rows.head(top_k if top_k is not None else len(rows))
    if rows.empty:
        raise InputError(f"per_layer_cap strategy selected no experts: {_best(ranked)}, not above threshold {threshold}; lower the threshold")
    return _selection(rows, "per_layer_cap", {"threshold": threshold, "top_k": top_k, "per_layer_cap": per_layer_cap})


@STRATEGIES.register("significance")
def significance(table: pd.DataFrame, alpha: float = 0.05, threshold: float = 0.0, top_k: int | None = None) -> ExpertSelection:
    """Experts with BH ``q_value < alpha`` and CI lower bound ``ci_low > threshold``, by ``ci_low`` descending.

    Ranking by the lower bound prefers experts whose effect is large *and* certain; scores stay ``risk_diff``.
    """
    _positive("top_k", top_k)
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    ranked = _ranked(table, by="ci_low", columns=("layer", "expert", "risk_diff", "q_value"))
    ok = (ranked["q_value"].to_numpy(dtype=float) < alpha) & (ranked["ci_low"].to_numpy(dtype=float) > threshold)
    rows = ranked[ok].head(top_k if top_k is not None else len(ranked))
    if rows.empty:
        q_min = np.nanmin(table["q_value"].to_numpy(dtype=float)) if table["q_value"].notna().any() else float("nan")
        raise InputError(
            f"significance strategy selected no experts: the smallest q-value is {q_min:.4g} (alpha {alpha}) and "
            f"{_best(ranked, 'ci_low')} (threshold {threshold}); collect more prompts or relax alpha/threshold"
        )
    return _selection(rows, "significance", {"alpha": alpha, "threshold": threshold, "top_k": top_k})


@STRATEGIES.register("top_p")
def top_p_per_layer(table: pd.DataFrame, top_p: float = 0.5, threshold: float = 0.0, top_k: int | None = None) -> ExpertSelection:
    """Per layer, the fewest experts whose share of the layer's positive risk mass reaches ``top_p``.

    Like DeepSeek ESFT's token-selection ratio: within each layer, experts with ``risk_diff > threshold``
    are sorted descending and taken until their cumulative share of the layer's summed ``risk_diff``
    (over those experts) reaches ``top_p``; the union is ordered by ``risk_diff`` descending.
    """
    _positive("top_k", top_k)
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    ranked = _ranked(table)
    pos = ranked[ranked["risk_diff"] > max(threshold, 0.0)]
    share = pos["risk_diff"] / pos.groupby("layer")["risk_diff"].transform("sum")
    before = share.groupby(pos["layer"]).cumsum() - share  # share taken before this expert
    rows = pos[(before < top_p - 1e-12).to_numpy()]
    rows = rows.head(top_k if top_k is not None else len(rows))
    if rows.empty:
        raise InputError(f"top_p strategy selected no experts: {_best(ranked)}, not above threshold {max(threshold, 0.0)}")
    return _selection(rows, "top_p", {"top_p": top_p, "threshold": threshold, "top_k": top_k})


@STRATEGIES.register("random")
def random_baseline(table: pd.DataFrame, size: int = 16, seed: int = 0, exclude=None) -> ExpertSelection:
    """``size`` experts drawn uniformly without replacement from every (layer, expert) of the table.

    By default nothing is excluded (the baseline may overlap the real selection, as a true random
    control does). ``exclude`` (an ExpertSelection or (layer, expert) pairs) removes those candidates
    first, for a baseline disjoint from the selection. Same seed and table: same draw, in draw order.
    """
    _positive("size", size)
    _ranked(table.iloc[:0])  # column check
    ranked = table.sort_values(["layer", "expert"], kind="stable")
    pairs = exclude.experts if isinstance(exclude, ExpertSelection) else list(exclude or [])
    excluded = {(int(a), int(b)) for a, b in pairs}
    keys = list(zip(ranked["layer"].tolist(), ranked["expert"].tolist()))
    candidates = ranked[[k not in excluded for k in keys]]
    if size > len(candidates):
        raise InputError(f"random strategy: size {size} exceeds the {len(candidates)} candidate experts ({len(excluded)} excluded)")
    pick = np.random.default_rng(seed).choice(len(candidates), size=size, replace=False)
    return _selection(candidates.iloc[pick], "random", {"size": size, "seed": seed, "excluded": len(excluded)})


def random_like(selection: ExpertSelection, table: pd.DataFrame, seed: int = 0, exclude_selected: bool = False) -> ExpertSelection:
    """A random baseline of the same size as ``selection`` (optionally disjoint from it)."""
    return random_baseline(table, size=len(selection), seed=seed, exclude=selection if exclude_selected else None)


@STRATEGIES.register("signed")
def signed_pair(
    table: pd.DataFrame,
    threshold: float = 0.05,
    top_k: int | None = 16,
    direction: str = "safe",
    negative_threshold: float | None = None,
    negative_top_k: int | None = None,
) -> ExpertSelection:
    """A steering pair: ``experts`` to activate and ``negative`` experts to deactivate (as :func:`steermoe.steering.steer` reads them).

    ``direction="safe"`` (default) deactivates the unsafe-linked experts (``risk_diff > threshold``, largest
    first, at most ``top_k``) and activates the safe-linked ones (``risk_diff < -negative_threshold``, most
    negative first, at most ``negative_top_k``); ``direction="unsafe"`` swaps the two lists (SteerMoE's
    red-teaming direction). The negative side defaults to the positive side's threshold and top_k.
    """
    _positive("top_k", top_k)
    _positive("negative_top_k", negative_top_k)
    if direction not in ("safe", "unsafe"):
        raise InputError(f"signed strategy: direction must be 'safe' or 'unsafe', got {direction!r}")
    neg_thr = threshold if negative_threshold is None else negative_threshold
    neg_k = top_k if negative_top_k is None else negative_top_k
    ranked = _ranked(table)
    unsafe_side = ranked[ranked["risk_diff"] > threshold].head(top_k if top_k is not None else len(ranked))
    low = _ranked(table, ascending=True)
    safe_side = low[low["risk_diff"] < -neg_thr].head(neg_k if neg_k is not None else len(low))
    if unsafe_side.empty and safe_side.empty:
        smallest = low["risk_diff"].iloc[0] if len(low) else float("nan")
        raise InputError(
            f"signed strategy selected no experts: {_best(ranked)} (threshold {threshold}) and the smallest is "
            f"{smallest:.4g} (negative threshold -{neg_thr}); lower the thresholds"
        )
    params = {"threshold": threshold, "top_k": top_k, "direction": direction, "negative_threshold": neg_thr, "negative_top_k": neg_k}
    activate, deactivate = (safe_side, unsafe_side) if direction == "safe" else (unsafe_side, safe_side)
    return _selection(activate, "signed", params, negative=deactivate)


def select_experts(table: pd.DataFrame, strategy: str, **params) -> ExpertSelection:
    """Run the strategy registered as ``strategy``; ``None`` params mean "use the default"."""
    fn = STRATEGIES.get(strategy)
    accepted = [p for p in inspect.signature(fn).parameters if p != "table"]
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise InputError(f"strategy {strategy!r} does not take {unknown}; it accepts {accepted}")
    return fn(table, **given)


def select_from_config(table: pd.DataFrame, cfg) -> ExpertSelection:
    """Select with a :class:`steermoe.config.SelectionConfig` (each strategy reads the fields it uses)."""
    fields = {
        "threshold": {"threshold": cfg.threshold, "top_k": cfg.top_k},
        "per_layer_cap": {"threshold": cfg.threshold, "top_k": cfg.top_k, "per_layer_cap": cfg.per_layer_cap},
        "significance": {"alpha": cfg.alpha, "threshold": cfg.threshold, "top_k": cfg.top_k},
        "top_p": {"top_p": cfg.top_p, "threshold": cfg.threshold, "top_k": cfg.top_k},
        "random": {"size": cfg.top_k, "seed": cfg.seed},
        "signed": {"threshold": cfg.threshold, "top_k": cfg.top_k},
    }
    if cfg.strategy not in fields:
        STRATEGIES.get(cfg.strategy)  # raises with the list of strategies
        raise InputError(f"selection.strategy {cfg.strategy!r} has no config mapping; call select_experts directly")
    return select_experts(table, cfg.strategy, **fields[cfg.strategy])
