"""Merge methods: one registry of per-tensor functions, shared by the streaming merger and the Mixer.

Importing this package registers every shipped method; a new method is one module that calls
:func:`register`.
"""

# Import order is registration order, which is the order of `mergesearch methods`.
from . import linear  # noqa: F401, I001  (registration side effects)
from . import task_vectors  # noqa: F401
from . import calc_modes  # noqa: F401
from .registry import (
    METHODS,
    BlockParams,
    KeyContext,
    MergeMethod,
    Param,
    canonical_name,
    get_method,
    register,
)

__all__ = ["METHODS", "BlockParams", "KeyContext", "MergeMethod", "Param", "canonical_name", "get_method",
           "register"]
