"""merge_core: what a merge is — checkpoints, families, block layouts, recipes, merge maths, files."""

from .checkpoint import Checkpoint, load_state_dict, open_checkpoint
from .contact import ContactStats, contact_merge, repair_to_file
from .errors import CheckpointError
from .family import Family, detect_family
from .hashing import file_sha256, short_hash
from .layout import BlockLayout, layout_for
from .merge import merge_to_file
from .methods import METHODS, MergeMethod, get_method
from .recipe import Recipe, Source
from .safetensors_file import save_safetensors

__all__ = [
    "METHODS",
    "BlockLayout",
    "Checkpoint",
    "CheckpointError",
    "ContactStats",
    "Family",
    "MergeMethod",
    "Recipe",
    "Source",
    "contact_merge",
    "detect_family",
    "file_sha256",
    "get_method",
    "layout_for",
    "load_state_dict",
    "merge_to_file",
    "open_checkpoint",
    "repair_to_file",
    "save_safetensors",
    "short_hash",
]
