"""SmilingWolf's WD v3 Danbooru taggers through timm (multi-label, sigmoid outputs).

`model` is a hub id (`SmilingWolf/wd-vit-tagger-v3`) or a local folder holding timm's
`config.json`, the weights (`model.safetensors`) and the tag list `selected_tags.csv`
(columns tag_id,name,category,count; category 4 = character). Preprocessing follows the
tagger's reference script: pad to a white square, timm's eval transform, RGB -> BGR.
Thresholds are the ones its authors publish: 0.35 for general tags, 0.85 for characters.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.errors import BenchmarkError
from benchmark.vocabulary import Vocabulary

CHARACTER = 4


def _pad_square(im: Image.Image) -> Image.Image:
    im = im.convert("RGB")
    side = max(im.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas


def read_tag_csv(path: Path) -> list[tuple[str, int]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [(r["name"], int(r["category"])) for r in rows]
    except (OSError, KeyError, ValueError) as exc:
        raise BenchmarkError(f"{path}: not a WD tag list ({exc}); expected columns tag_id,name,category,count") from None


class WDTagger:
    name = "wd"

    def __init__(self, model: str | os.PathLike = "SmilingWolf/wd-vit-tagger-v3", *, device: str = "cpu",
                 general_threshold: float = 0.35, character_threshold: float = 0.85, batch_size: int = 16) -> None:
        import timm
        from timm.data import create_transform, resolve_data_config

        path = Path(model)
        if path.is_dir():
            source, csv_path = f"local-dir:{path}", path / "selected_tags.csv"
        else:
            from huggingface_hub import hf_hub_download

            source = f"hf-hub:{model}"
            try:
                csv_path = Path(hf_hub_download(str(model), "selected_tags.csv"))
            except Exception as exc:
                raise BenchmarkError(f"wd tagger: {model!r} is no local folder and not reachable on the hub "
                                     f"({type(exc).__name__}); give a folder with config.json, "
                                     "model.safetensors and selected_tags.csv") from None
        if not csv_path.is_file():
            raise BenchmarkError(f"wd tagger: {csv_path} is missing; the tagger folder needs its selected_tags.csv")
        self.tags = read_tag_csv(csv_path)
        self.csv_path = csv_path
        self.column = {name: i for i, (name, _) in enumerate(self.tags)}
        self.model = timm.create_model(source, pretrained=True).eval().to(device)
        n_out = self.model.num_classes
        if n_out != len(self.tags):
            raise BenchmarkError(f"wd tagger: {csv_path} lists {len(self.tags)} tags but the model has {n_out} outputs")
        self.transform = create_transform(**resolve_data_config(self.model.pretrained_cfg, model=self.model))
        self.device = torch.device(device)
        self.general_threshold = general_threshold
        self.character_threshold = character_threshold
        self.batch_size = batch_size

    def columns(self, vocabulary: Vocabulary) -> list[int]:
        """Model output index of each vocabulary tag (Danbooru spells spaces as underscores)."""
        cols = []
        for tag in vocabulary.tags:
            for cand in (tag, tag.replace(" ", "_")):
                if cand in self.column:
                    cols.append(self.column[cand])
                    break
            else:
                raise BenchmarkError(f"wd tagger: vocabulary {vocabulary.name!r} tag {tag!r} is not in {self.csv_path}; "
                                     "use Danbooru tag names or remove it")
        return cols

    @torch.inference_mode()
    def tag(self, images: Sequence[Image.Image], vocabulary: Vocabulary) -> np.ndarray:
        cols = self.columns(vocabulary)
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([self.transform(_pad_square(im)) for im in images[i:i + self.batch_size]])
            x = x[:, [2, 1, 0]].to(self.device)  # the WD models were trained on BGR input
            out.append(torch.sigmoid(self.model(x).float())[:, cols].cpu().numpy())
        if not out:
            return np.zeros((0, len(vocabulary.tags)))
        return np.concatenate(out).astype(np.float64)

    def thresholds(self, vocabulary: Vocabulary) -> np.ndarray:
        cols = self.columns(vocabulary)
        return np.array([self.character_threshold if self.tags[c][1] == CHARACTER else self.general_threshold
                         for c in cols])
