import pytest
from sd_keysets import inference_keys, tiny_state_dict

from merge_core import CheckpointError, Family, detect_family, open_checkpoint, save_safetensors


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_real_key_sets_are_recognised(family):
    keys = inference_keys(family)
    assert detect_family(keys, keys.__getitem__) == Family(family)


def test_unet_only_files_use_the_context_width():
    for family in ("sd1", "sd2"):
        keys = {k: s for k, s in inference_keys(family).items() if k.startswith("model.diffusion_model.")}
        assert detect_family(keys, keys.__getitem__) == Family(family)


def test_tiny_sd1_layout_is_sd1(tmp_path):
    # the toy world: SD1 key names, shapes far from the real ones
    p = tmp_path / "toy.safetensors"
    save_safetensors(tiny_state_dict("sd1", max_dim=3), p)
    assert open_checkpoint(p).family == Family.SD1


def test_unrelated_tensors_are_not_a_family(tmp_path):
    import torch

    p = tmp_path / "lora.safetensors"
    save_safetensors({"lora_unet_down.weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match=r"lora\.safetensors: is a LoRA .*`mergesearch lora apply`"):
        _ = open_checkpoint(p).family
    p = tmp_path / "other.safetensors"
    save_safetensors({"weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="other.safetensors: not an SD1, SD2, SDXL or SDXL-refiner"):
        _ = open_checkpoint(p).family


@pytest.mark.parametrize("prefix", ["first_stage_model.", ""])
def test_a_vae_file_given_as_a_model_is_named(tmp_path, prefix):
    import torch

    p = tmp_path / "vae.safetensors"
    save_safetensors({f"{prefix}encoder.conv_in.weight": torch.zeros(2), f"{prefix}decoder.conv_out.bias": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: holds only a VAE .* `merge --vae`"):
        _ = open_checkpoint(p).family


def test_toy_world_checkpoints_are_sd1_with_every_block(tmp_path):
    toyworld = pytest.importorskip("benchmark.toyworld.checkpoint_io")
    from merge_core import layout_for

    ckpt = open_checkpoint(toyworld.random_checkpoint(tmp_path / "toy.safetensors", seed=0))
    assert ckpt.family == Family.SD1
    layout = layout_for(ckpt.family)
    assert layout.unknown_keys(ckpt.keys()) == []
    assert {layout.block_of(k) for k in ckpt.keys()} - {None} == set(layout.weight_ids)
