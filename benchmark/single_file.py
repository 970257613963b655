"""Single-file checkpoint keys <-> diffusers names: re-exported from merge_core.diffusers_names,
where the one conversion table lives (merge_core reads diffusers folders with it)."""

from merge_core.diffusers_names import (  # noqa: F401
    OPEN_CLIP,
    TE_PREFIXES,
    UNET_PREFIX,
    VAE_PREFIX,
    Tensors,
    normalise_keys,
    single_file_name,
    to_diffusers,
    to_single_file,
    unet_prefix_map,
)
