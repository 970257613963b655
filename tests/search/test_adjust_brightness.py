"""Adjust's brightness value moves the toy world's rendered mean pixel value the way it says."""

import numpy as np
import pytest
import torch

from benchmark import Renderer, RenderSettings
from benchmark.toyworld import zoo
from merge_core import Recipe, Source
from merge_core.adjust import parse_adjust
from search.mixer import Mixer

PROMPTS = ["red circle", "blue square, grey background", "green triangle, small", "yellow star",
           "cyan circle, large", "magenta square"]


@pytest.mark.slow
def test_brightness_shifts_mean_pixel_value():
    torch.set_num_threads(1)
    models = zoo()
    sources = (Source(path=str(models["base"])), Source(path=str(models["colorist"])))
    renderer = Renderer("toyworld")
    mixer = Mixer(renderer, [s.path for s in sources])
    plain = Recipe.uniform("sd1", "weighted-sum", sources, (0.5,), dtype="fp32")
    settings = RenderSettings(scheduler="ddim", steps=12, cfg=4.0)

    def mean_pixel(bri: float) -> float:
        recipe = plain if bri == 0 else plain.model_copy(update={"adjust": parse_adjust(f"0,0,0,0,{bri},0,0,0")})
        mixer.apply(recipe)
        images = renderer.render(PROMPTS, settings, seeds=list(range(len(PROMPTS))))
        return float(np.mean([np.asarray(im, dtype=np.float64).mean() for im in images]))

    darker, neutral, brighter = mean_pixel(-10), mean_pixel(0), mean_pixel(10)
    print(f"mean pixel: BRI -10 {darker:.3f}, 0 {neutral:.3f}, +10 {brighter:.3f}")
    # measured: about 0.3 grey levels (of 255) per 10 units of brightness either way (fixed seeds: deterministic)
    assert brighter - neutral > 0.15, (darker, neutral, brighter)
    assert neutral - darker > 0.15, (darker, neutral, brighter)
