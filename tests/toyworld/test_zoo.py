"""The committed zoo and tagger: load through merge_core as SD1, render, tag."""

import numpy as np
import pytest
import torch

from benchmark.toyworld import MODEL_NAMES, world, zoo


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_zoo_loads_through_merge_core_as_sd1_with_every_unet_key_in_a_block():
    from merge_core import Family, layout_for, open_checkpoint

    paths = zoo()
    assert list(paths) == list(MODEL_NAMES)
    layout = layout_for(Family.SD1)
    ckpts = [open_checkpoint(p) for p in paths.values()]
    keys = set(ckpts[0].keys())
    for ck in ckpts:
        assert ck.family == Family.SD1
        assert set(ck.keys()) == keys
    unet_keys = [k for k in keys if k.startswith("model.diffusion_model.")]
    assert {layout.block_of(k) for k in unet_keys} == set(layout.blocks)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert ckpts[0].dtype(key) == torch.float16
    # Specialists are fine-tunes of the base: same VAE, different UNet and text encoder.
    base, *specialists = ckpts
    vae_key = "first_stage_model.decoder.conv_out.weight"
    te_key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    for sp in specialists:
        assert torch.equal(base.tensor(vae_key), sp.tensor(vae_key))
        assert not torch.equal(base.tensor(key), sp.tensor(key))
        assert not torch.equal(base.tensor(te_key), sp.tensor(te_key))


def test_base_renders_images_through_the_diffusers_pipeline():
    from benchmark.toyworld.evaluate import load_pipeline, render

    pipe = load_pipeline(zoo()["base"])
    images = render(pipe, ["red, circle, large, top left, white background", ""], [0, 1], steps=4)
    arr = np.stack([np.asarray(im) for im in images]).astype(float)
    assert arr.shape == (2, world.IMAGE_SIZE, world.IMAGE_SIZE, 3)
    assert np.isfinite(arr).all() and arr.std() > 10  # not blank


def test_tagger_reads_drawn_images_through_the_registered_zero_shot_path():
    import open_clip

    from benchmark.taggers import get_tagger
    from benchmark.toyworld.check_tagger import category_accuracy, load_vocabulary
    from benchmark.toyworld.tagger import MODEL_NAME

    tagger = get_tagger("toyworld")
    assert MODEL_NAME in open_clip.list_models()
    idx = world.sample_indices(48, seed=4242)
    probs = tagger.tag(world.to_pil(world.draw_batch(idx, seed=4242)), load_vocabulary())
    assert probs.shape == (48, len(world.all_tags()))
    acc = category_accuracy(probs, world.indices_to_scenes(idx))
    # Shape read at 0.3 with an earlier tagger, so it is left out here; check_tagger measures all five.
    assert min(acc[c] for c in ("colour", "size", "position", "background")) >= 0.9, acc
    assert np.allclose(probs.reshape(48, -1).sum(1), len(world.categories()))  # a softmax per category


def test_each_specialist_renders_the_gap_the_base_never_learned():
    """The zoo's premise: the base never saw cyan, magenta, small shapes or the grey background;
    the specialist fine-tuned on each gap renders it when asked, in the rest of the base's world
    (16 prompts each, 20 DDIM steps)."""
    from benchmark.taggers import get_tagger
    from benchmark.toyworld.check_tagger import load_vocabulary
    from benchmark.toyworld.evaluate import load_pipeline, render
    from benchmark.toyworld.train import BASE_SUBSET

    tagger, vocab = get_tagger("toyworld"), load_vocabulary()
    columns = world.category_slices()
    gaps = {"colorist": ("colour", ("cyan", "magenta")), "sizer": ("size", ("small",)),
            "backdrop": ("background", ("grey background",))}
    for name, (category, tags) in gaps.items():
        scenes = [{**s, **{c: t[i % len(t)] for c, t in BASE_SUBSET.items()}, category: tags[i % len(tags)]}
                  for i, s in enumerate(world.indices_to_scenes(world.sample_indices(16, seed=11)))]
        prompts = [world.caption(s) for s in scenes]
        want = np.array([world.vocabulary()[category].index(s[category]) for s in scenes])
        hits = {}
        for model in ("base", name):
            images = render(load_pipeline(zoo()[model]), prompts, list(range(16)))
            probs = np.asarray(tagger.tag(images, vocab))[:, columns[category]]
            hits[model] = int((probs.argmax(1) == want).sum())
        assert hits[name] >= hits["base"] + 4, (name, hits)
