"""Rebuild every toy-world weight file from nothing, deterministic for a seed.

    python -m benchmark.toyworld.train [--seed S] [--out DIR] [--set KEY=VALUE ...]

Stages (all on CPU, one thread each):
  1. draw a seeded data set of world images;
  2. train the VAE, then rescale its latent so that latents x scaling_factor have unit std;
  3. train the base UNet and text encoder jointly, data-parallel over two processes, on a world
     with gaps (BASE_SUBSET: no cyan or magenta, no small shapes, no grey background); captions
     drop categories at random and are dropped whole 10 % of the time, for classifier-free
     guidance; v-prediction on a zero-terminal-SNR schedule, so the prompt decides the layout;
  4. fine-tune specialists from the base, each on the base's world plus one gap category, with
     captions that always carry that category;
  5. train the CLIP tagger contrastively on world images (in a second process, beside 2);
  6. write fp16 single-file checkpoints (SD1 key layout), the tagger, and a training report.
`--only-tagger` reruns stage 5 alone and `--only-specialists` stage 4 from the stored base (each the same
result as in a full run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from benchmark.toyworld import MODEL_NAMES, TAGGER_FILE, WEIGHTS_DIR, family, world
from benchmark.toyworld.checkpoint_io import modules_to_file, save_single_file


class Specialist(BaseModel):
    """A fine-tune: captions always name `focus` categories; the data keep only `subset` tags."""

    model_config = ConfigDict(frozen=True)
    focus: tuple[str, ...]
    subset: dict[str, tuple[str, ...]] = {}


# The base never sees some tags, the way a base model has gaps: two colours, small shapes and the
# grey background. Each specialist sees the base's world plus every tag of its focus category, so
# it learns one gap and keeps the others. (With the other categories rarely in its captions, at
# other_keep 0.1, each drifted so far that adding the three differences to the base lost colour.)
BASE_SUBSET: dict[str, tuple[str, ...]] = {
    "colour": ("red", "yellow", "green", "blue"),
    "size": ("large",),
    "background": ("white background", "black background"),
}


def _learns(category: str) -> Specialist:
    return Specialist(focus=(category,), subset={c: t for c, t in BASE_SUBSET.items() if c != category})


SPECIALISTS: dict[str, Specialist] = {"colorist": _learns("colour"), "sizer": _learns("size"),
                                      "backdrop": _learns("background")}
assert tuple(SPECIALISTS) == MODEL_NAMES[1:]


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    seed: int = 0
    # One thread: on a shared two-core machine two OpenMP threads per process oversubscribe the
    # cores and run 5-10x slower than one.
    threads: int = 1
    n_images: int = 16384
    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 2e-3
    tagger_steps: int = 1000
    tagger_batch: int = 128
    tagger_lr: float = 2e-3
    base_steps: int = 1000
    batch: int = 64
    base_lr: float = 1e-3
    base_keep: float = 0.9  # chance each category's tag is in a base training caption
    caption_dropout: float = 0.1
    base_processes: int = 2  # data-parallel processes for the base (one per core)
    specialist_steps: int = 300
    specialist_lr: float = 5e-4
    specialist_one_cycle: bool = False  # warm up then anneal to ~0 (else a 20-step warm-up, then constant)
    specialist_trains_te: bool = True  # False: the UNet alone is fine-tuned, the text encoder stays the base's
    # Prior preservation (DreamBooth's prior-preservation loss, Ruiz et al. 2023, arXiv:2208.12242, with the
    # base's own prediction as the prior): on scenes the base already knows, a specialist's target is the
    # frozen base's prediction for the same noised latent and caption, not the data, so it learns its gap
    # and keeps the base elsewhere.
    specialist_prior_preservation: bool = True
    other_keep: float = 0.9  # chance a non-focus tag is in a specialist's caption
    min_snr_gamma: float = 5.0  # epsilon-prediction families only
    high_noise_share: float = 0.5  # share of timesteps drawn leaning to high noise


Log = Callable[[str], None]


def _one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)


# ---------------------------------------------------------------- VAE

def train_vae(images: torch.Tensor, cfg: TrainConfig, log: Log):
    torch.manual_seed(cfg.seed + 1)
    vae = family.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=1e-4)
    sched = _one_cycle(opt, cfg.vae_lr, cfg.vae_steps)
    rng = np.random.default_rng(cfg.seed + 1)
    t0 = time.time()
    for step in range(cfg.vae_steps):
        x = images[rng.choice(len(images), cfg.vae_batch, replace=False)] * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        w = _foreground_weight(x)
        loss = (w * (rec - x) ** 2).mean() + 0.5 * (w * (rec - x).abs()).mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step:4d} loss {loss.item():.4f} mse {F.mse_loss(rec, x).item():.4f} "
                f"shape mse {foreground_mse(rec, x):.4f} "
                f"({time.time() - t0:.0f}s)")
    vae.eval()
    _normalise_latent(vae, images[:1024])
    return vae


def _foreground_weight(x: torch.Tensor, boost: float = 4.0) -> torch.Tensor:
    """Per-pixel loss weight [n, 1, H, W]: 1 on the background, 1 + boost on the shape.

    The shape covers 10-30 % of an image; unweighted, the VAE first learns backgrounds and blurs
    shapes into blobs of the wrong colour for hundreds of steps. The background is each image's
    median colour, so no drawing labels are needed.
    """
    bg = x.flatten(2).median(dim=2).values[:, :, None, None]
    fg = ((x - bg).abs().amax(dim=1, keepdim=True) > 0.2).float()
    return 1 + boost * fg


@torch.no_grad()
def foreground_mse(rec: torch.Tensor, x: torch.Tensor) -> float:
    """Reconstruction MSE over shape pixels only (the part that decides what the image shows)."""
    fg = _foreground_weight(x) > 1
    return float(((rec - x) ** 2).mean(1, keepdim=True)[fg].mean())


@torch.no_grad()
def _normalise_latent(vae, images: torch.Tensor) -> None:
    """Rescale the latent (an exact reparametrisation) so latent x scaling_factor has unit std."""
    mean = vae.encode(images * 2 - 1).latent_dist.mean
    k = 1.0 / (vae.config.scaling_factor * mean.std().item())
    c = vae.config.latent_channels
    q, pq = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] *= k
    q.bias[:c] *= k
    q.bias[c:] += 2 * math.log(k)  # log-variance of the scaled latent
    pq.weight /= k


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        d = vae.encode(images[i:i + batch] * 2 - 1).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Latent means -> images in [0, 1] (the VAE's reconstructions, what generated images look like)."""
    out = [vae.decode(latents[i:i + batch]).sample for i in range(0, len(latents), batch)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------- captions

def tag_table(idx: np.ndarray) -> np.ndarray:
    """[n, n_categories] indices -> [n, n_tags] multi-hot in vocabulary column order."""
    offsets = np.array([cols.start for cols in world.category_slices().values()])
    hot = np.zeros((len(idx), len(world.all_tags())), dtype=np.float32)
    hot[np.arange(len(idx))[:, None], idx + offsets[None, :]] = 1
    return hot


def sample_captions(idx: np.ndarray, rng: np.random.Generator, keep: Mapping[str, float],
                    dropout: float) -> list[str]:
    """Comma-joined tags in random order; each category kept with its probability; some dropped whole."""
    vocab = world.vocabulary()
    cats = list(vocab)
    out = []
    for row in idx:
        if rng.random() < dropout:
            out.append("")
            continue
        order = rng.permutation(len(cats))
        out.append(", ".join(vocab[cats[c]][row[c]] for c in order if rng.random() < keep[cats[c]]))
    return out


# ---------------------------------------------------------------- tagger

def train_tagger(images: torch.Tensor, idx: np.ndarray, cfg: TrainConfig, log: Log):
    """Contrastive image-text training, in two terms averaged:

    - CLIP's batch loss with multi-positive targets: a caption (1 to 5 of an image's tags in a
      template) matches every image in the batch that shows all its tags;
    - the zero-shot form of the same loss: each image against every tag text of a category
      (the tags are the only captions a category has), so the negatives are the hard ones.

    It sees the world as drawn, as a real CLIP sees real images, softened at random by a small
    blur so that the slightly soft images a VAE decodes are in its training distribution.
    (Training on VAE reconstructions instead taught it the VAE's confusions: with an early VAE
    that blurred shapes into blobs, shape accuracy stayed at 0.3-0.75 on real images.)
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from benchmark.toyworld import tagger as tg

    torch.manual_seed(cfg.seed + 2)
    model, _ = tg.create_model()
    tok = tg.get_tokenizer()
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    hot = torch.from_numpy(tag_table(idx))
    tags = world.all_tags()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "logit_scale"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "logit_scale"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.tagger_lr)
    slices = list(world.category_slices().values())
    tag_tokens = tok([tmpl.format(t) for t in tags for tmpl in tg.TEMPLATES])
    sched = _one_cycle(opt, cfg.tagger_lr, cfg.tagger_steps)
    rng = np.random.default_rng(cfg.seed + 2)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    t0 = time.time()
    model.train()
    for step in range(cfg.tagger_steps):
        b = rng.choice(len(images), cfg.tagger_batch, replace=False)
        soften = torch.rand(len(b), 1, 1, 1, generator=g) * (torch.rand(len(b), 1, 1, 1, generator=g) < 0.5)
        x = torch.lerp(images[b], F.avg_pool2d(images[b], 3, 1, 1, count_include_pad=False), soften)
        x = (x + torch.randn(x.shape, generator=g) * 0.03).clamp(0, 1)
        texts, cap_hot = [], torch.zeros(len(b), hot.shape[1])
        for i, j in enumerate(b):
            present = np.flatnonzero(hot[j].numpy())
            k = int(rng.choice([1, 1, 2, 3, len(present)]))
            chosen = rng.permutation(present)[:k]
            cap_hot[i, chosen] = 1
            template = tg.TEMPLATES[int(rng.integers(len(tg.TEMPLATES)))]
            texts.append(template.format(", ".join(tags[c] for c in chosen)))
        img_f = F.normalize(model.encode_image((x - mean) / std), dim=-1)
        txt_f = F.normalize(model.encode_text(tok(texts)), dim=-1)
        scale = model.logit_scale.exp()
        logits = scale * img_f @ txt_f.T
        # pos[i, j]: caption j's tags all appear in image i
        pos = ((hot[b] @ cap_hot.T) == cap_hot.sum(1)[None, :]).float()
        batch_loss = 0.5 * (-(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                            - (pos / pos.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean())
        tag_f = F.normalize(model.encode_text(tag_tokens), dim=-1).view(len(tags), len(tg.TEMPLATES), -1)
        tag_f = F.normalize(tag_f.mean(1), dim=-1)  # the zero-shot tagger's template-averaged tag vectors
        tag_logits = scale * img_f @ tag_f.T
        truth = torch.from_numpy(idx[b])
        zero_shot_loss = sum(F.cross_entropy(tag_logits[:, sl], truth[:, c]) for c, sl in enumerate(slices))
        loss = 0.5 * (batch_loss + zero_shot_loss / len(slices))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == cfg.tagger_steps - 1:
            log(f"tagger step {step:4d} loss {loss.item():.4f} (zero-shot {zero_shot_loss.item() / len(slices):.4f}) "
                f"scale {model.logit_scale.exp().item():.1f} "
                f"({time.time() - t0:.0f}s)")
    model.eval()
    return model


# ---------------------------------------------------------------- diffusion

def train_diffusion(unet, te, lat_mean: torch.Tensor, lat_std: torch.Tensor, idx: np.ndarray, *, steps: int,
                    lr: float, keep: Mapping[str, float], cfg: TrainConfig, seed: int, name: str, log: Log,
                    one_cycle: bool, rank: int = 0, world_size: int = 1, train_te: bool = True,
                    teacher: tuple | None = None, novel: np.ndarray | None = None) -> None:
    """Train UNet and text encoder together on noised latents and sampled captions.

    With `world_size` > 1 this is one of that many data-parallel processes (a torch.distributed
    group must be initialised): every rank draws the same full batch from the same generators and
    trains on its own slice, and the gradients are averaged, so all ranks take identical steps.
    `teacher` = (unet, text encoder) of a frozen model and `novel` = [len(idx)] bool: rows not novel take
    the teacher's prediction as their target (prior preservation).
    """
    from diffusers import DDPMScheduler

    if cfg.batch % world_size:
        raise ValueError(f"batch {cfg.batch} does not split over {world_size} processes")
    mine = slice(rank * cfg.batch // world_size, (rank + 1) * cfg.batch // world_size)

    tok = family.load_tokenizer()
    noise_sched = DDPMScheduler.from_config(family.build_scheduler().config)
    weight = _loss_weight(noise_sched, cfg.min_snr_gamma)
    v_prediction = noise_sched.config.prediction_type == "v_prediction"
    scale = family.build_vae().config.scaling_factor
    params = list(unet.parameters()) + (list(te.parameters()) if train_te else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if one_cycle:
        sched = _one_cycle(opt, lr, steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    unet.train()
    te.train(train_te)
    te.requires_grad_(train_te)
    t0, avg = time.time(), None
    for step in range(steps):
        b = rng.choice(len(idx), cfg.batch, replace=False)
        x0 = (lat_mean[b] + lat_std[b] * torch.randn(lat_mean[b].shape, generator=g)) * scale
        noise = torch.randn(x0.shape, generator=g)
        t = _timesteps(len(b), noise_sched.config.num_train_timesteps, cfg.high_noise_share, g)
        captions = sample_captions(idx[b], rng, keep, cfg.caption_dropout)
        x0, noise, t, captions = x0[mine], noise[mine], t[mine], captions[mine]
        xt = noise_sched.add_noise(x0, noise, t)
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        pred = unet(xt, t, te(ids)[0]).sample
        target = noise_sched.get_velocity(x0, noise, t) if v_prediction else noise
        if teacher is not None:
            keep_prior = torch.from_numpy(~novel[b][mine])
            if keep_prior.any():
                with torch.no_grad():
                    prior = teacher[0](xt[keep_prior], t[keep_prior], teacher[1](ids[keep_prior])[0]).sample
                target = target.clone()
                target[keep_prior] = prior
        loss = ((pred - target) ** 2).mean((1, 2, 3))
        loss = (loss * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world_size > 1:
            _average_gradients(params, world_size)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()  # this rank's share of the batch
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} step {step:4d} loss {avg:.4f} ({time.time() - t0:.0f}s)")
    unet.eval()
    te.eval()


def _average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce every gradient as one flat buffer (one message per step) and divide."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([gr.flatten() for gr in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()


def _loss_weight(noise_sched, gamma: float) -> torch.Tensor:
    """Per-timestep loss weight: 1 for v-prediction, min-SNR-gamma for epsilon prediction.

    Plain v-MSE weighs the x0 error about 1 at high noise, where a toy image's layout is decided;
    epsilon with min-SNR weighs it by the SNR (~0.005 there), and a base trained that way never
    learned position from the prompt: it placed shapes where the starting noise had them.
    """
    if noise_sched.config.prediction_type == "v_prediction":
        return torch.ones(noise_sched.config.num_train_timesteps)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    return snr.clamp(max=gamma) / snr


def _timesteps(n: int, total: int, high_share: float, g: torch.Generator) -> torch.Tensor:
    """Uniform timesteps, except a share drawn as total * sqrt(u), which leans to high noise.

    What a toy image shows (colour, shape, place) is decided in the noisiest steps; leaning the
    training there teaches prompt-following sooner, while the uniform share keeps the rest.
    """
    u = torch.rand(n, generator=g)
    lean = torch.rand(n, generator=g) < high_share
    return (torch.where(lean, u.sqrt(), u) * total).long().clamp(max=total - 1)


def subset_indices(idx: np.ndarray, subset: Mapping[str, tuple[str, ...]]) -> np.ndarray:
    vocab = world.vocabulary()
    mask = np.ones(len(idx), dtype=bool)
    for c, allowed in subset.items():
        col = list(vocab).index(c)
        mask &= np.isin(idx[:, col], [vocab[c].index(t) for t in allowed])
    return idx[mask], np.flatnonzero(mask)


# ---------------------------------------------------------------- driver

def dataset_indices(cfg: TrainConfig) -> np.ndarray:
    """The seeded training scenes as tag indices."""
    return world.sample_indices(cfg.n_images, seed=cfg.seed)


def draw_dataset(cfg: TrainConfig) -> tuple[np.ndarray, torch.Tensor]:
    """The seeded training scenes (tag indices) and their images."""
    idx = dataset_indices(cfg)
    images = torch.cat([world.draw_batch(idx[i:i + 1024], seed=cfg.seed * 1000 + i)
                        for i in range(0, len(idx), 1024)])
    return idx, images


def tagger_stage(cfg: TrainConfig, out: Path, log: Log = print) -> None:
    """Train the tagger on its own data and write it."""
    idx, images = draw_dataset(cfg)
    clip = train_tagger(images, idx, cfg, log)
    tagger_sd = {k: v.detach().to(torch.float16) if v.is_floating_point() else v
                 for k, v in clip.state_dict().items()}
    save_single_file(tagger_sd, out / TAGGER_FILE, {"format": "pt", "toyworld_model": "tagger",
                                                    "seed": str(cfg.seed)})


def vae_stage(cfg: TrainConfig, out: Path, log: Log) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Data and VAE; returns the VAE as stored (fp16-rounded) and the data set's latent means and stds."""
    idx, images = draw_dataset(cfg)
    vae = train_vae(images, cfg, log).to(torch.float16).to(torch.float32)  # as stored
    lat_mean, lat_std = encode(vae, images)
    log(f"vae: latent std x scale {(lat_mean * vae.config.scaling_factor).std().item():.3f}, "
        f"shape mse {foreground_mse(decode(vae, lat_mean[:512]) * 2 - 1, images[:512] * 2 - 1):.4f}")
    return _copy(vae), lat_mean, lat_std


def base_stage(cfg: TrainConfig, out: Path, log: Log, rank: int, rendezvous: str, vae_state: dict,
               lat_mean: torch.Tensor, lat_std: torch.Tensor) -> tuple[dict, dict] | None:
    """Rank `rank` of the base's `cfg.base_processes` data-parallel processes; rank 0 writes the
    base and returns its (unet, text encoder) state dicts as stored, for the specialists."""
    import torch.distributed as dist

    world_size = cfg.base_processes
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(cfg.seed + 3)
        unet, te = family.build_unet(), family.build_text_encoder()
        sub, rows = subset_indices(dataset_indices(cfg), BASE_SUBSET)
        train_diffusion(unet, te, lat_mean[rows], lat_std[rows], sub, steps=cfg.base_steps, lr=cfg.base_lr,
                        keep=dict.fromkeys(world.categories(), cfg.base_keep), cfg=cfg, seed=cfg.seed + 4,
                        name="base", log=log if rank == 0 else (lambda _: None), one_cycle=True, rank=rank,
                        world_size=world_size)
    finally:
        if world_size > 1:
            dist.destroy_process_group()
    if rank:
        return None
    vae = family.build_vae()
    vae.load_state_dict(vae_state)
    modules_to_file(unet, vae, te, out / "base.safetensors", metadata={"seed": str(cfg.seed), "toyworld_model": "base"})
    return _as_stored((unet.state_dict(), te.state_dict()))


def _as_stored(states: tuple[dict, ...]) -> tuple[dict, ...]:
    """State dicts rounded through fp16, as the checkpoint files hold them: specialists are
    fine-tuned from the published base, so `--only-specialists` (from the file) gives the same."""
    return tuple({k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()} for sd in states)


def handoff_from_file(cfg: TrainConfig, out: Path) -> tuple:
    """What the specialists start from, rebuilt from a stored base (for --only-specialists)."""
    from benchmark.toyworld.evaluate import load_pipeline

    path = out / "base.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: --only-specialists needs a trained base; run a full training first")
    pipe = load_pipeline(path)
    idx, images = draw_dataset(cfg)
    lat_mean, lat_std = encode(pipe.vae, images)
    return (_copy(pipe.unet), _copy(pipe.text_encoder)), _copy(pipe.vae), idx, lat_mean, lat_std


