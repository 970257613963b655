"""Decoded images as one uint8 tensor, converted to PIL only when someone asks (the contact sheet).

The quantisation is diffusers' own (`VaeImageProcessor.postprocess` to "pil"): denormalise
`(x * 0.5 + 0.5).clamp(0, 1)` in the decoder's dtype, then fp32 `round(x * 255)` to uint8, so a
tensor made here gives the same pixels as the pipeline's PIL output, and taggers can read the
pixels straight from the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np
import torch
from PIL import Image


def to_uint8(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] (float [n, 3, H, W], any dtype/device) -> uint8 [n, 3, H, W] on the same device."""
    x = (decoded * 0.5 + 0.5).clamp(0, 1)
    return (x.float() * 255).round().to(torch.uint8)


class ImageBatch(Sequence[Image.Image]):
    """A sequence of PIL images backed by a uint8 tensor [n, 3, H, W] (host memory); each PIL image is
    made on first access and kept. `.pixels` is the tensor, `.array(i)` one image as HWC uint8 numpy."""

    def __init__(self, pixels: torch.Tensor) -> None:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
            raise ValueError(f"ImageBatch needs uint8 [n, 3, H, W] pixels, got {pixels.dtype} {tuple(pixels.shape)}")
        self.pixels = pixels.cpu()
        self._hwc = self.pixels.permute(0, 2, 3, 1).numpy()
        self._pil: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @overload
    def __getitem__(self, i: int) -> Image.Image: ...

    @overload
    def __getitem__(self, i: slice) -> ImageBatch: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ImageBatch(self.pixels[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image {i} of a batch of {n}")
        i %= n
        if i not in self._pil:
            a = self._hwc[i]
            self._pil[i] = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else np.ascontiguousarray(a))
        return self._pil[i]

    def __iter__(self) -> Iterator[Image.Image]:
        return (self[i] for i in range(len(self)))

    def array(self, i: int) -> np.ndarray:
        """Image i as uint8 [H, W, C] (what np.asarray of its PIL image gives), without making the PIL image."""
        return self._hwc[i]


class ImageList(Sequence[Image.Image]):
    """Images of several ImageBatches as one sequence (slices stay ImageLists; no pixels are copied)."""

    def __init__(self, items: list[tuple[ImageBatch, int]] | None = None) -> None:
        self._items = list(items or [])

    def extend(self, batch: ImageBatch) -> None:  # type: ignore[override]
        self._items.extend((batch, i) for i in range(len(batch)))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ImageList(self._items[i])
        batch, j = self._items[i]
        return batch[j]

    def __iter__(self) -> Iterator[Image.Image]:
        return (b[j] for b, j in self._items)

    def array(self, i: int) -> np.ndarray:
        """Image i as uint8 [H, W, C] without making its PIL image."""
        batch, j = self._items[i]
        return batch.array(j)
