"""Training is deterministic for a seed (a few steps of each stage, run twice)."""

import numpy as np
import torch

from benchmark.toyworld import family, train, world


def _tiny(**kw):
    return train.TrainConfig(n_images=64, vae_steps=2, vae_batch=8, tagger_steps=2, tagger_batch=16,
                             batch=8, **kw)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vae_and_diffusion_stages_repeat_exactly():
    torch.set_num_threads(1)
    cfg = _tiny()
    idx = world.sample_indices(cfg.n_images, seed=0)
    images = world.draw_batch(idx, seed=0)
    vaes = [train.train_vae(images, cfg, lambda _: None) for _ in range(2)]
    assert _same(vaes[0].state_dict(), vaes[1].state_dict())
    mean, std = train.encode(vaes[0], images)
    assert abs((mean * vaes[0].config.scaling_factor).std().item() - 1) < 1e-3  # latent rescaled to unit std

    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        unet, te = family.build_unet(), family.build_text_encoder()
        train.train_diffusion(unet, te, mean, std, idx, steps=2, lr=1e-3, keep=dict.fromkeys(world.categories(), 1.0),
                              cfg=cfg, seed=5, name="t", log=lambda _: None, one_cycle=True)
        runs.append((unet.state_dict(), te.state_dict()))
    assert _same(runs[0][0], runs[1][0]) and _same(runs[0][1], runs[1][1])


def test_captions_and_subsets():
    rng = np.random.default_rng(0)
    idx = world.sample_indices(200, seed=1)
    caps = train.sample_captions(idx, rng, dict.fromkeys(world.categories(), 1.0), dropout=0.0)
    assert all(len(c.split(", ")) == len(world.categories()) for c in caps)
    only_colour = dict.fromkeys(world.categories(), 0.0) | {"colour": 1.0}
    caps = train.sample_captions(idx, rng, only_colour, dropout=0.0)
    assert {c for c in caps} <= set(world.vocabulary()["colour"])
    sub, rows = train.subset_indices(idx, {"size": ("large",)})
    assert len(sub) == len(rows) > 0 and set(sub[:, world.categories().index("size")]) == {1}
    assert np.array_equal(idx[rows], sub)