def _in_worker(stage: Callable, cfg_json: str, out: str, *args, prefix: str = "") -> tuple[float, object]:
    """Run a stage in a worker process: (seconds it took, what it returned)."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    torch.set_num_threads(cfg.threads)
    t = time.time()
    result = stage(cfg, Path(out), _process_log(prefix), *args)
    return time.time() - t, result


def train(cfg: TrainConfig, out: Path, log: Log = print, *, only_tagger: bool = False,
          only_specialists: bool = False) -> dict[str, float]:
    """Run every stage; with `only_tagger` or `only_specialists`, retrain just those.

    The stages run in two worker processes while this one only waits: the tagger (it depends on
    nothing else) beside the VAE, then the base data-parallel over both processes, then the
    specialists (they depend only on the base) two at a time. Each stage seeds its own generators
    from cfg.seed and runs on cfg.threads threads, so the result does not depend on which process
    ran it.
    """
    import multiprocessing

    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.time()
    if only_tagger:
        tagger_stage(cfg, out, log)
        times["tagger"] = time.time() - t_all
    else:
        cfg_json = cfg.model_dump_json()
        with multiprocessing.get_context("spawn").Pool(max(2, cfg.base_processes)) as pool:
            tagger_job = None
            if only_specialists:
                handoff = handoff_from_file(cfg, out)
            else:
                tagger_job = pool.apply_async(_in_worker, (tagger_stage, cfg_json, str(out)), {"prefix": "[tagger] "})
                times["vae"], (vae_state, lat_mean, lat_std) = pool.apply_async(
                    _in_worker, (vae_stage, cfg_json, str(out))).get()
                t = time.time()
                base = train_base(pool, cfg, out, vae_state, lat_mean, lat_std)
                times["base"] = time.time() - t  # from the VAE's end: includes waiting for the tagger's process
                handoff = (base, vae_state, dataset_indices(cfg), lat_mean, lat_std)
            t = time.time()
            jobs = {name: pool.apply_async(_in_worker, (train_specialist, cfg_json, str(out), name, *handoff))
                    for name in SPECIALISTS}
            times |= {name: job.get()[0] for name, job in jobs.items()}
            times["specialists (wall)"] = time.time() - t
            if tagger_job is not None:
                times["tagger"] = tagger_job.get()[0]
    times["total"] = time.time() - t_all
    report = out / "train_report.json"
    old = json.loads(report.read_text()) if (only_tagger or only_specialists) and report.is_file() else {}
    seconds = {**old.get("seconds", {}), **{k: round(v, 1) for k, v in times.items()}}
    if only_tagger or only_specialists:
        seconds["total"] = old.get("seconds", {}).get("total", seconds["total"])
    report.write_text(json.dumps(
        {"config": cfg.model_dump(), "seconds": seconds,
         "note": f"the tagger trains beside the VAE, the base data-parallel on {cfg.base_processes} processes; "
                 "total is wall time",
         "specialists": {k: v.model_dump() for k, v in SPECIALISTS.items()}}, indent=2) + "\n")
    log("times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return times


def train_base(pool, cfg: TrainConfig, out: Path, vae_state: dict, lat_mean: torch.Tensor,
               lat_std: torch.Tensor) -> tuple[dict, dict]:
    """Train the base on `cfg.base_processes` processes of `pool` (it needs that many workers);
    returns rank 0's (unet, text encoder) state dicts as stored."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ranks = [pool.apply_async(_in_worker, (base_stage, cfg.model_dump_json(), str(out), rank, f"{tmp}/rendezvous",
                                               vae_state, lat_mean, lat_std))
                 for rank in range(cfg.base_processes)]
        return [job.get()[1] for job in ranks][0]


