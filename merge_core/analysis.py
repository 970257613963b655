"""Where models differ: per block and component similarity of two or more checkpoints (pure maths).

For every pair of models and every weight id (UNet block, TE, VAE) of the family's layout:

- ``cosine``: cosine similarity of the block's weights taken as one flat vector (all its keys
  concatenated): ``<a, b> / (|a| |b|)``;
- ``rel_diff``: relative norm of the difference, ``|a - b| / |a|`` (``a`` = the pair's first model).

With a base model, the same two numbers for each model's difference from the base (its task
vector ``tau_i = M_i - base``): ``rel_diff`` of ``M_i`` against the base (``|tau_i| / |base|``),
and the cosine between two task vectors ``<tau_i, tau_j> / (|tau_i| |tau_j|)`` (1: the two
fine-tunes moved the block the same way; 0: unrelated directions).

Attention similarity (for blocks that hold cross-attention): each attention layer (``attn1`` and
``attn2`` of every transformer block) of both models is run on one fixed, seeded input — hidden
states ``X`` (64 tokens x query width) and a context ``C`` (77 tokens x key width; ``C = X`` for
self-attention) drawn from N(0, 1) — as plain single-head scaled dot-product attention
``softmax(X Wq^T (C Wk^T)^T / sqrt(d)) C Wv^T Wo^T`` (Vaswani et al. 2017; heads are not
recorded in single-file checkpoints, and one head is enough to compare two weight sets). The
score is the mean over tokens of the cosine similarity of the two models' outputs, averaged
over the block's attention layers. This is the idea of SuperMerger's "ASimilarity" (compare what
the layers *do* on a fixed input rather than their raw weights), with the standard attention maths.

Sums are accumulated key by key in float64 from fp32 copies, so memory stays at one key per
model whatever the checkpoint size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .layout import BlockLayout

ATTENTION_SEED = 2244096  # any fixed seed; the inputs only need to be the same for every model
ATTENTION_TOKENS = 64
CONTEXT_TOKENS = 77


class _Tensors:
    """What `analyze` reads: ``keys()`` and ``tensor(key)`` (a Checkpoint or a plain dict)."""

    def __init__(self, source):
        self.source = source

    def keys(self) -> list[str]:
        return list(self.source.keys())

    def tensor(self, key: str) -> torch.Tensor:
        if isinstance(self.source, Mapping):
            return self.source[key]
        return self.source.tensor(key)

    def __contains__(self, key: str) -> bool:
        return key in self.source

    def shape(self, key: str) -> tuple[int, ...]:
        if isinstance(self.source, Mapping):
            return tuple(self.source[key].shape)
        return tuple(self.source.shape(key))


@dataclass(frozen=True)
class PairStats:
    """One pair of models (or task vectors) in one block."""

    cosine: float  # in [-1, 1]; nan when a side is all zeros
    rel_diff: float  # |a - b| / |a|; nan when |a| = 0


@dataclass
class Analysis:
    """Result of :func:`analyze`.

    ``pairs[(i, j)][weight_id]`` compares model i with model j (i < j, indices into ``names``);
    ``task[(i, j)][weight_id]`` compares task vectors M_i - base and M_j - base (cosine only);
    ``from_base[i][weight_id]`` is |M_i - base| / |base| (only with a base);
    ``attention[(i, j)][block]`` is the attention-output similarity (blocks with attention only).
    """

    names: tuple[str, ...]
    weight_ids: tuple[str, ...]
    base: str | None
    pairs: dict[tuple[int, int], dict[str, PairStats]] = field(default_factory=dict)
    task: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    from_base: dict[int, dict[str, float]] = field(default_factory=dict)
    attention: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # keys missing or of another shape in some model

    def rows(self) -> list[dict[str, object]]:
        """Long table: one row per (comparison, metric, weight id) with its value."""
        out: list[dict[str, object]] = []
        for (i, j), per in self.pairs.items():
            for wid, s in per.items():
                label = f"{self.names[i]} vs {self.names[j]}"
                out.append({"comparison": label, "metric": "cosine", "block": wid, "value": s.cosine})
                out.append({"comparison": label, "metric": "rel_diff", "block": wid, "value": s.rel_diff})
        for i, per in self.from_base.items():
            for wid, v in per.items():
                out.append({"comparison": f"{self.names[i]} - {self.base}", "metric": "rel_diff_from_base",
                            "block": wid, "value": v})
        for (i, j), per in self.task.items():
            for wid, v in per.items():
                out.append({"comparison": f"({self.names[i]} - {self.base}) vs ({self.names[j]} - {self.base})",
                            "metric": "task_cosine", "block": wid, "value": v})
        for (i, j), per in self.attention.items():
            for wid, v in per.items():
                out.append({"comparison": f"{self.names[i]} vs {self.names[j]}", "metric": "attention_cosine",
                            "block": wid, "value": v})
        return out

    def most_different(self, k: int | None = None) -> list[str]:
        """UNet blocks ordered by how far the models move them (largest first): the ones worth searching.

        With a base: the largest |M_i - base| / |base| over the models; without: the largest
        pairwise rel_diff.
        """
        score: dict[str, float] = {}
        source = self.from_base.values() if self.from_base else (
            {w: s.rel_diff for w, s in per.items()} for per in self.pairs.values())
        for per in source:
            for wid, v in per.items():
                if not math.isnan(v):
                    score[wid] = max(score.get(wid, 0.0), v)
        order = sorted(score, key=score.get, reverse=True)
        return order[:k] if k else order


def _safe_cos(dot: float, na2: float, nb2: float) -> float:
    den = math.sqrt(na2) * math.sqrt(nb2)
    return dot / den if den > 0 else float("nan")


def analyze(
    models: Sequence[object],
    layout: BlockLayout,
    *,
    names: Sequence[str] | None = None,
    base: int | None = None,
    attention: bool = True,
) -> Analysis:
    """Compare ``models`` (Checkpoints or single-file state dicts of one family) block by block.

    ``base`` is the index of the base model in ``models`` (or None). Keys that a model lacks or
    holds with another shape are skipped (listed in ``.skipped``); non-mergeable keys are ignored.
    Raises ValueError for fewer than two models.
    """
    if len(models) < 2:
        raise ValueError("analyze needs at least two models")
    srcs = [_Tensors(m) for m in models]
    names = tuple(names or [f"M{i}" for i in range(len(models))])
    n = len(srcs)
    ids = layout.weight_ids
    # accumulators, float64: gram[w][i][j] = <M_i, M_j> over the block's keys, and the same for tau
    gram = {w: [[0.0] * n for _ in range(n)] for w in ids}
    tgram = {w: [[0.0] * n for _ in range(n)] for w in ids}
    seen = set()
    key_sets = [set(s.keys()) for s in srcs]
    result = Analysis(names=names, weight_ids=ids, base=names[base] if base is not None else None)
    attn_layers: dict[str, list[str]] = {}
    for key in srcs[0].keys():
        wid = layout.block_of(key)
        if wid is None:
            continue
        if not all(key in ks for ks in key_sets) or len({s.shape(key) for s in srcs}) != 1:
            result.skipped.append(key)
            continue
        ts = [s.tensor(key).reshape(-1).to(torch.float64) for s in srcs]
        if not ts[0].is_floating_point():
            continue
        seen.add(wid)
        g = gram[wid]
        for i in range(n):
            for j in range(i, n):
                g[i][j] += float(torch.dot(ts[i], ts[j]))
        if base is not None:
            taus = [t - ts[base] for t in ts]
            tg = tgram[wid]
            for i in range(n):
                for j in range(i, n):
                    tg[i][j] += float(torch.dot(taus[i], taus[j]))
        if attention and key.endswith(".to_q.weight") and (".attn1." in key or ".attn2." in key):
            attn_layers.setdefault(wid, []).append(key[: -len("to_q.weight")])
    for i, j in itertools.combinations(range(n), 2):
        per = {}
        for w in ids:
            if w not in seen:
                continue
            g = gram[w]
            diff2 = g[i][i] - 2 * g[i][j] + g[j][j]
            per[w] = PairStats(cosine=_safe_cos(g[i][j], g[i][i], g[j][j]),
                               rel_diff=math.sqrt(max(diff2, 0.0)) / math.sqrt(g[i][i]) if g[i][i] > 0 else float("nan"))
        result.pairs[(i, j)] = per
    if base is not None:
        others = [i for i in range(n) if i != base]
        for i in others:
            result.from_base[i] = {
                w: math.sqrt(max(tgram[w][i][i], 0.0)) / math.sqrt(gram[w][base][base])
                if gram[w][base][base] > 0 else float("nan")
                for w in ids if w in seen
            }
        for i, j in itertools.combinations(others, 2):
            result.task[(i, j)] = {w: _safe_cos(tgram[w][i][j], tgram[w][i][i], tgram[w][j][j])
                                   for w in ids if w in seen}
    if attention and attn_layers:
        outs = {w: [[attention_output(srcs[m], prefix) for prefix in prefixes] for m in range(n)]
                for w, prefixes in attn_layers.items()}
        for i, j in itertools.combinations(range(n), 2):
            result.attention[(i, j)] = {
                w: sum(_row_cosine(a, b) for a, b in zip(o[i], o[j], strict=True)) / len(o[i])
                for w, o in outs.items()
            }
    return result


def attention_input(q_width: int, ctx_width: int, cross: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed probe: X (64 x q_width) and C (77 x ctx_width; C = X for self-attention), float64."""
    g = torch.Generator().manual_seed(ATTENTION_SEED + q_width * 1000 + ctx_width)
    x = torch.randn(ATTENTION_TOKENS, q_width, generator=g, dtype=torch.float64)
    c = torch.randn(CONTEXT_TOKENS, ctx_width, generator=g, dtype=torch.float64) if cross else x
    return x, c


def attention_output(src, prefix: str) -> torch.Tensor:
    """Single-head scaled dot-product attention of the layer at ``prefix`` on the fixed probe.

    ``prefix`` ends with ``attn1.`` or ``attn2.``; reads ``to_q/to_k/to_v/to_out.0`` weights
    (``to_out.0.bias`` if present). Returns (64, out_width) float64.
    """
    src = src if isinstance(src, _Tensors) else _Tensors(src)
    wq, wk, wv = (src.tensor(prefix + f"to_{n}.weight").to(torch.float64) for n in "qkv")
    wo = src.tensor(prefix + "to_out.0.weight").to(torch.float64)
    x, c = attention_input(wq.shape[1], wk.shape[1], cross=prefix.endswith("attn2."))
    q, k, v = x @ wq.T, c @ wk.T, c @ wv.T
    p = torch.softmax(q @ k.T / math.sqrt(q.shape[1]), dim=-1)
    out = (p @ v) @ wo.T
    bias_key = prefix + "to_out.0.bias"
    if bias_key in src:
        out = out + src.tensor(bias_key).to(torch.float64)
    return out


def _row_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())
