"""Training is deterministic for a seed (a few steps of each stage, run twice)."""

import numpy as np
import torch

from benchmark.toyworld import family, train, world


def _tiny(**kw):
    return train.TrainConfig(**{"n_images": 64, "vae_steps": 2, "vae_batch": 8, "tagger_steps": 2,
                                "tagger_batch": 16, "batch": 8, **kw})


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


def test_foreground_weight_marks_the_shape_only():
    idx = world.sample_indices(4, seed=3)
    x = world.draw_batch(idx, seed=3) * 2 - 1
    w = train._foreground_weight(x)
    assert w.shape == (4, 1, 32, 32) and set(w.unique().tolist()) <= {1.0, 5.0}
    share = (w > 1).float().mean((1, 2, 3))
    assert ((share > 0.05) & (share < 0.5)).all()  # a shape, not the background
    plain = torch.full((1, 3, 32, 32), 0.3)
    assert torch.equal(train._foreground_weight(plain), torch.ones(1, 1, 32, 32))


def test_timesteps_lean_to_high_noise_by_the_configured_share():
    g = torch.Generator().manual_seed(0)
    uniform = train._timesteps(20000, 1000, 0.0, g)
    leaning = train._timesteps(20000, 1000, 1.0, g)
    assert 0 <= int(leaning.min()) and int(leaning.max()) <= 999
    assert abs(uniform.float().mean().item() - 500) < 15
    assert abs(leaning.float().mean().item() - 667) < 15  # E[sqrt(u)] = 2/3


def test_tagger_stage_repeats_exactly(tmp_path):
    cfg = _tiny()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        train.tagger_stage(cfg, tmp_path / name, lambda _: None)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / n / train.TAGGER_FILE)) for n in ("a", "b"))
    assert _same(a, b)


def test_full_training_writes_a_loadable_zoo(tmp_path):
    """The driver end to end at toy size: worker processes for the tagger and specialists."""
    import json

    from benchmark.toyworld import zoo
    from benchmark.toyworld.evaluate import load_pipeline

    cfg = _tiny(base_steps=2, specialist_steps=1, n_images=256)
    times = train.train(cfg, tmp_path, lambda _: None)
    assert {"vae", "base", "tagger", *train.SPECIALISTS} <= times.keys()
    for path in zoo(tmp_path).values():
        assert load_pipeline(path).unet.config.layers_per_block == 2
    assert (tmp_path / train.TAGGER_FILE).is_file()
    assert json.loads((tmp_path / "train_report.json").read_text())["config"]["seed"] == 0

    # Specialists start from the stored base, so retraining them alone gives the same files.
    before = {n: (tmp_path / f"{n}.safetensors").read_bytes() for n in train.SPECIALISTS}
    train.train(cfg, tmp_path, lambda _: None, only_specialists=True)
    assert all((tmp_path / f"{n}.safetensors").read_bytes() == before[n] for n in train.SPECIALISTS)


def test_base_trains_the_same_on_two_processes_as_on_one(tmp_path):
    """Data-parallel ranks draw the same batch, train on halves and average gradients: the same
    steps as one process over the whole batch, up to float rounding."""
    import multiprocessing

    torch.set_num_threads(1)
    one, two = _tiny(base_steps=3, base_processes=1), _tiny(base_steps=3, base_processes=2)
    vae_state, mean, std = train.vae_stage(one, tmp_path, lambda _: None)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        bases = [train.train_base(pool, cfg, tmp_path / str(cfg.base_processes), vae_state, mean, std)
                 for cfg in (one, two)]
    for a, b in zip(*bases, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-3) for k in a)
    torch.manual_seed(one.seed + 3)  # the base's initialisation
    init = family.build_unet().state_dict()
    moved = [k for k, v in bases[0][0].items() if not torch.allclose(v, init[k].half().float(), atol=1e-4)]
    assert moved  # the comparison is between trained weights, not two copies of the initialisation


def test_the_zoo_trains_v_prediction_to_zero_terminal_snr():
    """The sampler starts from pure noise, so training ends at SNR 0 and predicts v (epsilon is
    undefined there) with weight 1, which keeps the layout-deciding noisy steps in the loss."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(family.build_scheduler().config)
    assert sched.config.prediction_type == "v_prediction"
    assert sched.alphas_cumprod[-1] < 1e-6
    assert torch.equal(train._loss_weight(sched, 5.0), torch.ones(1000))
    eps = DDPMScheduler.from_config({**sched.config, "prediction_type": "epsilon", "rescale_betas_zero_snr": False})
    w = train._loss_weight(eps, 5.0)
    assert w[0] < 0.01 and w[-1] == 1  # min-SNR: low-noise steps weigh little
