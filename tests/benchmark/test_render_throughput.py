"""Throughput features keep results identical: split denoise/decode, overlap, tensor tagging, compile fallback."""

from __future__ import annotations

import json
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from bench_tiny import random_renderer, random_single_file, tiny_config_dir

from benchmark import Benchmark, Renderer, RenderSettings, get_tagger, load_vocabulary, make_prompt_set
from benchmark.batching import choose_render_batch
from benchmark.errors import BenchmarkError
from benchmark.images import ImageBatch
from benchmark.overlap import overlapped

FAST = RenderSettings(steps=2, cfg=5.0, scheduler="ddim")
PROMPTS = ["1girl, red hair, smile", "no humans, forest, night", "a cat", "blue sky"]
SEEDS = [11, 12, 13, 14]
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _pipeline_pil(renderer: Renderer, texts, seeds, settings) -> np.ndarray:
    """The reference: diffusers' own pipeline call with its own decode and PIL post-processing."""
    renderer._use_scheduler(settings)
    with torch.inference_mode():
        images = renderer.pipeline(**renderer.call_kwargs(texts, seeds, settings)).images
    return np.stack([np.asarray(im) for im in images])


def _arrays(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: tiny_config_dir(f, root) for f in ("sd1", "sdxl")}


@pytest.mark.parametrize("family,dtype", [("sd1", torch.float32), ("sdxl", torch.float32), ("sdxl", torch.float16)])
def test_split_render_equals_the_pipelines_own_images(family, dtype, tiny_dirs):
    """denoise + decode + uint8 reproduce the pipeline's output_type="pil" pixels exactly (the fp16 SDXL
    case runs the VAE upcast branch, and the VAE is back in fp16 afterwards)."""
    torch.manual_seed(0)
    renderer = Renderer(tiny_dirs[family], dtype=dtype)
    renderer.load_state_dict(random_single_file(renderer, seed=1))
    if dtype == torch.float16:
        renderer.pipeline.vae.config.force_upcast = True
    ours = _arrays(renderer.render(PROMPTS[:2], FAST, seeds=SEEDS[:2]))
    ref = _pipeline_pil(renderer, PROMPTS[:2], SEEDS[:2], FAST)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)
    assert ours.std() > 0  # not trivially equal (blank images)
    assert renderer.pipeline.vae.dtype == dtype


