"""Zero-shot tagging with open_clip.

Every prompt names at most one tag per category, so for each category the question is
"which of these tags does the image show", a single-label choice. The tagger therefore
scores each tag text against the image (cosine similarity times CLIP's learned logit scale,
text embeddings averaged over a few templates as in CLIP's zero-shot recipe) and takes a
softmax within each category. A tag counts as found when it is its category's top-1 and its
probability reaches `min_prob` (default 0: plain top-1, CLIP's zero-shot classification rule;
raise it to demand confidence, e.g. 0.5 = more likely than all alternatives together).
Top-1 needs no per-tag calibration set, which a new vocabulary never has; per-tag thresholds
fitted on labelled images can be given as `min_prob` per tag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.errors import BenchmarkError
from benchmark.vocabulary import Vocabulary

TEMPLATES = (
    "{}",
    "a picture of {}",
    "an illustration of {}",
    "a drawing with {}",
    "an anime picture of {}",
)


class ClipTagger:
    name = "clip"

    def __init__(self, model: str = "ViT-B-32", pretrained: str | os.PathLike | None = "openai", *,
                 device: str = "cpu", templates: Sequence[str] = TEMPLATES,
                 min_prob: float | dict[str, float] = 0.0, batch_size: int = 32) -> None:
        import open_clip

        kw = {}
        if not str(model).startswith(("hf-hub:", "local-dir:")):
            if pretrained and Path(str(pretrained)).suffix and not Path(str(pretrained)).exists():
                raise BenchmarkError(f"clip tagger: pretrained file {pretrained} does not exist")
            kw["pretrained"] = str(pretrained) if pretrained else None
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(model, device=device, **kw)
            self.tokenizer = open_clip.get_tokenizer(model)
        except RuntimeError as exc:
            raise BenchmarkError(f"clip tagger: cannot build open_clip model {model!r} / {pretrained!r} ({exc}); "
                                 "see open_clip.list_pretrained() for valid pairs") from None
        self.model.eval()
        self.device = torch.device(device)
        self.templates = tuple(templates)
        self.min_prob = min_prob
        self.batch_size = batch_size
        self._text: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def text_features(self, vocabulary: Vocabulary) -> torch.Tensor:
        """One unit vector per tag: the normalised mean of its template embeddings (cached per vocabulary)."""
        if vocabulary.hash not in self._text:
            feats = []
            for tag in vocabulary.tags:
                tokens = self.tokenizer([t.format(tag) for t in self.templates]).to(self.device)
                e = self.model.encode_text(tokens).float()
                e = e / e.norm(dim=-1, keepdim=True)
                m = e.mean(0)
                feats.append(m / m.norm())
            self._text[vocabulary.hash] = torch.stack(feats)
        return self._text[vocabulary.hash]

    @torch.inference_mode()
    def tag(self, images: Sequence[Image.Image], vocabulary: Vocabulary) -> np.ndarray:
        text = self.text_features(vocabulary)
        scale = float(self.model.logit_scale.exp()) if hasattr(self.model, "logit_scale") else 100.0
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i:i + self.batch_size]])
            f = self.model.encode_image(x.to(self.device)).float()
            f = f / f.norm(dim=-1, keepdim=True)
            logits = scale * f @ text.T
            probs = torch.empty_like(logits)
            for sl in vocabulary.category_slices.values():
                probs[:, sl] = logits[:, sl].softmax(dim=-1)
            out.append(probs.cpu().numpy())
        if not out:
            return np.zeros((0, len(vocabulary.tags)))
        return np.concatenate(out).astype(np.float64)

    def thresholds(self, vocabulary: Vocabulary) -> np.ndarray:
        if isinstance(self.min_prob, dict):
            return np.array([float(self.min_prob.get(t, 0.0)) for t in vocabulary.tags])
        return np.full(len(vocabulary.tags), float(self.min_prob))

    def decide(self, probs: np.ndarray, vocabulary: Vocabulary) -> np.ndarray:
        """Found = top-1 within its category and at least its threshold."""
        probs = np.asarray(probs)
        top = np.zeros(probs.shape, dtype=bool)
        for sl in vocabulary.category_slices.values():
            block = probs[:, sl]
            top[:, sl] = block == block.max(axis=1, keepdims=True)
        return top & (probs >= self.thresholds(vocabulary)[None, :])
