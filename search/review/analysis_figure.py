"""Tables and the heat map of `mergesearch analyze` (pure: an Analysis in, text or a PNG out)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from search.review.plots import _save  # noqa: E402


def _fmt(v: float, digits: int = 3) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def heat_rows(analysis) -> list[tuple[str, str, list[float]]]:
    """(panel, row label, values per weight id) for every row the heat map draws."""
    names, ids = analysis.names, analysis.weight_ids
    rows: list[tuple[str, str, list[float]]] = []
    if analysis.from_base:
        for i, per in analysis.from_base.items():
            rows.append(("|M - base| / |base|", f"{names[i]} - {analysis.base}", [per.get(w, math.nan) for w in ids]))
        for (i, j), per in analysis.task.items():
            rows.append(("cosine of task vectors", f"{names[i]} · {names[j]}", [per.get(w, math.nan) for w in ids]))
    else:
        for (i, j), per in analysis.pairs.items():
            rows.append(("|A - B| / |A|", f"{names[i]} vs {names[j]}",
                         [per[w].rel_diff if w in per else math.nan for w in ids]))
        for (i, j), per in analysis.pairs.items():
            rows.append(("cosine", f"{names[i]} vs {names[j]}", [per[w].cosine if w in per else math.nan for w in ids]))
    for (i, j), per in analysis.attention.items():
        if analysis.base is None or analysis.base in (names[i], names[j]):
            rows.append(("attention-output cosine", f"{names[i]} vs {names[j]}",
                         [per.get(w, math.nan) for w in ids]))
    return rows


def markdown_table(analysis) -> str:
    """One markdown table: a row per heat-map row, a column per weight id."""
    ids = analysis.weight_ids
    lines = ["| metric | models | " + " | ".join(ids) + " |", "|---|---|" + "---|" * len(ids)]
    for panel, label, values in heat_rows(analysis):
        lines.append(f"| {panel} | {label} | " + " | ".join(_fmt(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def csv_rows(analysis) -> list[dict[str, object]]:
    return analysis.rows()


def heat_map(analysis, path: Path, *, title: str = "") -> Path:
    """PNG: one panel per metric, rows = comparisons, columns = weight ids, value written in each cell."""
    rows = heat_rows(analysis)
    panels: dict[str, list[tuple[str, list[float]]]] = {}
    for panel, label, values in rows:
        panels.setdefault(panel, []).append((label, values))
    ids = analysis.weight_ids
    heights = [max(1, len(v)) for v in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(0.48 * len(ids) + 2.5, 0.42 * sum(heights) + 1.1 * len(panels)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (panel, entries) in zip(axes[:, 0], panels.items(), strict=True):
        data = np.array([v for _, v in entries], dtype=float)
        cosine = "cosine" in panel
        cmap = "viridis" if cosine else "magma_r"
        finite = data[np.isfinite(data)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_yticks(range(len(entries)), [lbl for lbl, _ in entries], fontsize=8)
        ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=7)
        ax.set_title(panel, fontsize=9, loc="left")
        for r in range(data.shape[0]):
            for c in range(data.shape[1]):
                v = data[r, c]
                if np.isfinite(v):
                    text = f"{v:.3f}" if panel.startswith("attention") else f"{v:.2f}"
                    bright = (v - vmin) / (vmax - vmin + 1e-12)
                    ax.text(c, r, text, ha="center", va="center", fontsize=5.5,
                            color="black" if (bright > 0.5) != (not cosine) else "white")
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
