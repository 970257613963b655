"""The toy world's CLIP tagger: a tiny open_clip model used through the generic zero-shot tagger.

The architecture is an open_clip model config (`toyworld_clip.json`) registered in open_clip's
model-config registry under MODEL_NAME, with the world's CLIP tokenizer (shipped in
configs/families/toyworld/tokenizer) as its HF tokenizer. Tagging goes through
`benchmark.clip_tagger.ClipTagger`, the same zero-shot code a real CLIP uses: tag texts in a
few templates, cosine similarity times the learned logit scale, softmax within each category.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmark.toyworld.family import CONFIG_DIR

MODEL_NAME = "toyworld-clip"
# The vision tower is open_clip's ModifiedResNet (the RN50 family) at width 16, one block per
# stage: convolutions tell a square from a circle within a few hundred steps, where the ViTs we
# tried (class-token or average-pooled, 4 px patches) stayed near chance on shape.
CONFIG_PATH = Path(__file__).with_name("toyworld_clip.json")
# Templates the tagger is trained with; a subset of the generic CLIP tagger's templates whose
# words the toy tokenizer knows.
TEMPLATES = ("{}", "a picture of {}", "a drawing with {}")


def model_config() -> dict:
    cfg = json.loads(CONFIG_PATH.read_text())
    # The config file names the tokenizer relative to the repository; open_clip needs a real path.
    cfg["text_cfg"]["hf_tokenizer_name"] = str(CONFIG_DIR / "tokenizer")
    return cfg


def register() -> str:
    """Register the toy CLIP architecture in open_clip's model-config registry; returns its name."""
    from open_clip import factory

    factory._MODEL_CONFIGS[MODEL_NAME] = model_config()
    return MODEL_NAME


def create_model(pretrained: str | os.PathLike | None = None):
    """(model, preprocess) built by open_clip from the registered config."""
    import open_clip

    register()
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(pretrained) if pretrained else None)
    return model, preprocess


def get_tokenizer():
    import open_clip

    register()
    return open_clip.get_tokenizer(MODEL_NAME)


def load_tagger(weights: str | os.PathLike | None = None, *, device: str = "cpu", min_prob: float = 0.0,
                batch_size: int = 256):
    """The "toyworld" tagger of benchmark.taggers: ClipTagger over the committed toy CLIP weights."""
    from benchmark.clip_tagger import ClipTagger
    from benchmark.toyworld import tagger_path

    register()
    tagger = ClipTagger(MODEL_NAME, weights if weights is not None else tagger_path(), device=device,
                        templates=TEMPLATES, min_prob=min_prob, batch_size=batch_size)
    tagger.name = "toyworld"
    return tagger
