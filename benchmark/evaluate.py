"""Benchmark = one prompt split + render settings + a tagger; scores whatever the renderer holds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import numpy as np
import torch
from PIL import Image

from benchmark.errors import BenchmarkError
from benchmark.images import ImageBatch, ImageList
from benchmark.prompts import PromptSet
from benchmark.renderer import Renderer
from benchmark.score import Score, score_tags
from benchmark.settings import RenderSettings
from benchmark.taggers import check_probs, decide
from benchmark.vocabulary import Vocabulary, load_vocabulary


class Benchmark:
    """`evaluate(renderer)` renders the split with its fixed seeds, tags and scores it.

    `batch_size`: prompts per score step (a partial score, one pruning step). `render_batch`: prompts
    per pipeline call (default `batch_size`; larger on a GPU where small batches leave it idle); the
    images and scores do not depend on it (one seeded generator per prompt). `overlap`: decode and tag
    batch k while batch k+1 denoises (None = on CUDA only); same images and scores either way.
    """

    def __init__(self, prompt_set: PromptSet, split: str, tagger, settings: RenderSettings | None = None, *,
                 vocabulary: Vocabulary | None = None, batch_size: int = 8, render_batch: int | None = None,
                 overlap: bool | None = None) -> None:
        self.prompt_set = prompt_set
        self.split = split
        self.prompts = prompt_set.prompts(split)
        self.tagger = tagger
        self.settings = settings or RenderSettings()
        self.batch_size = batch_size
        self.render_batch = render_batch or batch_size
        self.overlap = overlap
        self.vocabulary = vocabulary or getattr(tagger, "vocabulary", None) or self._shipped_vocabulary()
        prompt_set.check_vocabulary(self.vocabulary)

    def _shipped_vocabulary(self) -> Vocabulary:
        name = self.prompt_set.vocabulary.name
        try:
            return load_vocabulary(name)
        except BenchmarkError:
            raise BenchmarkError(f"prompt set uses vocabulary {name!r}, which is not shipped; pass the "
                                 "vocabulary file (--vocab) it was made from") from None

    def tag(self, images: list[Image.Image]) -> np.ndarray:
        """Found-tag matrix for `images` (bool[n, n_tags])."""
        probs = check_probs(self.tagger, self.tagger.tag(images, self.vocabulary), len(images), self.vocabulary)
        return decide(self.tagger, probs, self.vocabulary)

    def tag_pixels(self, pixels: torch.Tensor, images: ImageBatch | None = None) -> np.ndarray:
        """Found-tag matrix for uint8 pixels [n, 3, H, W] (any device): the tagger reads the tensor itself
        when it has `tag_tensors`, otherwise it gets PIL images (`images`, or made from the pixels)."""
        if hasattr(self.tagger, "tag_tensors") and getattr(self.tagger, "accepts_tensors", True):
            probs = self.tagger.tag_tensors(pixels, self.vocabulary)
        else:
            probs = self.tagger.tag(list(images if images is not None else ImageBatch(pixels)), self.vocabulary)
        probs = check_probs(self.tagger, probs, int(pixels.shape[0]), self.vocabulary)
        return decide(self.tagger, probs, self.vocabulary)

    def evaluate_batches(self, renderer: Renderer) -> Iterator[tuple[Score, ImageList]]:
        """After every `batch_size` prompts: (score of the prompts so far, all images so far). For early
        pruning. Closing the iterator early waits for the batch still being decoded or tagged."""
        n = len(self.prompts)
        step = max(1, self.batch_size)
        overlap = renderer.device.type == "cuda" if self.overlap is None else self.overlap

        def finish(pixels: torch.Tensor) -> tuple[ImageBatch, np.ndarray]:
            batch = ImageBatch(pixels)  # host copy, for the contact sheet and the blank check
            return batch, self.tag_pixels(pixels, batch)

        images = ImageList()
        found: list[np.ndarray] = []
        chunks = renderer.decoded_batches(self.prompts, self.settings, self.render_batch, then=finish,
                                          prefix=self.prompt_set.prefix, negative=self.prompt_set.negative,
                                          overlap=overlap)
        with closing(chunks):
            for batch, tags in chunks:
                start = len(images)
                images.extend(batch)
                found.append(tags)
                stop = len(images)
                all_found = np.concatenate(found) if len(found) > 1 else found[0]
                ends = [e for e in range(start + 1, stop + 1) if e % step == 0 or e == n]
                for done in ends:
                    yield score_tags(self.prompts[:done], all_found[:done], self.vocabulary, split=self.split,
                                     n_total=n), images[:done]

    def evaluate(self, renderer: Renderer) -> tuple[Score, list[Image.Image]]:
        last = None
        for last in self.evaluate_batches(renderer):  # noqa: B007 - only the final (complete) score is kept
            pass
        if last is None:
            raise BenchmarkError(f"split {self.split!r} of the prompt set is empty; nothing to score")
        return last
