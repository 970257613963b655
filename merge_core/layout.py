"""Block layouts: which UNet block or component each checkpoint key belongs to.

The maps are data (``layouts/<family>.yaml``); this module only interprets them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import yaml

from .family import Family

COMPONENTS = ("TE", "VAE")


@dataclass(frozen=True)
class BlockLayout:
    """Key -> weight id map of one family.

    ``weight_ids`` = blocks + components is the order every weight vector uses.
    """

    family: Family
    blocks: tuple[str, ...]
    components: tuple[str, ...]
    unet_prefix: str
    unet_rules: tuple[tuple[re.Pattern[str], str], ...] = field(repr=False)
    component_prefixes: dict[str, tuple[str, ...]] = field(repr=False)
    non_mergeable: tuple[re.Pattern[str], ...] = field(repr=False)
    input_conv: str | None = None  # full key of the UNet's input conv (weight: out x in_channels x 3 x 3)
    latent_channels: int = 4
    input_variants: dict[int, str] = field(default_factory=dict, repr=False)  # in_channels -> variant name

    @property
    def weight_ids(self) -> tuple[str, ...]:
        return self.blocks + self.components

    def is_non_mergeable(self, key: str) -> bool:
        """A declared non-weight key (position ids, scheduler buffers, EMA copies)."""
        return any(p.search(key) for p in self.non_mergeable)

    def block_of(self, key: str) -> str | None:
        """Weight id of a normalised key; ``None`` = not mergeable (copied from the first source)."""
        if self.is_non_mergeable(key):
            return None
        if key.startswith(self.unet_prefix):
            rest = key[len(self.unet_prefix) :]
            for pattern, target in self.unet_rules:
                m = pattern.match(rest)
                if m:
                    block = target.format(n=int(m.group(1))) if m.groups() else target
                    return block if block in self.blocks else None
            return None
        for component, prefixes in self.component_prefixes.items():
            if key.startswith(prefixes):
                return component
        return None

    def variant_of(self, input_conv_shape: tuple[int, ...] | None) -> str:
        """"inpainting", "instruct-pix2pix" (from the input conv's channel count) or "standard"."""
        if input_conv_shape is None or len(input_conv_shape) < 2:
            return "standard"
        # Only the channel counts the layout names mark a variant (tiny test models cap every dimension).
        return self.input_variants.get(input_conv_shape[1], "standard")

    def unknown_keys(self, keys) -> list[str]:
        """Keys that are neither in a block/component nor declared non-mergeable."""
        return [k for k in keys if self.block_of(k) is None and not self.is_non_mergeable(k)]


@cache
def layout_for(family: Family | str) -> BlockLayout:
    """The block layout of a family ("sd1", "sd2", "sdxl", "sdxl-refiner").

    Raises ``ValueError`` naming the known families for an unknown one.
    """
    try:
        fam = Family(family)
    except ValueError:
        known = ", ".join(f.value for f in Family)
        raise ValueError(f"unknown model family {family!r}; known families: {known}") from None
    text = resources.files(__package__).joinpath("layouts", f"{fam.value}.yaml").read_text()
    data = yaml.safe_load(text)
    components = tuple(data["components"])
    return BlockLayout(
        family=fam,
        blocks=tuple(data["blocks"]),
        components=components,
        unet_prefix=data["unet_prefix"],
        unet_rules=tuple((re.compile(rx), target) for rx, target in data["unet_rules"]),
        component_prefixes={c: tuple(data["components"][c]) for c in components},
        non_mergeable=tuple(re.compile(rx) for rx in data["non_mergeable"]),
        input_conv=data["unet_prefix"] + data["input_conv"] if data.get("input_conv") else None,
        latent_channels=int(data.get("latent_channels", 4)),
        input_variants={int(k): str(v) for k, v in (data.get("input_variants") or {}).items()},
    )
