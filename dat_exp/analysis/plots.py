"""Figures of an analysis, on matplotlib's object API (no pyplot state; PNG through Agg).

Every function takes the frames of ``dat_exp.analysis`` and returns a ``Figure``; a notebook
shows it, ``save_png`` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dat_exp.nn.settings import DAT_KEYS
from dat_exp.tracking import schema

PRIMARY = schema.HEADLINE
# Keys a sweep may vary, in the order the heat map prefers them; every DAT key (the fields of
# DATSettings) is one, those that most often answer the question first.
DAT_FIRST = ("pe", "offset_range_factor", "no_off", "ref_points", "preset")
SWEPT_KEYS = (
    "placement",
    "levels",
    *(f"dat.{key}" for key in DAT_FIRST),
    *(f"dat.{key}" for key in DAT_KEYS if key not in DAT_FIRST),
    "model",
    "data",
    "train",
    "device_type",
)


def save_png(fig: Figure, path: Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attach an Agg canvas whatever backend is active
    fig.savefig(path, dpi=dpi, format="png")
    return path


def pareto_mask(cost: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """True for the points no other point beats (cost <= and quality >=, one of them strictly)."""
    c, q = np.asarray(cost, float), np.asarray(quality, float)
    no_worse = (c[None, :] <= c[:, None]) & (q[None, :] >= q[:, None])
    better = (c[None, :] < c[:, None]) | (q[None, :] > q[:, None])
    return ~(no_worse & better).any(axis=1)


def _errors(v: pd.DataFrame, metric: str) -> np.ndarray:
    """Asymmetric error bars from the 95% interval; none (0) where it is unknown (n = 1)."""
    mean = v[f"{metric}_mean"].to_numpy(float)
    low = v.get(f"{metric}_low", pd.Series(np.nan, v.index)).to_numpy(float)
    high = v.get(f"{metric}_high", pd.Series(np.nan, v.index)).to_numpy(float)
    return np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)


def tradeoff_figure(
    variants: pd.DataFrame, x: str = schema.GFLOPS, metric: str = PRIMARY
) -> Figure:
    """``metric`` against cost ``x`` (``gflops`` or ``latency_ms``), one panel per device type,
    95% intervals as error bars, the Pareto front (cheaper or better than any other) in red."""
    devices = sorted(variants["device_type"].dropna().unique()) or ["unknown"]
    fig = Figure(figsize=(6.4 * len(devices), 4.8), layout="constrained")
    for ax, device in zip(fig.subplots(1, len(devices), squeeze=False)[0], devices, strict=True):
        v = variants[variants["device_type"].fillna("unknown") == device]
        v = v.dropna(subset=[f"{x}_mean", f"{metric}_mean"])
        _tradeoff_panel(ax, v, x, metric)
        ax.set_title(f"{metric} vs {x} on {device}")
    return fig


def _tradeoff_panel(ax: Axes, v: pd.DataFrame, x: str, metric: str) -> None:
    xs, ys = v[f"{x}_mean"].to_numpy(float), v[f"{metric}_mean"].to_numpy(float)
    ax.errorbar(
        xs,
        ys,
        xerr=_errors(v, x),
        yerr=_errors(v, metric),
        fmt="o",
        capsize=3,
        color="tab:blue",
        ecolor="0.55",
        label="variant (95% CI)",
    )
    front = pareto_mask(xs, ys)
    order = np.argsort(xs[front])
    ax.plot(
        xs[front][order],
        ys[front][order],
        "-",
        color="tab:red",
        lw=2,
        zorder=3,
        label="Pareto front",
    )
    ax.scatter(xs[front], ys[front], s=110, facecolors="none", edgecolors="tab:red", lw=2, zorder=4)
    for name, px, py in zip(v["variant"], xs, ys, strict=True):
        ax.annotate(str(name), (px, py), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(schema.METRICS[x].label if x in schema.METRICS else x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def curves_figure(history: pd.DataFrame, key: str = schema.val(PRIMARY)) -> Figure:
    """Per-epoch ``key`` per variant: the mean over seeds, the band from the lowest to the
    highest seed."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    _curves_panel(fig.subplots(), history, key, f"{key} (mean over seeds; band: min-max)")
    return fig


