"""Figures for the analysis results: matplotlib Figure objects, no pyplot global state."""

from __future__ import annotations

import numpy as np

from extes.analysis.io import aspect_order
from extes.analysis.pairwise import ELO_BASE, BradleyTerryResult, WinRateMatrix, WinTieLossResult


def new_figure(width: float, height: float):
    # Figure objects straight from matplotlib.figure: no pyplot global state, Agg canvas for savefig.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_win_tie_loss(result: WinTieLossResult):
    """Stacked horizontal win/tie/loss bars, one panel per aspect; returns a matplotlib Figure."""
    rows = result.rows
    aspects = aspect_order(rows["aspect"])
    opponents = list(dict.fromkeys(rows["opponent"]))
    fig = new_figure(3.2 * len(aspects) + 1.5, 0.5 * len(opponents) + 1.6)
    axes = fig.subplots(1, len(aspects), sharey=True, squeeze=False)[0]
    colors = {"win": "#4c9a5b", "tie": "#b8b8b8", "loss": "#c8553d"}
    for ax, aspect in zip(axes, aspects):
        sub = rows[rows["aspect"] == aspect].set_index("opponent").reindex(opponents)
        left = np.zeros(len(opponents))
        for part in ("win", "tie", "loss"):
            width = (100 * sub[part]).fillna(0).to_numpy()
            ax.barh(opponents, width, left=left, color=colors[part], label=part)
            left += width
        for y, (n, status) in enumerate(zip(sub["n"], sub["status"])):
            if not n > 0:  # a pair without votes: say so where its bar would be
                ax.text(50, y, status if isinstance(status, str) else "never compared", ha="center",
                        va="center", fontsize="small", color="#666666")
        ax.set_title(aspect)
        ax.set_xlim(0, 100)
        ax.set_xlabel("%")
    axes[0].invert_yaxis()  # shared y axis: first opponent on top
    axes[0].set_ylabel(f"{result.reference} vs")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    return fig


def plot_win_rate_heatmap(matrix: WinRateMatrix):
    """Heatmap of a `WinRateMatrix` (row arm's win rate against column arm); returns a Figure."""
    rates = matrix.rates
    k = len(rates)
    fig = new_figure(1.0 * k + 2.5, 0.8 * k + 1.5)
    ax = fig.subplots()
    image = ax.imshow(rates.to_numpy(dtype=float), vmin=0, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(k), rates.columns, rotation=45, ha="right")
    ax.set_yticks(range(k), rates.index)
    for i in range(k):
        for j in range(k):
            value = rates.iat[i, j]
            if value == value:
                ax.text(
                    j, i, f"{value:.2f}\n(n={matrix.counts.iat[i, j]})", ha="center", va="center", fontsize=7
                )
    ax.set_title(f"win rate, row vs column ({matrix.aspect})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_bradley_terry(result: BradleyTerryResult):
    """Bradley-Terry ratings with CI error bars, one panel per aspect; returns a Figure."""
    frame = result.ratings
    aspects = aspect_order(frame["aspect"])
    k = frame["arm"].nunique()
    fig = new_figure(3.2 * len(aspects) + 1.0, 0.45 * k + 1.6)
    axes = fig.subplots(1, len(aspects), squeeze=False)[0]
    for ax, aspect in zip(axes, aspects):
        sub = frame[frame["aspect"] == aspect]
        y = np.arange(len(sub))
        lower = (sub["rating"] - sub["ci_low"]).fillna(0).clip(lower=0)
        upper = (sub["ci_high"] - sub["rating"]).fillna(0).clip(lower=0)
        ax.errorbar(sub["rating"], y, xerr=[lower, upper], fmt="o", capsize=3)
        ax.set_yticks(y, sub["arm"])
        ax.invert_yaxis()
        ax.axvline(ELO_BASE, color="#999999", linewidth=0.8)
        ax.set_title(aspect)
        ax.set_xlabel("rating")
    return fig
