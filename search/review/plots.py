"""Report figures drawn with matplotlib (Agg): pure functions from tables to PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the report runs on headless hosts
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

_DPI = 90


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def history_plot(table: pd.DataFrame, references: dict[str, float], path: Path, *, metric: str,
                 ylabel: str | None = None) -> Path:
    """Score per trial, the best so far, and each baseline's score as a dashed reference line."""
    done = table[table["state"] == "COMPLETE"]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    sampled = done[done["baseline"].isna()]
    ax.scatter(sampled.index, sampled[metric], s=14, color="#4c72b0", label="trial (search split)")
    base = done[done["baseline"].notna()]
    if len(base):
        ax.scatter(base.index, base[metric], s=22, marker="D", color="#8c8c8c", label="baseline trial")
    if "holdout" in done and done["holdout"].notna().any():
        held = done[done["holdout"].notna()]
        ax.scatter(held.index, held["holdout"], s=18, marker="x", color="#dd8452", label="held-out split")
    if len(done):
        best = done[metric].cummax()
        ax.step(done.index, best, where="post", color="#55a868", lw=2, label="best so far")
    colors = plt.get_cmap("tab10")
    for i, (label, value) in enumerate(sorted(references.items())):
        ax.axhline(value, ls="--", lw=1.2, color=colors((i + 3) % 10), label=f"{label} {value:.3f}")
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel or metric, fontsize=9)
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    return _save(fig, path)


def weights_plot(weights: pd.DataFrame, path: Path, *, title: str) -> Path:
    """Heat map of a recipe's values for every block (rows: models' coefficients or weights, and method
    parameters; see ``trials.block_weights``)."""
    values = weights.to_numpy(dtype=float)
    limit = max(1.0, float(np.abs(values).max()))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.36 * values.shape[1] + 1.5), 0.55 * values.shape[0] + 1.6))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(values.shape[1]), weights.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(values.shape[0]), weights.index, fontsize=8)
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                color="white" if abs(v) > 0.6 * limit else "black")
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="value")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def category_plot(splits: dict[str, pd.DataFrame], path: Path, *, title: str) -> Path:
    """Grouped bars per category, one panel per split; columns of each frame are the compared trials."""
    panels = [(name, frame) for name, frame in splits.items() if not frame.empty]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 3.8), squeeze=False)
    for ax, (name, frame) in zip(axes[0], panels, strict=False):
        n = len(frame.columns)
        width = 0.8 / max(1, n)
        x = np.arange(len(frame.index))
        for i, column in enumerate(frame.columns):
            ax.bar(x + (i - (n - 1) / 2) * width, frame[column].to_numpy(dtype=float), width, label=column)
        ax.set_xticks(x, frame.index, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("tag recall")
        ax.set_title(f"{name} split")
        ax.grid(axis="y", alpha=0.3)
    if panels:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(5, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, -0.13))
    else:
        axes[0][0].text(0.5, 0.5, "no per-category scores recorded", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
