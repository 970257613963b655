"""Grid cost against the renders alone.

A 5x5 grid on the toy world (alpha 0..1 in 5 steps x 5 seeds, base + colorist) through
`render_grid` — Mixer construction, 5 in-place merges, 5 batched renders of 5, PNGs, the labelled
grid — against the same 25 (prompt, seed) renders in the same batches on one loaded model, on the
same Renderer in the same process. Runs alternate and the fastest of each is kept.
Target: grid / renders <= 1.2.

    .venv/bin/python tests/perf/grid_speed.py [--repeats 2] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from benchmark import Renderer, RenderSettings
    from benchmark.toyworld import zoo
    from merge_core import layout_for
    from search.grid.axes import GridBase, build_cells, parse_axis
    from search.grid.render import render_grid

    models = zoo()
    layout = layout_for("sd1")
    axes = [parse_axis("alpha=0..1x5", layout), parse_axis("seed=1,2,3,4,5", layout)]
    base = GridBase(models=("base", "colorist"), prompt="magenta, circle, large")
    cells = build_cells(base, axes, layout, "sd1", lambda spec: models[spec])
    settings = RenderSettings(scheduler="ddim", steps=a.steps, cfg=4.0)
    renderer = Renderer("toyworld")
    renderer.load_checkpoint(models["base"])
    batches = [[c for c in cells if c.x == x] for x in range(5)]

    def renders_alone() -> float:
        t0 = time.perf_counter()
        for batch in batches:
            renderer.render([c.prompt for c in batch], settings, seeds=[c.seed for c in batch])
        return time.perf_counter() - t0

    def grid() -> tuple[float, dict]:
        out = Path(tempfile.mkdtemp(prefix="grid-speed-"))
        try:
            t0 = time.perf_counter()
            data = render_grid(cells, axes, out, settings=settings, config="toyworld", progress=False,
                               renderer=renderer)
            return time.perf_counter() - t0, data["timings"]
        finally:
            shutil.rmtree(out, ignore_errors=True)

    renders_alone()  # warm-up (first call compiles kernels, allocates)
    ref, got, timings = [], [], None
    for _ in range(a.repeats):
        ref.append(renders_alone())
        t, timings = grid()
        got.append(t)
    r, g = min(ref), min(got)
    print(f"25 renders alone (5 batches of 5, {a.steps} steps): {r:.2f} s")
    print(f"5x5 grid (Mixer load {timings['load_s']:.2f} s, merges {timings['apply_s']:.3f} s, "
          f"renders {timings['render_s']:.2f} s): {g:.2f} s")
    print(f"grid / renders = {g / r:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
