"""Benchmark = one prompt split + render settings + a tagger; scores whatever the renderer holds."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from benchmark.errors import BenchmarkError
from benchmark.prompts import PromptSet
from benchmark.renderer import Renderer
from benchmark.score import Score, score_tags
from benchmark.settings import RenderSettings
from benchmark.taggers import check_probs, decide
from benchmark.vocabulary import Vocabulary, load_vocabulary


class Benchmark:
    """`evaluate(renderer)` renders the split with its fixed seeds, tags and scores it."""

    def __init__(self, prompt_set: PromptSet, split: str, tagger, settings: RenderSettings | None = None, *,
                 vocabulary: Vocabulary | None = None, batch_size: int = 8) -> None:
        self.prompt_set = prompt_set
        self.split = split
        self.prompts = prompt_set.prompts(split)
        self.tagger = tagger
        self.settings = settings or RenderSettings()
        self.batch_size = batch_size
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

    def evaluate_batches(self, renderer: Renderer) -> Iterator[tuple[Score, list[Image.Image]]]:
        """After every batch: (score of the prompts so far, all images so far). For early pruning."""
        images: list[Image.Image] = []
        found: list[np.ndarray] = []
        for batch in renderer.render_batches(self.prompts, self.settings, self.batch_size,
                                             prefix=self.prompt_set.prefix, negative=self.prompt_set.negative):
            images.extend(batch)
            found.append(self.tag(batch))
            done = len(images)
            yield score_tags(self.prompts[:done], np.concatenate(found), self.vocabulary, split=self.split,
                             n_total=len(self.prompts)), images

    def evaluate(self, renderer: Renderer) -> tuple[Score, list[Image.Image]]:
        last = None
        for last in self.evaluate_batches(renderer):  # noqa: B007 - only the final (complete) score is kept
            pass
        if last is None:
            raise BenchmarkError(f"split {self.split!r} of the prompt set is empty; nothing to score")
        return last
