"""Every family's pipeline from the shipped configs, single-file conversion, determinism, in-memory == file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_tiny import random_renderer, random_single_file, save_checkpoint, tiny_config_dir

from benchmark import BenchmarkError, Renderer, RenderSettings, read_checkpoint
from benchmark.schedulers import SCHEDULERS
from benchmark.single_file import to_single_file

FAST = RenderSettings(steps=2, cfg=5.0)
CHEAP = RenderSettings(steps=2, cfg=1.0)  # cfg <= 1 skips the unconditional pass: half the work
PROMPTS = ["1girl, red hair, smile", "no humans, forest, night"]
SEEDS = [11, 12]

# Keys every real checkpoint of the family holds (names from published SD1.5/SD2.1/SDXL files).
REAL_KEYS = {
    "sd1": ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
            "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_ids"],
    "sd2": ["model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
            "cond_stage_model.model.token_embedding.weight", "cond_stage_model.model.positional_embedding",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
            "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight", "cond_stage_model.model.ln_final.weight"],
    "sdxl": ["model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.output_blocks.2.2.conv.weight",
             "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
             "conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.positional_embedding",
             "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_bias"],
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: tiny_config_dir(f, root) for f in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="module")
def sd1(tiny_dirs):
    """One tiny SD1 renderer and two random single-file weight sets, shared by the module's tests."""
    renderer = random_renderer(tiny_dirs["sd1"], seed=0)
    return renderer, random_single_file(renderer, seed=1), random_single_file(renderer, seed=2)


