"""Render a grid: sources resident in a Mixer, each cell's merge written in place, images by the benchmark's renderer.

Cells that share a recipe (a seed or prompt axis) are merged once and rendered in one batch;
cells already rendered with the same recipe (sources by sha256), prompt, seed and settings are
read back from ``OUT/cells/`` instead of being rendered again. Each image depends only on its
prompt and seed (the renderer seeds one generator per image), so batching changes nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from search.grid.axes import Axis, Cell
from search.grid.figure import grid_image


def _save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_json(data, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def tag_recall(images: Sequence[Image.Image], prompts: Sequence[str], tagger, vocabulary) -> list[float | None]:
    """Per image: the share of its prompt's vocabulary tags the tagger finds (None: the prompt names none)."""
    from benchmark.taggers import check_probs, decide

    probs = check_probs(tagger, tagger.tag(list(images), vocabulary), len(images), vocabulary)
    found = decide(tagger, probs, vocabulary)
    index = vocabulary.index
    out: list[float | None] = []
    for row, prompt in zip(found, prompts, strict=True):
        tags = [t.strip() for t in prompt.split(",") if t.strip() in index]
        out.append(sum(bool(row[index[t]]) for t in tags) / len(tags) if tags else None)
    return out


def render_grid(cells: Sequence[Cell], axes: Sequence[Axis], out: Path, *, settings, config: str | None = None,
                tagger=None, vocabulary=None, progress: bool = True, reuse: bool = True,
                title: str = "", cell_px: int = 128, renderer=None) -> dict:
    """Render (or reuse) every cell, write ``OUT/cells/*.png``, ``OUT/grid.json`` and one
    ``OUT/grid[-zN].png`` per Z value. Returns the grid JSON (also with timings).

    ``renderer``: an existing Renderer of the right config to render with (else one is built)."""
    import torch

    from benchmark import Renderer
    from benchmark.renderer import guess_config
    from merge_core import Recipe, file_sha256
    from search.mixer import Mixer

    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    paths = sorted({s["path"] for c in cells for s in c.recipe["sources"]})
    hashes = {p: file_sha256(p) for p in paths}
    config = config or guess_config(cells[0].recipe["sources"][0]["path"])
    settings_json = settings.model_dump(mode="json")
    keys = [c.cache_key(settings_json, config, hashes) for c in cells]
    files = [out / "cells" / f"{k}.png" for k in keys]
    todo, seen = [], set()
    for i, f in enumerate(files):  # one render per distinct image, even when several cells show it
        if (reuse and f.is_file()) or keys[i] in seen:
            continue
        seen.add(keys[i])
        todo.append(i)
    # group by sources (one Mixer each), then by recipe (one apply each, one render batch each)
    groups: dict[tuple[str, ...], dict[str, list[int]]] = {}
    for i in todo:
        srcs = tuple(s["path"] for s in cells[i].recipe["sources"])
        groups.setdefault(srcs, {}).setdefault(json.dumps(cells[i].recipe, sort_keys=True), []).append(i)
    timings = {"apply_s": 0.0, "render_s": 0.0, "load_s": 0.0, "rendered": len(todo), "reused": len(cells) - len(todo)}
    # (cells whose image another cell of this grid renders count as reused)
    if todo:
        t0 = time.perf_counter()
        renderer = renderer or Renderer(config)
        timings["load_s"] += time.perf_counter() - t0
        with tqdm(total=len(todo), desc="grid", unit="cell", disable=not progress) as bar:
            for srcs, by_recipe in groups.items():
                t0 = time.perf_counter()
                mixer = Mixer(renderer, list(srcs))
                timings["load_s"] += time.perf_counter() - t0
                for recipe_json, idx in by_recipe.items():
                    recipe = Recipe.model_validate(json.loads(recipe_json))
                    timings["apply_s"] += mixer.apply(recipe)
                    t0 = time.perf_counter()
                    images = renderer.render([cells[i].prompt for i in idx], settings, seeds=[cells[i].seed for i in idx])
                    timings["render_s"] += time.perf_counter() - t0
                    for i, im in zip(idx, images, strict=True):
                        _save_png(im, files[i])
                    bar.update(len(idx))
                del mixer
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    images = [Image.open(f).convert("RGB") for f in files]
    recalls: list[float | None] = [None] * len(cells)
    if tagger is not None:
        recalls = tag_recall(images, [c.prompt for c in cells], tagger, vocabulary)
    padded = list(axes) + [Axis("none", (None,), ("",))] * (3 - len(axes))
    nz = len(padded[2].values)
    pngs = []
    for z in range(nz):
        sel = {(c.x, c.y): images[i] for i, c in enumerate(cells) if c.z == z}
        notes = {(c.x, c.y): f"recall {recalls[i]:.2f}" for i, c in enumerate(cells)
                 if c.z == z and recalls[i] is not None}
        ztitle = " — ".join(t for t in (title, padded[2].labels[z]) if t)
        fig = grid_image(sel, padded[0].labels, padded[1].labels, title=ztitle, notes=notes, cell=cell_px)
        name = "grid.png" if nz == 1 else f"grid-z{z}.png"
        _save_png(fig, out / name)
        pngs.append(name)
    data = {
        "axes": [{"kind": a.kind, "labels": list(a.labels)} for a in axes],
        "settings": settings_json, "config": config, "grids": pngs, "timings": timings,
        "cells": [{**c.model_dump(), "image": f"cells/{files[i].name}", "tag_recall": recalls[i]}
                  for i, c in enumerate(cells)],
    }
    _write_json(data, out / "grid.json")
    return data