def _curves_panel(ax: Axes, history: pd.DataFrame, key: str, ylabel: str) -> None:
    names = history.groupby("variant_hash", sort=False)["variant"].first()
    duplicated = names.duplicated(keep=False)
    for vh, group in history.groupby("variant_hash", sort=False):
        per_epoch = group.groupby("step")["value"].agg(["mean", "min", "max"])
        seeds = group["seed"].nunique()
        label = f"{names[vh]}{' ' + vh[:6] if duplicated[vh] else ''} (n={seeds})"
        line = ax.plot(per_epoch.index, per_epoch["mean"], marker="o", ms=3, label=label)[0]
        ax.fill_between(
            per_epoch.index, per_epoch["min"], per_epoch["max"], alpha=0.15, color=line.get_color()
        )
    if history.empty:
        ax.text(0.5, 0.5, f"no per-epoch {key} logged", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not history.empty:
        ax.legend(fontsize=8)


# What each DAT diagnostic measures, for the axis labels (the names are the registry's).
DIAGNOSTIC_LABELS = {
    schema.OFFSET_CELLS: "mean offset (key-grid cells)",
    schema.OFFSET_CELLS_P95: "95th-percentile offset (key-grid cells)",
    schema.AT_BOUND: "fraction of positions at their bound",
    schema.ATTN_ENTROPY: "attention entropy / log(keys) (1 = uniform)",
    schema.GAMMA: "mean |γ| of the LayerScale",
}


def diagnostics_figure(
    histories: dict[int, pd.DataFrame], name: str, levels: dict[int, str] | None = None
) -> Figure:
    """One DAT diagnostic per epoch (``name``, one of ``schema.DAT_DIAGNOSTICS``): one panel per
    module layer (``histories``: layer -> the ``epoch_history`` of
    ``schema.dat_diagnostic(layer, name)``), a curve per variant (mean over seeds, band
    min-max), as :func:`curves_figure` draws the mAP."""
    layers = sorted(histories)
    fig = Figure(figsize=(max(5.2 * len(layers), 6.4), 4.6), layout="constrained")
    axes = fig.subplots(1, max(len(layers), 1), squeeze=False)[0]
    label = DIAGNOSTIC_LABELS.get(name, name)
    for ax, layer in zip(axes, layers, strict=False):
        key = schema.dat_diagnostic(layer, name)
        _curves_panel(ax, histories[layer], key, label)
        level = (levels or {}).get(layer)
        ax.set_title(f"{key}" + (f" ({level})" if level else ""), fontsize=10)
    if not layers:
        axes[0].text(0.5, 0.5, "no DAT module", ha="center", transform=axes[0].transAxes)
    fig.suptitle(f"DAT {name} per epoch, per module layer\n(mean over seeds; band: min-max)")
    return fig


def swept_keys(variants: pd.DataFrame) -> list[str]:
    """The config keys that take more than one value among ``variants``."""
    keys = [k for k in SWEPT_KEYS if k in variants]
    keys += sorted(c for c in variants if c.startswith("dat.") and c not in keys)
    return [k for k in keys if variants[k].astype(str).nunique() > 1]


def delta_heatmap(
    variants: pd.DataFrame, keys: Sequence[str] | None = None, metric: str = PRIMARY
) -> tuple[Figure | None, str]:
    """Δ ``metric`` to the baseline over two swept keys; ``(None, why)`` when fewer than two
    vary among the variants that have a Δ. Further varying keys are averaged over (noted)."""
    compared = variants[np.isfinite(variants["delta"].to_numpy(float))]
    varying = swept_keys(compared)
    keys = list(keys or varying[:2])
    if len(keys) < 2:
        shown = f"only {', '.join(varying)} varies" if varying else "no key varies"
        return None, f"heat map skipped: fewer than two swept keys vary ({shown})"
    grid = compared.assign(**{k: compared[k].astype(str) for k in keys}).pivot_table(
        index=keys[0], columns=keys[1], values="delta", aggfunc="mean"
    )
    others = [k for k in varying if k not in keys]
    note = f"averaged over {', '.join(others)}" if others else ""
    return _heatmap(grid, keys, metric, note), note


def _heatmap(grid: pd.DataFrame, keys: Sequence[str], metric: str, note: str) -> Figure:
    fig = Figure(figsize=(1.6 * grid.shape[1] + 3, 0.8 * grid.shape[0] + 2.2), layout="constrained")
    ax = fig.subplots()
    values = grid.to_numpy(float)
    limit = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    image = ax.imshow(values, cmap="RdBu", vmin=-(limit or 1.0), vmax=limit or 1.0)
    for (r, c), value in np.ndenumerate(values):
        ax.text(
            c, r, "-" if np.isnan(value) else f"{value:+.4f}", ha="center", va="center", fontsize=9
        )
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    ax.set_title(f"Δ {metric} to the baseline" + (f"\n({note})" if note else ""), fontsize=10)
    fig.colorbar(image, ax=ax, label=f"Δ {metric}")
    return fig