def test_overlap_and_render_batch_leave_images_and_scores_unchanged(tmp_path):
    import open_clip

    from benchmark.toyworld import random_checkpoint

    (tmp_path / "thr-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "thr-test-clip.json")
    torch.manual_seed(0)
    tagger = get_tagger("clip", model="thr-test-clip", pretrained=None)
    vocab = load_vocabulary("toyworld")
    ps = make_prompt_set(vocab, 5, 3, seed=0, holdout=2)
    renderer = Renderer("toyworld")
    renderer.load_checkpoint(random_checkpoint(tmp_path / "m.safetensors", seed=3))
    runs = {}
    for overlap in (False, True):
        for render_batch in (2, 3, 5):
            bench = Benchmark(ps, "search", tagger, FAST, batch_size=2, render_batch=render_batch, overlap=overlap)
            steps = list(bench.evaluate_batches(renderer))
            runs[overlap, render_batch] = ([s for s, _ in steps], _arrays(steps[-1][1]), [len(im) for _, im in steps])
    ref_scores, ref_images, ref_lengths = runs[False, 2]
    assert ref_lengths == [2, 4, 5] and [s.n_prompts for s in ref_scores] == [2, 4, 5]
    # Independent reference for the pixels: the pipeline's own PIL output, called batch by batch.
    texts, seeds = [p.text() for p in ps.prompts("search")], [p.seed for p in ps.prompts("search")]
    direct = np.concatenate([_pipeline_pil(renderer, texts[i:i + 2], seeds[i:i + 2], FAST) for i in (0, 2, 4)])
    assert np.array_equal(ref_images, direct)
    for render_batch in (2, 3, 5):
        # Overlap changes nothing at all: same pixels, same scores, same partial steps.
        plain, over = runs[False, render_batch], runs[True, render_batch]
        assert plain[0] == over[0] and np.array_equal(plain[1], over[1]) and plain[2] == over[2] == ref_lengths
        # Another batch size may move a pixel by one level (batched convolutions round differently).
        assert np.abs(plain[1].astype(int) - ref_images.astype(int)).max() <= 1


def test_overlapped_keeps_order_and_runs_one_batch_ahead():
    log: list[str] = []
    lock = threading.Lock()

    def produce():
        for k in range(4):
            with lock:
                log.append(f"produce {k}")
            yield k

    def finish(k):
        time.sleep(0.05)
        with lock:
            log.append(f"finish {k}")
        return k * 10

    assert list(overlapped(produce(), finish, enabled=True)) == [0, 10, 20, 30]
    # Batch 1 is produced before batch 0's finish returns: the two ran at the same time.
    assert log.index("produce 1") < log.index("finish 0")
    log.clear()
    assert list(overlapped(produce(), finish, enabled=False)) == [0, 10, 20, 30]
    assert log.index("produce 1") > log.index("finish 0")


def test_overlapped_close_waits_for_the_batch_in_flight_and_errors_surface_in_order():
    done: list[int] = []

    def finish(k):
        time.sleep(0.1)
        done.append(k)
        return k

    it = overlapped(iter(range(5)), finish, enabled=True)
    assert next(it) == 0
    it.close()  # batch 1 was in flight: closing returns only after it ended
    assert done == [0, 1]

    def failing(k):
        if k == 2:
            raise ValueError("bad batch 2")
        return k

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for y in overlapped(iter(range(5)), failing, enabled=True):
            got.append(y)
    assert got == [0, 1]


def test_tensor_tagging_matches_the_pil_path():
    """Same size as the tagger's input: identical probabilities; larger images: torch's antialiased
    bicubic instead of PIL's, close but not equal."""
    from benchmark.clip_tagger import ClipTagger
    from benchmark.toyworld import tagger as toy_tagger

    torch.manual_seed(0)
    clip = ClipTagger(toy_tagger.register(), None, templates=toy_tagger.TEMPLATES)
    assert clip.accepts_tensors
    vocab = load_vocabulary("toyworld")
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    pil = list(ImageBatch(small))
    assert np.array_equal(clip.tag_tensors(small, vocab), clip.tag(pil, vocab))
    big = torch.nn.functional.interpolate(small.float(), size=(64, 64), mode="nearest").to(torch.uint8)
    a, b = clip.tag_tensors(big, vocab), clip.tag(list(ImageBatch(big)), vocab)
    assert not np.array_equal(a, b) and np.allclose(a, b, atol=0.05)
    with pytest.raises(BenchmarkError, match="uint8"):
        clip.tag_tensors(small.float(), vocab)


def test_compile_falls_back_with_one_warning_when_the_backend_cannot_compile(tiny_dirs):
    from torch._dynamo import register_backend

    @register_backend(name="mergesearch_test_broken")
    def broken(gm, example_inputs):  # a backend that cannot compile anything
        raise RuntimeError("no compiler for this device")

    torch.manual_seed(0)
    renderer = random_renderer(tiny_dirs["sd1"], seed=0)
    renderer.load_state_dict(random_single_file(renderer, seed=1))
    eager = _arrays(renderer.render(PROMPTS[:2], FAST, seeds=SEEDS[:2]))
    assert renderer.compile("mergesearch_test_broken") == "mergesearch_test_broken"
    assert renderer.modules["unet"] is renderer._unet  # the Mixer still sees the live module
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _arrays(renderer.render(PROMPTS[:2], FAST, seeds=SEEDS[:2]))
        second = _arrays(renderer.render(PROMPTS[:2], FAST, seeds=SEEDS[:2]))
    ours = [w for w in caught if "render.compile" in str(w.message)]
    assert len(ours) == 1 and "mergesearch_test_broken" in str(ours[0].message)
    assert renderer.compile_mode == "off"
    assert np.array_equal(first, eager) and np.array_equal(second, eager)
    with pytest.raises(BenchmarkError, match="did you mean 'reduce-overhead'"):
        renderer.compile("reduce-overhed")
    assert renderer.compile("auto") == "off"  # auto compiles on CUDA only


def test_render_batch_for_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_render_batch(device=cpu, height=512, width=512, step=8, n_prompts=64) == 8
    gib = 1 << 30
    # 768 values x 512 x 512 px x 2 bytes = 384 MiB per image; half of 24 GiB / 384 MiB = 32
    assert choose_render_batch(device=cuda, height=512, width=512, step=8, n_prompts=64, free_bytes=24 * gib) == 32
    # SDXL upcast to fp32: 768 x 1024^2 x 4 = 3 GiB per image; half of 20 GiB -> 3 (under one step of 8)
    assert choose_render_batch(device=cuda, height=1024, width=1024, step=8, n_prompts=64, decode_bytes=4,
                               free_bytes=20 * gib) == 3
    # The toy world's 32x32 images: the whole split in one call, capped at 64 prompts
    assert choose_render_batch(device=cuda, height=32, width=32, step=8, n_prompts=48, free_bytes=8 * gib) == 48
    assert choose_render_batch(device=cuda, height=32, width=32, step=8, n_prompts=500, free_bytes=8 * gib) == 64
    assert choose_render_batch(device=cuda, height=512, width=512, step=8, n_prompts=64, free_bytes=10 * gib) == 8
