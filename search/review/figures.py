"""Plotly figures saved into the study for optuna-dashboard's study page (pure: tables in, figures out)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def weights_heatmap(weights: pd.DataFrame, *, title: str) -> go.Figure:
    """Models x blocks heat map of linear coefficients, centred on zero."""
    limit = max(1.0, float(weights.abs().to_numpy().max()))
    heat = go.Heatmap(
        z=weights.to_numpy(dtype=float),
        x=list(weights.columns),
        y=list(weights.index),
        zmin=-limit,
        zmax=limit,
        colorscale="RdBu",
        reversescale=True,
        text=weights.round(3).to_numpy(),
        texttemplate="%{text}",
        hovertemplate="%{y} %{x}: %{z:.4f}<extra></extra>",
        colorbar={"title": "coefficient"},
    )
    fig = go.Figure(heat)
    fig.update_layout(title=title, xaxis={"tickangle": -90}, height=160 + 45 * len(weights.index))
    return fig


def category_bars(frame: pd.DataFrame, *, title: str) -> go.Figure:
    """Grouped bars: rows of `frame` are categories, columns the compared trials."""
    fig = go.Figure([go.Bar(name=str(c), x=list(frame.index), y=frame[c].tolist()) for c in frame.columns])
    fig.update_layout(title=title, barmode="group", yaxis={"range": [0, 1.05], "title": "tag recall"})
    return fig
