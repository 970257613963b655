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

`tag_tensors` takes the renderer's uint8 pixels where they are (on the GPU during a search) and
does open_clip's preprocessing there (shortest-side bicubic resize with antialias, centre crop,
mean/std normalisation, from the model's `preprocess_cfg`): no PIL round trip. When the image is
already the tagger's size the resize is skipped in both paths and the two give the same numbers;
otherwise torch's antialiased bicubic differs from PIL's by a level or so. On CUDA the model runs
in fp16 by default (`dtype`).
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
                 min_prob: float | dict[str, float] = 0.0, batch_size: int = 32, dtype: str = "auto") -> None:
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
        self.device = torch.device(device)
        self.dtype = tagger_dtype(dtype, self.device)
        self.model.eval().to(dtype=self.dtype)
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
            out.append(self._probs(x.to(self.device), text, scale, vocabulary))
        if not out:
            return np.zeros((0, len(vocabulary.tags)))
        return np.concatenate(out).astype(np.float64)

    @property
    def accepts_tensors(self) -> bool:
        """Whether `tag_tensors` can reproduce this model's preprocessing on tensors."""
        return _tensor_preprocess_cfg(self.model) is not None

    @torch.inference_mode()
    def tag_tensors(self, pixels: torch.Tensor, vocabulary: Vocabulary) -> np.ndarray:
        """`tag` for uint8 pixels [n, 3, H, W] (any device; moved to the tagger's): float64 [n, n_tags]."""
        cfg = _tensor_preprocess_cfg(self.model)
        if cfg is None:
            raise BenchmarkError(f"clip tagger: the model's preprocessing ({getattr(self.model.visual, 'preprocess_cfg', None)}) "
                                 "has no tensor path; pass PIL images to tag()")
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise BenchmarkError(f"clip tagger: tag_tensors takes uint8 [n, 3, H, W], got {pixels.dtype} {tuple(pixels.shape)}")
        text = self.text_features(vocabulary)
        scale = float(self.model.logit_scale.exp()) if hasattr(self.model, "logit_scale") else 100.0
        mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device)[:, None, None]
        std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device)[:, None, None]
        out = []
        for i in range(0, pixels.shape[0], self.batch_size):
            # torchvision's ToTensor: fp32 divide by 255, then Normalize: (x - mean) / std, as the PIL path.
            x = pixels[i:i + self.batch_size].to(self.device).float().div(255)
            x = _resize_crop(x, cfg)
            out.append(self._probs((x - mean) / std, text, scale, vocabulary))
        if not out:
            return np.zeros((0, len(vocabulary.tags)))
        return np.concatenate(out).astype(np.float64)

    def _probs(self, x: torch.Tensor, text: torch.Tensor, scale: float, vocabulary: Vocabulary) -> np.ndarray:
        f = self.model.encode_image(x.to(self.dtype)).float()
        f = f / f.norm(dim=-1, keepdim=True)
        logits = scale * f @ text.T
        probs = torch.empty_like(logits)
        for sl in vocabulary.category_slices.values():
            probs[:, sl] = logits[:, sl].softmax(dim=-1)
        return probs.cpu().numpy()

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


def tagger_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" = fp16 on CUDA, fp32 elsewhere; or "fp32" / "fp16" / "bf16"."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise BenchmarkError(f"tagger dtype {name!r}: choose auto, fp32, fp16 or bf16")
    return table[name]


def _tensor_preprocess_cfg(model) -> dict | None:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None)
    if not cfg or cfg.get("resize_mode", "shortest") not in ("shortest", "squash"):
        return None
    if cfg.get("interpolation", "bicubic") not in ("bicubic", "bilinear"):
        return None
    size = cfg.get("size")
    if cfg.get("resize_mode", "shortest") == "shortest" and not isinstance(size, int) and size[0] != size[1]:
        return None  # open_clip's ResizeKeepRatio: not reproduced here, the PIL path serves it
    return dict(cfg)


def _resize_crop(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """open_clip's eval transform on float [n, 3, H, W] in [0, 1]; an image of the right size is untouched."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    mode = InterpolationMode.BICUBIC if cfg.get("interpolation", "bicubic") == "bicubic" else InterpolationMode.BILINEAR
    if cfg.get("resize_mode", "shortest") == "squash":
        if tuple(x.shape[-2:]) != size:
            x = TF.resize(x, list(size), interpolation=mode, antialias=True).clamp_(0, 1)
        return x
    if min(x.shape[-2:]) != max(size):
        x = TF.resize(x, max(size), interpolation=mode, antialias=True).clamp_(0, 1)  # bicubic overshoots; PIL clips
    return TF.center_crop(x, list(size))
