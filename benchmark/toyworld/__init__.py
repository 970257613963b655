"""benchmark.toyworld: a tiny SD1-architecture world trained here, with its own CLIP tagger.

- `world`: draws 32x32 images from one tag per category (`vocab.yaml` beside it).
- `family`: builds the UNet / VAE / text encoder / tokenizer from configs/families/toyworld.
- `single_file`: diffusers state dicts <-> the SD1 single-file key layout.
- `zoo()`, `tagger_path()`: the committed trained weights; `random_checkpoint()` for tests.
- `python -m benchmark.toyworld.train` rebuilds every weight file, seeded.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.toyworld.checkpoint_io import random_checkpoint
from benchmark.toyworld.family import CONFIG_DIR
from benchmark.toyworld.world import VOCAB_PATH

WEIGHTS_DIR = Path(__file__).with_name("weights")
MODEL_NAMES = ("base", "colorist", "sizer", "backdrop")
TAGGER_FILE = "tagger.safetensors"

__all__ = ["CONFIG_DIR", "MODEL_NAMES", "VOCAB_PATH", "WEIGHTS_DIR", "random_checkpoint", "tagger_path", "zoo"]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: toy-world weights missing; restore them from git or rebuild with "
                                "`python -m benchmark.toyworld.train`")
    return path


def zoo(weights_dir: str | Path | None = None) -> dict[str, Path]:
    """Model name -> committed single-file checkpoint: the base first, then the specialists."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return {name: _require(folder / f"{name}.safetensors") for name in MODEL_NAMES}


def tagger_path(weights_dir: str | Path | None = None) -> Path:
    """The toy CLIP tagger's weights (open_clip state dict, safetensors)."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return _require(folder / TAGGER_FILE)
