"""Figures of a risk table and of evaluation tables, written as PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from steermoe.errors import InputError

__all__ = ["risk_heatmap", "top_experts_chart", "save_plots", "metric_bars"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _check(table: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"risk table lacks column(s) {missing} needed for the plot")
    if table.empty:
        raise InputError("risk table is empty; nothing to plot")


def risk_heatmap(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Layers x experts heatmap of ``risk_diff``, diverging colours centred at 0 (red: more active on unsafe)."""
    _check(table, ("layer", "expert", "risk_diff"))
    plt = _pyplot()
    grid = table.pivot_table(index="layer", columns="expert", values="risk_diff", aggfunc="first").sort_index()
    values = grid.to_numpy(dtype=float)  # (layers, experts)
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    limit = limit or 1.0
    n_layers, n_experts = values.shape
    fig, ax = plt.subplots(figsize=(min(4 + n_experts * 0.12, 20), min(2 + n_layers * 0.25, 14)), dpi=110)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    step = max(1, n_layers // 24)
    ax.set_yticks(range(0, n_layers, step), [str(v) for v in grid.index[::step]])
    ax.set_title(title or "risk difference P(top-k | unsafe) - P(top-k | safe)")
    fig.colorbar(image, ax=ax, label="risk difference")
    return _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    from steermoe.files import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


def top_experts_chart(table: pd.DataFrame, path: str | Path, top_n: int = 20, title: str | None = None) -> Path:
    """Horizontal bars of the ``top_n`` largest risk differences with their confidence intervals."""
    _check(table, ("layer", "expert", "risk_diff", "ci_low", "ci_high"))
    plt = _pyplot()
    top = table[np.isfinite(table["risk_diff"])].nlargest(top_n, "risk_diff").iloc[::-1]  # best at the top
    rd = top["risk_diff"].to_numpy(dtype=float)
    err = np.vstack([rd - top["ci_low"].to_numpy(dtype=float), top["ci_high"].to_numpy(dtype=float) - rd]).clip(0)
    labels = [f"L{int(layer)} E{int(e)}" for layer, e in zip(top["layer"], top["expert"])]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.3 * len(top)), dpi=110)
    ax.barh(range(len(top)), rd, xerr=err, color=np.where(rd >= 0, "#c0392b", "#2471a3"), capsize=3, ecolor="#333333")
    ax.set_yticks(range(len(top)), labels)
    ax.axvline(0, color="black", linewidth=0.8)
    confidence = table.attrs.get("confidence", 0.95)
    ax.set_xlabel(f"risk difference ({confidence:.0%} Newcombe interval)")
    ax.set_title(title or f"top {len(top)} experts by risk difference")
    return _save(plt, fig, path)


def save_plots(table: pd.DataFrame, out_dir: str | Path, top_n: int = 20) -> dict[str, Path]:
    """Both figures into ``out_dir``: ``risk_heatmap.png`` and ``top_experts.png``."""
    out_dir = Path(out_dir)
    return {
        "heatmap": risk_heatmap(table, out_dir / "risk_heatmap.png"),
        "top": top_experts_chart(table, out_dir / "top_experts.png", top_n=top_n),
    }


def metric_bars(table: pd.DataFrame, metrics, path: str | Path, label: str = "model") -> Path:
    """One bar panel per metric, one bar per row (named by ``label``), with ``<metric>_low``/``_high`` error bars."""
    plt = _pyplot()
    metrics = list(metrics)
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.2 * max(1, len(metrics)), 3.4), squeeze=False)
    x = np.arange(len(table))
    for ax, metric in zip(axes[0], metrics):
        values = table[metric].to_numpy(float)
        low = np.nan_to_num(values - table[f"{metric}_low"].to_numpy(float), nan=0.0).clip(min=0)
        high = np.nan_to_num(table[f"{metric}_high"].to_numpy(float) - values, nan=0.0).clip(min=0)
        ax.bar(x, np.nan_to_num(values), yerr=[low, high], capsize=3, color=plt.cm.tab10(x % 10))
        ax.set_xticks(x, table[label], rotation=40, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    return _save(plt, fig, path)
