import json

import pytest
import torch
from safetensors import safe_open

from benchmark.toyworld import family, random_checkpoint, single_file


@pytest.fixture(scope="module")
def modules():
    torch.set_num_threads(1)
    return family.seeded_init(0)


def test_sd1_key_layout(modules):
    sd = single_file.to_single_file(*modules)
    unet = {k.removeprefix("model.diffusion_model.") for k in sd if k.startswith("model.diffusion_model.")}
    blocks = {".".join(k.split(".")[:2]) for k in unet if k.startswith(("input_blocks", "output_blocks"))}
    assert blocks == {f"input_blocks.{i}" for i in range(12)} | {f"output_blocks.{i}" for i in range(12)}
    # SD1 topology: cross-attention in IN01,02,04,05,07,08 and OUT03..OUT11, none elsewhere.
    attn_in = {int(k.split(".")[1]) for k in unet if k.startswith("input_blocks") and ".attn2." in k}
    attn_out = {int(k.split(".")[1]) for k in unet if k.startswith("output_blocks") and ".attn2." in k}
    assert attn_in == {1, 2, 4, 5, 7, 8} and attn_out == set(range(3, 12))
    for key in ["input_blocks.3.0.op.weight", "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight",
                "middle_block.1.proj_in.weight", "middle_block.2.emb_layers.1.weight", "time_embed.0.weight",
                "out.2.bias", "input_blocks.7.0.skip_connection.weight"]:
        assert key in unet, key
    assert sd["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # SD1 stores these as 1x1 convs
    assert "first_stage_model.encoder.down.0.downsample.conv.weight" in sd
    assert sd["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."))
               for k in sd)


def test_round_trip_through_diffusers_loader_is_exact(modules):
    sd = single_file.to_single_file(*modules)
    fresh = family.seeded_init(1)
    single_file.from_single_file(sd, *fresh)
    for original, loaded in zip(modules, fresh, strict=True):
        want, got = original.state_dict(), loaded.state_dict()
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(want[k], got[k]), k


def test_random_checkpoint_is_seeded_fp16_and_atomic(tmp_path):
    a = random_checkpoint(tmp_path / "a.safetensors", seed=3)
    b = random_checkpoint(tmp_path / "b.safetensors", seed=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]  # no temp files left
    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        assert fa.metadata()["seed"] == "3"
        key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        assert fa.get_tensor(key).dtype == torch.float16
        assert fa.get_tensor(key).shape[-1] == json.loads((family.CONFIG_DIR / "unet" / "config.json").read_text())[
            "cross_attention_dim"]
        assert all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_diffusers_from_single_file_with_the_shipped_config_gives_back_the_modules(tmp_path, modules):
    from diffusers import StableDiffusionPipeline

    path = random_checkpoint(tmp_path / "r.safetensors", seed=0, dtype=torch.float32)
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(family.CONFIG_DIR), local_files_only=True, safety_checker=None,
        requires_safety_checker=False, torch_dtype=torch.float32)
    for original, name in zip(modules, ("unet", "vae", "text_encoder"), strict=True):
        want, got = original.state_dict(), getattr(pipe, name).state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
