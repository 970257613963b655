"""What a merge says about its prediction type, and which modelspec fields it carries over.

Files state their prediction type by ComfyUI's ``v_pred`` marker key or by the
``modelspec.prediction_type`` metadata field (``Checkpoint.prediction``). A merge keeps the
type its sources state when those that state one agree; when they disagree it follows
model A and warns, since a v-prediction and an epsilon model do not mix into either.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from .checkpoint import Checkpoint
from .errors import CheckpointWarning

MODELSPEC = "modelspec."
V_MARKER = "v_pred"


def merged_prediction(ckpts: Sequence[Checkpoint], *, warn: bool = True) -> str | None:
    """The output's prediction type ("v", "epsilon" or ``None`` = not stated).

    Warns (``CheckpointWarning``) naming each source's type when the stated types disagree.
    """
    stated = [(c, c.prediction) for c in ckpts]
    kinds = {p for _c, p in stated if p is not None}
    if len(kinds) <= 1:
        return kinds.pop() if kinds else None
    first = stated[0][1]
    if not warn:
        return first
    listing = ", ".join(f"{c.path.name}: {p or 'not stated'}" for c, p in stated)
    warnings.warn(
        f"the sources disagree on their prediction type ({listing}); the merge is marked as "
        f"{first or 'not stated'}, as model A is — merging v-prediction with epsilon models rarely works",
        CheckpointWarning,
        stacklevel=2,
    )
    return first


def carried_modelspec(ckpts: Sequence[Checkpoint], prediction: str | None) -> dict[str, str]:
    """The ``modelspec.*`` fields every source holds with the same value, plus the merged prediction type.

    Fields that describe one file (title, hash, date...) differ between sources and are dropped.
    """
    common: dict[str, str] | None = None
    for c in ckpts:
        fields = {k: v for k, v in c.metadata.items() if k.startswith(MODELSPEC)}
        common = fields if common is None else {k: v for k, v in common.items() if fields.get(k) == v}
    out = dict(common or {})
    out.pop(MODELSPEC + "prediction_type", None)
    if prediction is not None:
        out[MODELSPEC + "prediction_type"] = prediction
    return out