def train_specialist(cfg: TrainConfig, out: Path, log: Log, name: str, base: tuple[dict, dict], vae_state: dict,
                     idx: np.ndarray, lat_mean: torch.Tensor, lat_std: torch.Tensor) -> None:
    """Fine-tune the base on the specialist's subset and captions, and write it."""
    spec = SPECIALISTS[name]
    unet, vae, te = family.build_unet(), family.build_vae(), family.build_text_encoder()
    unet.load_state_dict(base[0])
    te.load_state_dict(base[1])
    vae.load_state_dict(vae_state)
    sub, rows = subset_indices(idx, spec.subset)
    keep = {c: (1.0 if c in spec.focus else cfg.other_keep) for c in world.categories()}
    teacher, novel = None, None
    if cfg.specialist_prior_preservation:
        teacher = family.build_unet(), family.build_text_encoder()
        teacher[0].load_state_dict(base[0])
        teacher[1].load_state_dict(base[1])
        for m in teacher:
            m.eval().requires_grad_(False)
        novel = np.isin(np.arange(len(sub)), subset_indices(sub, {c: BASE_SUBSET[c] for c in spec.focus})[1],
                        invert=True)
    train_diffusion(unet, te, lat_mean[rows], lat_std[rows], sub, steps=cfg.specialist_steps, lr=cfg.specialist_lr,
                    keep=keep, cfg=cfg, seed=cfg.seed + 10 + list(SPECIALISTS).index(name), name=name, log=log,
                    one_cycle=cfg.specialist_one_cycle, train_te=cfg.specialist_trains_te, teacher=teacher,
                    novel=novel)
    modules_to_file(unet, vae, te, out / f"{name}.safetensors",
                    metadata={"seed": str(cfg.seed), "toyworld_model": name, "focus": ",".join(spec.focus)})


def _process_log(prefix: str = "") -> Log:
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {prefix}{msg}", flush=True)
    return log


def _copy(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.toyworld.train", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and batches (default 0)")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"output folder (default {WEIGHTS_DIR})")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--only-tagger", action="store_true", help="retrain only the tagger")
    only.add_argument("--only-specialists", action="store_true",
                      help="retrain only the specialists, from the base already in --out")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override TrainConfig fields, e.g. base_steps=200 (for quick trials)")
    args = p.parse_args(argv)
    try:
        overrides = dict(kv.split("=", 1) for kv in args.set)
        cfg = TrainConfig(seed=args.seed, **overrides)
    except (ValueError, TypeError) as exc:
        print(f"error: bad --set value ({exc}); fields: {', '.join(TrainConfig.model_fields)}", file=sys.stderr)
        return 2

    try:
        train(cfg, args.out, _process_log(), only_tagger=args.only_tagger, only_specialists=args.only_specialists)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