def _arrays(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_family_pipeline_renders_from_single_file(family, tiny_dirs, tmp_path):
    """Shipped config (narrowed) -> pipeline; a random single-file checkpoint goes through diffusers'
    converters into it and renders; every live parameter holds the checkpoint's value."""
    renderer = random_renderer(tiny_dirs[family], seed=0)
    assert renderer.family == family
    if family == "sdxl":
        assert set(renderer.modules) == {"unet", "text_encoder", "text_encoder_2", "vae"}
    sd = random_single_file(renderer, seed=1)
    for key in REAL_KEYS[family]:
        assert key in sd, key
    path = save_checkpoint(sd, tmp_path / f"{family}.safetensors", dtype=torch.float32)
    renderer.load_checkpoint(path)
    back = to_single_file({n: m.state_dict() for n, m in renderer.modules.items()}, family, renderer.configs)
    for k, v in back.items():
        assert torch.equal(v, sd[k].to(v.dtype)), k
    images = renderer.render(PROMPTS, FAST, seeds=SEEDS)
    arr = _arrays(images)
    assert arr.shape == (2, 64, 64, 3)
    assert arr.std() > 0 and not np.array_equal(arr[0], arr[1])


def test_sd2_drops_the_unused_last_openclip_block(tiny_dirs):
    renderer = random_renderer(tiny_dirs["sd2"], seed=0)
    sd = random_single_file(renderer, seed=1)
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in sd  # 3 blocks in the file
    converted = renderer.convert(sd)
    assert not any(".layers.2." in k for k in converted["text_encoder"])  # diffusers uses 2 (penultimate)


def test_sdxl_matches_diffusers_from_single_file(tiny_dirs, tmp_path):
    """The same file through diffusers' own from_single_file gives the same weights and images."""
    from diffusers import StableDiffusionXLPipeline

    renderer = random_renderer(tiny_dirs["sdxl"], seed=0)
    path = save_checkpoint(random_single_file(renderer, seed=3), tmp_path / "xl.safetensors", torch.float32)
    renderer.load_checkpoint(path)
    ref = StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(tiny_dirs["sdxl"]), local_files_only=True, tokenizer=renderer.pipeline.tokenizer,
        tokenizer_2=renderer.pipeline.tokenizer_2, add_watermarker=False)
    ref.set_progress_bar_config(disable=True)
    for name, module in renderer.modules.items():
        theirs = getattr(ref, name).state_dict()
        for k, v in module.state_dict().items():
            assert torch.equal(v, theirs[k]), f"{name}.{k}"
    settings = RenderSettings(steps=2, scheduler="native")
    ours = _arrays(renderer.render(PROMPTS, settings, seeds=SEEDS))
    ref.scheduler = renderer.pipeline.scheduler
    theirs = _arrays(ref(**renderer.call_kwargs(PROMPTS, SEEDS, settings)).images)
    # Weights are equal bit for bit (above). Since diffusers 0.42.1 the SDXL pipeline's float
    # rounding differs in a few pixels by one level (4e-5 of them), so images match to 1/255.
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_toyworld_matches_diffusers_from_single_file(tmp_path):
    from diffusers import StableDiffusionPipeline

    from benchmark.toyworld import random_checkpoint

    path = random_checkpoint(tmp_path / "toy.safetensors", seed=5)
    renderer = Renderer("toyworld")
    renderer.load_checkpoint(path)
    ref = StableDiffusionPipeline.from_single_file(str(path), config=str(renderer.config_dir), local_files_only=True,
                                                   safety_checker=None, torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    settings = RenderSettings(steps=3, scheduler="native")
    prompts = ["red circle, small", "blue square, large, top left"]
    ours = _arrays(renderer.render(prompts, settings, seeds=SEEDS))
    theirs = _arrays(ref(**renderer.call_kwargs(prompts, SEEDS, settings)).images)
    assert ours.shape == (2, 32, 32, 3) and ours.std() > 0
    assert np.array_equal(ours, theirs)


def test_deterministic_and_in_memory_equals_file(sd1, tiny_dirs, tmp_path):
    """Same weights + prompts + seeds -> identical images twice; weights written into a live pipeline that
    held another model render exactly what a fresh pipeline loading the file from disk renders."""
    a, sd_x, sd_y = sd1
    path_y = save_checkpoint(sd_y, tmp_path / "y.safetensors", dtype=torch.float16)
    settings = RenderSettings(steps=2, scheduler="dpmpp-2m-karras")
    a.load_state_dict(sd_x)
    img_x = _arrays(a.render(PROMPTS, settings, seeds=SEEDS))
    a.load_state_dict({k: v.to(torch.float16) for k, v in sd_y.items()})  # in memory, in place
    img_y_mem = _arrays(a.render(PROMPTS, settings, seeds=SEEDS))
    assert not np.array_equal(img_x, img_y_mem)
    b = random_renderer(tiny_dirs["sd1"], seed=9)
    b.load_state_dict(read_checkpoint(path_y), source=str(path_y))
    img_y_file = _arrays(b.render(PROMPTS, settings, seeds=SEEDS))
    assert np.array_equal(img_y_mem, img_y_file)
    assert np.array_equal(img_y_file, _arrays(b.render(PROMPTS, settings, seeds=SEEDS)))


def test_seed_not_batch_decides_the_image(sd1):
    r, sd_x, _ = sd1
    r.load_state_dict(sd_x)
    together = _arrays(r.render(PROMPTS, CHEAP, seeds=SEEDS))
    alone = _arrays(r.render(PROMPTS[1:], CHEAP, seeds=SEEDS[1:]))
    assert np.abs(together[1].astype(int) - alone[0]).max() <= 2  # batched maths may round differently
    reseeded = _arrays(r.render(PROMPTS[1:], CHEAP, seeds=[99]))
    assert np.abs(together[1].astype(int) - reseeded[0]).max() > 10


@pytest.mark.parametrize("scheduler", ["euler-a", "dpmpp-2m-karras", "ddim", "euler", "unipc"])
def test_schedulers(scheduler, sd1):
    r = sd1[0]
    images = r.render(PROMPTS[:1], RenderSettings(steps=2, cfg=1.0, scheduler=scheduler, clip_skip=2), seeds=SEEDS[:1])
    assert type(r.pipeline.scheduler).__name__ == SCHEDULERS[scheduler][0]
    assert images[0].size == (64, 64)


def test_wrong_family_checkpoint_is_refused(sd1, tiny_dirs):
    r, sd_x, _ = sd1
    xl = random_renderer(tiny_dirs["sdxl"], seed=0)
    with pytest.raises(BenchmarkError, match=r"not sd1: key 'conditioner\.embedders\..*sdxl layout"):
        r.load_state_dict(random_single_file(xl, seed=1))
    with pytest.raises(BenchmarkError, match=r"not sdxl: key 'cond_stage_model\.transformer\..*sd1 layout"):
        xl.load_state_dict(sd_x)


def test_wrong_size_checkpoint_names_the_first_mismatching_key(sd1):
    """The toy-world renderer (SD1 layout, other widths) refuses a tiny SD1 file, naming the key."""
    toy = Renderer("toyworld")
    sd = sd1[1]
    before = {k: v.clone() for k, v in toy.modules["unet"].state_dict().items()}
    with pytest.raises(BenchmarkError, match=r"first (mismatching|missing|unexpected) key 'model\.diffusion_model\."):
        toy.load_state_dict(sd, source="tiny-sd1.safetensors")
    after = toy.modules["unet"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-written


def test_missing_key_and_bad_inputs(sd1, tmp_path):
    r = sd1[0]
    sd = dict(sd1[1])
    del sd["model.diffusion_model.middle_block.1.proj_in.weight"]
    with pytest.raises(BenchmarkError, match=r"first missing key 'model\.diffusion_model\.middle_block\.1\.proj_in\.weight'"):
        r.load_state_dict(sd)
    with pytest.raises(BenchmarkError, match="no such checkpoint file"):
        r.load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(BenchmarkError, match="no such folder"):
        Renderer("sd9")
    with pytest.raises(BenchmarkError, match="plain-text prompts need one seed each"):
        r.render(["a"], FAST)
    with pytest.raises(ValueError, match="unknown scheduler"):  # pydantic wraps it in a ValidationError
        RenderSettings(scheduler="lms-magic")


def test_guess_config_from_checkpoint(sd1, tiny_dirs, tmp_path):
    from benchmark.renderer import guess_config
    from benchmark.toyworld import random_checkpoint

    assert guess_config(random_checkpoint(tmp_path / "toy.safetensors", seed=0)) == "toyworld"  # SD1 keys, 64 wide
    assert guess_config(save_checkpoint(sd1[1], tmp_path / "sd1.safetensors")) == "sd1"
    xl = random_renderer(tiny_dirs["sdxl"], seed=0)
    assert guess_config(save_checkpoint(random_single_file(xl, seed=1), tmp_path / "xl.safetensors")) == "sdxl"


def test_prefix_and_negative_prompt_reach_the_pipeline(sd1):
    from benchmark import Prompt

    r, sd_x, _ = sd1
    r.load_state_dict(sd_x)
    p = [Prompt(tags=("red hair",), seed=3)]
    plain = _arrays(r.render(p, FAST))
    assert not np.array_equal(plain, _arrays(r.render(p, FAST, negative="lowres, blurry")))
    assert not np.array_equal(plain, _arrays(r.render(p, FAST, prefix="1girl")))
    assert np.array_equal(plain, _arrays(r.render(["red hair"], FAST, seeds=[3])))
