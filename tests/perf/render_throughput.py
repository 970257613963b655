"""Does a trial cost what its UNet costs? Renderer images/s against UNet-only images/s, on this device.

For each model scale (random weights with the real shapes built from the shipped configs; no
download): the UNet alone (the same number of CFG-batched calls at the same latent shape, the
irreducible cost) is the reference measured in the same run; against it

  render      Renderer.render_batches: text encoding, scheduler, UNet, VAE decode, PIL conversion
  trial       Benchmark.evaluate_batches without overlap: render + tag + score, one after another
  trial+ovl   the same with decode/convert/tag of batch k overlapped with the UNet of batch k+1

and prints images/s and the ratio to the UNet (target on a GPU: trial+ovl >= 0.95 of the UNet at
SD1.5 and SDXL scale). Rounds alternate between the variants so load from other processes hits
all alike. Then the toy world: seconds per trial (one search-split evaluation of
configs/toyworld.yaml's benchmark, the committed zoo when built) with today's defaults on this
device against the un-overlapped path at batch = objective.batch_size, and with `render.compile`.

    python tests/perf/render_throughput.py                      # GPU: SD1.5 512^2 b8, SDXL 1024^2 b4, 20 steps
    python tests/perf/render_throughput.py --threads 2 --size 128 --steps 2 --batch 2 --prompts 4
        (a CPU run in a few minutes: SD1.5 only unless --sdxl, which needs ~16 GB of RAM in fp32)
    options: --scales sd15,sdxl,toy  --tagger ViT-B-32  --rounds 2  --compile auto  --skip-toy-trial
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SCALES = {"sd15": ("sd1", 512, 8), "sdxl": ("sdxl", 1024, 4), "toy": ("toyworld", 32, 64)}


def build(family_dir: str, device: torch.device, dtype: torch.dtype):
    from benchmark import Renderer

    torch.manual_seed(0)  # random weights from diffusers' own initialisation: the real shapes and cost
    return Renderer(family_dir, device=device, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def unet_only(renderer, n_images: int, batch: int, size: int, steps: int, cfg: float) -> float:
    """Seconds for the UNet calls a render of n_images makes: steps x ceil(n/batch) calls at 2*batch (CFG)."""
    dev, dt = renderer.device, renderer.dtype
    call = renderer.pipeline.unet  # the compiled wrapper when render.compile is on
    c = renderer.configs["unet"]
    lat = size // renderer.pipeline.vae_scale_factor
    mult = 2 if cfg > 1 else 1
    total = 0.0
    for i in range(0, n_images, batch):
        b = min(batch, n_images - i) * mult
        x = torch.randn(b, c["in_channels"], lat, lat, device=dev, dtype=dt)
        ctx = torch.randn(b, 77, c["cross_attention_dim"], device=dev, dtype=dt)
        extra = {}
        if renderer.family == "sdxl":
            te2 = renderer.configs["text_encoder_2"]["projection_dim"]
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(b, te2, device=dev, dtype=dt),
                                           "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * b,
                                                                    device=dev, dtype=dt)}}
        sync(dev)
        t0 = time.perf_counter()
        for t in range(steps):
            call(x, torch.tensor(999 - t * (1000 // max(steps, 1)), device=dev), ctx, **extra)
        sync(dev)
        total += time.perf_counter() - t0
    return total


def make_tagger(name: str, device: torch.device, vocab_name: str):
    from benchmark.clip_tagger import ClipTagger

    if vocab_name == "toyworld":
        from benchmark.toyworld import tagger as toy_tagger

        return ClipTagger(toy_tagger.register(), None, device=str(device), templates=toy_tagger.TEMPLATES)
    return ClipTagger(name, None, device=str(device))  # random weights: the architecture's cost


def scale_run(args, key: str, device: torch.device, dtype: torch.dtype) -> None:
    from benchmark import Benchmark, RenderSettings, load_vocabulary, make_prompt_set

    family, size, batch = SCALES[key]
    size = args.size or size
    batch = args.batch or batch
    if key == "toy":  # the toy world's native size; its search batch on a CPU, the whole split on a GPU
        size, batch = 32, args.batch or (64 if device.type == "cuda" else 8)
    n = args.prompts or 2 * batch
    t0 = time.perf_counter()
    renderer = build(family, device, dtype)
    if args.compile != "off":
        renderer.compile(args.compile)
    vocab_name = "toyworld" if key == "toy" else "danbooru"
    vocab = load_vocabulary(vocab_name)
    tagger = make_tagger(args.tagger, device, vocab_name)
    ps = make_prompt_set(vocab, n, 3, seed=0, holdout=1)
    settings = RenderSettings(steps=args.steps, cfg=7.0, scheduler="ddim", width=size, height=size)
    prompts = ps.prompts("search")
    benches = {False: Benchmark(ps, "search", tagger, settings, vocabulary=vocab, batch_size=batch, overlap=False),
               True: Benchmark(ps, "search", tagger, settings, vocabulary=vocab, batch_size=batch, overlap=True)}

    def render():
        for _ in renderer.render_batches(prompts, settings, batch):
            pass

    def trial(overlap: bool):
        def go():
            for _ in benches[overlap].evaluate_batches(renderer):
                pass
        return go

    variants = {"unet": lambda: unet_only(renderer, n, batch, size, args.steps, settings.cfg),
                "render": render, "trial": trial(False), "trial+ovl": trial(True)}
    build_s = time.perf_counter() - t0
    for fn in variants.values():  # warm-up (allocator, cuDNN algorithm choice, compilation)
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            t = time.perf_counter()
            out = variants[name]()
            sync(device)
            times[name].append(out if name == "unet" else time.perf_counter() - t)
    ref = statistics.median(times["unet"])
    print(f"\n{key}: {family} {size}x{size}, batch {batch}, {n} images, DDIM {args.steps} steps, CFG 7, {dtype}, "
          f"{device}, compile {renderer.compile_mode}, tagger {type(tagger).__name__} "
          f"{getattr(tagger, 'name', '')} ({args.tagger if key != 'toy' else 'toy CLIP'}), "
          f"{args.rounds} rounds, build {build_s:.0f} s")
    for name in names:
        med = statistics.median(times[name])
        print(f"  {name:<10} {n / med:8.3f} images/s   ({med:7.3f} s)   ratio to UNet {ref / med:5.3f}")
    variants.clear()  # drop the closures (and so the models) before the next scale is built


def toy_trial(args, device: torch.device) -> None:
    """Seconds per trial on the toy world with configs/toyworld.yaml's benchmark (search split)."""
    from merge_core import Recipe, Source
    from search.config import load_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import build_prompt_set, resolve_model_path
    from search.tasks import EvalTask

    cfg = load_config(ROOT / "configs" / "toyworld.yaml",
                      overrides={"objective.n": args.toy_prompts} if args.toy_prompts else None)
    o = cfg.objective
    paths = [resolve_model_path(cfg, m.path) for m in cfg.ordered_models]
    sources = [Source.from_path(p) for p in paths]
    k = len(sources) - 1  # the uniform affine merge: every model 1/(k+1)
    recipe_json = Recipe.uniform("sd1", "affine", sources, (1 / (k + 1),) * k).model_dump_json()
    variants = {
        "before (no overlap, batch = objective.batch_size, PIL tagging)": {"overlap": "off", "batch": o.batch_size,
                                                                           "pil": True},
        f"after (defaults on {device.type}: overlap auto, batch auto)": {},
        "overlap on, batch auto": {"overlap": "on"},
    }
    if args.whole_split:
        variants["overlap on, whole split per call"] = {"overlap": "on", "batch": 64}
    if args.compile != "off":
        variants[f"compile {args.compile}"] = {"compile": args.compile}
    evaluators = {}
    for label, over in variants.items():
        render = {**o.render.model_dump(), **{k: v for k, v in over.items() if k != "pil"}}
        ev = BenchmarkEvaluator(renderer=cfg.renderer or "toyworld", sources=[str(p) for p in paths],
                                prompt_set=build_prompt_set(cfg).model_dump_json(), tagger=o.tagger,
                                tagger_options=dict(o.tagger_options), render=render, batch_size=o.batch_size,
                                device=str(device))
        if over.get("pil"):  # the PIL path every tagger had before
            for b in ev.benchmarks.values():
                b.tagger = _PilOnly(ev.tagger)
        evaluators[label] = ev
    task = EvalTask(task_id=0, trial_number=0, split="search", recipe=recipe_json)
    for ev in evaluators.values():
        ev.evaluate(task)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in evaluators}
    cpu: dict[str, list[float]] = {k: [] for k in evaluators}
    scores: dict[str, float] = {}
    names = list(evaluators)
    n = len(build_prompt_set(cfg).prompts("search"))
    print(f"\ntoy-world trial ({n} prompts, {o.render.steps} steps, score step {o.batch_size}, {device}, "
          f"{torch.get_num_threads()} thread(s), median of {args.trial_rounds} interleaved rounds):", flush=True)
    for r in range(args.trial_rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, c = time.perf_counter(), time.process_time()
            res = evaluators[name].evaluate(task)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            scores[name] = res.value
            print(f"    round {r}: {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU", flush=True)
    ref, ref_cpu = statistics.median(times[names[0]]), statistics.median(cpu[names[0]])
    for name in names:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        ev = evaluators[name]
        print(f"  {name:<62} {med:6.2f} s/trial  x{ref / med:5.2f}  CPU {med_cpu:6.2f} s  x{ref_cpu / med_cpu:5.2f}"
              f"  (render batch {ev.render_batch}, "
              f"compile {ev.renderer.compile_mode}; score {scores[name]:.4f})")


class _PilOnly:
    """A tagger seen through its PIL `tag` only (no tensor path): today's path before this change."""

    def __init__(self, tagger) -> None:
        self._t = tagger
        self.name = tagger.name

    def tag(self, images, vocabulary):
        return self._t.tag(images, vocabulary)

    def __getattr__(self, item):
        if item == "tag_tensors":
            raise AttributeError(item)
        return getattr(self._t, item)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scales", default=None, help="comma list of sd15, sdxl, toy (default: all on CUDA, "
                                                   "sd15,toy on CPU)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default: the family's native)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=None, help="images per pipeline call (default 8 SD1.5, 4 SDXL)")
    ap.add_argument("--prompts", type=int, default=None, help="images per measurement (default 2 batches)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trial-rounds", type=int, default=3)
    ap.add_argument("--tagger", default=None, help="open_clip architecture for SD scales (default ViT-L-14 on "
                                                   "CUDA, ViT-B-32 on CPU)")
    ap.add_argument("--compile", default="off", help="render.compile for the scale runs and one toy variant")
    ap.add_argument("--sdxl", action="store_true", help="include SDXL on CPU")
    ap.add_argument("--skip-toy-trial", action="store_true")
    ap.add_argument("--toy-prompts", type=int, default=None, help="toy trial: prompts per split (default: the config's)")
    ap.add_argument("--whole-split", action="store_true", help="toy trial: also time one pipeline call per split")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    args.tagger = args.tagger or ("ViT-L-14" if device.type == "cuda" else "ViT-B-32")
    scales = [s for s in args.scales.split(",") if s not in ("", "none")] if args.scales is not None else (
        ["sd15", "sdxl", "toy"] if device.type == "cuda" or args.sdxl else ["sd15", "toy"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"device: {name}; torch {torch.__version__}")
    for key in scales:
        if key not in SCALES:
            ap.error(f"unknown scale {key!r}; choose from {', '.join(SCALES)}")
        scale_run(args, key, device, dtype)
    if not args.skip_toy_trial:
        toy_trial(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
