"""The Mixer writes exactly the streaming merge of the same recipe into the live pipeline."""

import pytest
import torch

from benchmark import Renderer
from benchmark.toyworld import random_checkpoint
from merge_core import Recipe, Source, layout_for, load_state_dict, merge_to_file
from search.mixer import Mixer, live_blocks


@pytest.fixture(scope="module")
def toy_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return tuple(Source.from_path(random_checkpoint(root / f"m{i}.safetensors", seed=i), name=f"m{i}")
                 for i in range(3))


def per_block_recipe(sources, seed):
    g = torch.Generator().manual_seed(seed)
    ids = layout_for("sd1").weight_ids
    weights = {w: tuple((torch.rand(2, generator=g) * 1.6 - 0.3).tolist()) for w in ids}
    return Recipe(family="sd1", method="affine", sources=sources, weights=weights, dtype="fp32")


def live_state(renderer):
    return {f"{m}.{k}": v.detach().clone() for m, mod in renderer.modules.items() for k, v in mod.state_dict().items()}


def test_every_live_parameter_has_the_block_of_its_key(toy_sources):
    blocks = live_blocks(Renderer("toyworld"), load_state_dict(toy_sources[0].path), layout_for("sd1"))
    assert set(blocks["vae"].values()) == {"VAE"} and set(blocks["text_encoder"].values()) == {"TE"}
    unet = blocks["unet"]
    assert unet["conv_in.weight"] == "IN00" and unet["time_embedding.linear_1.weight"] == "IN00"
    assert unet["mid_block.resnets.0.conv1.weight"] == "M00"
    assert unet["conv_out.weight"] == "OUT11" and unet["conv_norm_out.weight"] == "OUT11"
    assert unet["down_blocks.0.resnets.0.conv1.weight"] == "IN01"  # input_blocks.1
    assert unet["up_blocks.3.resnets.2.conv1.weight"] == "OUT11"  # output_blocks.11
    assert set(unet.values()) == set(layout_for("sd1").blocks)


def test_apply_equals_streaming_merge(toy_sources, tmp_path):
    mixed = Renderer("toyworld")
    mixer = Mixer(mixed, [s.path for s in toy_sources])
    reference = Renderer("toyworld")
    for seed in (0, 1):  # the second apply overwrites the first completely: nothing leaks between trials
        recipe = per_block_recipe(toy_sources, seed)
        seconds = mixer.apply(recipe)
        assert seconds > 0
        out = merge_to_file(recipe, tmp_path / f"merged{seed}.safetensors", progress=False)
        reference.load_checkpoint(out)
        got, want = live_state(mixed), live_state(reference)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    assert mixer.nonfinite_blocks() == []


def test_overflow_is_reported_by_block(toy_sources):
    renderer = Renderer("toyworld")
    mixer = Mixer(renderer, [s.path for s in toy_sources])
    coeffs = {w: (1.0, 0.0, 0.0) for w in layout_for("sd1").weight_ids}
    coeffs["M00"] = (1e38, 1e38, 0.0)  # fp32 overflow in one block only
    mixer.apply(coeffs)
    assert mixer.nonfinite_blocks() == ["M00"]


def test_fp8_and_bf16_sources_mix_in_the_mixer_as_in_the_streaming_merge(toy_sources, tmp_path):
    """Sources read by the search (fp8 UNet, bf16 everything) give the streaming merge's tensors."""
    from safetensors.torch import load_file, save_file

    converted = []
    for i, (src, dtype) in enumerate(zip(toy_sources, (None, torch.float8_e4m3fn, torch.bfloat16), strict=True)):
        if dtype is None:
            converted.append(src)
            continue
        sd = load_file(src.path)
        sd = {k: v.to(dtype) if v.is_floating_point() and (dtype != torch.float8_e4m3fn
                                                          or k.startswith("model.diffusion_model.")) else v
              for k, v in sd.items()}
        path = tmp_path / f"m{i}_{str(dtype).removeprefix('torch.')}.safetensors"
        save_file(sd, str(path))
        converted.append(Source.from_path(path, name=f"m{i}"))
    recipe = per_block_recipe(tuple(converted), 3)
    mixed = Renderer("toyworld")
    Mixer(mixed, [s.path for s in converted]).apply(recipe)
    reference = Renderer("toyworld")
    reference.load_checkpoint(merge_to_file(recipe, tmp_path / "merged.safetensors", progress=False))
    got, want = live_state(mixed), live_state(reference)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
