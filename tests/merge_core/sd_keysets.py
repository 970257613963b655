"""Real key sets (names, shapes, dtypes) of SD1.5, SD2.1 and SDXL checkpoints, and tiny checkpoints built from them."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent.parent / "data"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}


@cache
def real_keys(family: str) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    """key -> (shape, dtype name, optional) of a real single-file checkpoint of ``family``."""
    with gzip.open(DATA / f"keys_{family}.json.gz", "rt") as f:
        keys = json.load(f)["keys"]
    return {k: (tuple(s), d, o) for k, (s, d, o) in keys.items()}


def inference_keys(family: str) -> dict[str, tuple[int, ...]]:
    """The keys of a pruned release file: no EMA copies, no optional extras except position ids."""
    return {
        k: s
        for k, (s, _d, optional) in real_keys(family).items()
        if not k.startswith("model_ema.") and (not optional or k.endswith("position_ids"))
    }


def tiny_state_dict(
    family: str = "sd1", *, seed: int = 0, max_dim: int = 6, dtype=torch.float16
) -> dict[str, torch.Tensor]:
    """Random tensors under the real key names, each dimension capped at ``max_dim``."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in inference_keys(family).items():
        small = tuple(min(s, max_dim) for s in shape)
        if key.endswith("position_ids"):
            out[key] = torch.arange(small[-1]).reshape(small)
        else:
            out[key] = torch.randn(small, generator=g).to(dtype)
    return out


# -- UNet key sets from an ldm UNet config (openaimodel.UNetModel's module tree, written out) ----------


def _resblock(p: str, cin: int, cout: int, emb: int) -> dict[str, tuple[int, ...]]:
    k = {
        f"{p}.in_layers.0.weight": (cin,), f"{p}.in_layers.0.bias": (cin,),
        f"{p}.in_layers.2.weight": (cout, cin, 3, 3), f"{p}.in_layers.2.bias": (cout,),
        f"{p}.emb_layers.1.weight": (cout, emb), f"{p}.emb_layers.1.bias": (cout,),
        f"{p}.out_layers.0.weight": (cout,), f"{p}.out_layers.0.bias": (cout,),
        f"{p}.out_layers.3.weight": (cout, cout, 3, 3), f"{p}.out_layers.3.bias": (cout,),
    }
    if cin != cout:
        k |= {f"{p}.skip_connection.weight": (cout, cin, 1, 1), f"{p}.skip_connection.bias": (cout,)}
    return k


def _transformer(p: str, ch: int, depth: int, ctx: int, linear: bool) -> dict[str, tuple[int, ...]]:
    proj = (ch, ch) if linear else (ch, ch, 1, 1)
    k = {f"{p}.norm.weight": (ch,), f"{p}.norm.bias": (ch,), f"{p}.proj_in.weight": proj, f"{p}.proj_in.bias": (ch,)}
    for d in range(depth):
        b = f"{p}.transformer_blocks.{d}"
        for a, kv in (("attn1", ch), ("attn2", ctx)):
            k |= {f"{b}.{a}.to_q.weight": (ch, ch), f"{b}.{a}.to_k.weight": (ch, kv), f"{b}.{a}.to_v.weight": (ch, kv),
                  f"{b}.{a}.to_out.0.weight": (ch, ch), f"{b}.{a}.to_out.0.bias": (ch,)}
        k |= {f"{b}.ff.net.0.proj.weight": (8 * ch, ch), f"{b}.ff.net.0.proj.bias": (8 * ch,),
              f"{b}.ff.net.2.weight": (ch, 4 * ch), f"{b}.ff.net.2.bias": (ch,)}
        for n in (1, 2, 3):
            k |= {f"{b}.norm{n}.weight": (ch,), f"{b}.norm{n}.bias": (ch,)}
    return k | {f"{p}.proj_out.weight": proj, f"{p}.proj_out.bias": (ch,)}


def ldm_unet_keys(
    *, channels: int, mult: tuple[int, ...], depth: tuple[int, ...], mid_depth: int, context: int,
    linear: bool, adm: int | None = None, in_channels: int = 4, num_res: int = 2,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an ldm/sgm UNet (``model.diffusion_model.*``); ``depth[level]`` = 0: no attention there."""
    u = "model.diffusion_model."
    emb = 4 * channels
    k = {f"{u}time_embed.0.weight": (emb, channels), f"{u}time_embed.0.bias": (emb,),
         f"{u}time_embed.2.weight": (emb, emb), f"{u}time_embed.2.bias": (emb,)}
    if adm:
        k |= {f"{u}label_emb.0.0.weight": (emb, adm), f"{u}label_emb.0.0.bias": (emb,),
              f"{u}label_emb.0.2.weight": (emb, emb), f"{u}label_emb.0.2.bias": (emb,)}
    k |= {f"{u}input_blocks.0.0.weight": (channels, in_channels, 3, 3), f"{u}input_blocks.0.0.bias": (channels,)}
    ch, skips, i = channels, [channels], 1
    for level, m in enumerate(mult):
        for _ in range(num_res):
            k |= _resblock(f"{u}input_blocks.{i}.0", ch, m * channels, emb)
            ch = m * channels
            if depth[level]:
                k |= _transformer(f"{u}input_blocks.{i}.1", ch, depth[level], context, linear)
            skips.append(ch)
            i += 1
        if level != len(mult) - 1:
            k |= {f"{u}input_blocks.{i}.0.op.weight": (ch, ch, 3, 3), f"{u}input_blocks.{i}.0.op.bias": (ch,)}
            skips.append(ch)
            i += 1
    k |= _resblock(f"{u}middle_block.0", ch, ch, emb)
    k |= _transformer(f"{u}middle_block.1", ch, mid_depth, context, linear)
    k |= _resblock(f"{u}middle_block.2", ch, ch, emb)
    o = 0
    for level, m in reversed(list(enumerate(mult))):
        for r in range(num_res + 1):
            k |= _resblock(f"{u}output_blocks.{o}.0", ch + skips.pop(), m * channels, emb)
            ch, sub = m * channels, 1
            if depth[level]:
                k |= _transformer(f"{u}output_blocks.{o}.1", ch, depth[level], context, linear)
                sub = 2
            if level and r == num_res:
                k |= {f"{u}output_blocks.{o}.{sub}.conv.weight": (ch, ch, 3, 3),
                      f"{u}output_blocks.{o}.{sub}.conv.bias": (ch,)}
            o += 1
    return k | {f"{u}out.0.weight": (channels,), f"{u}out.0.bias": (channels,),
                f"{u}out.2.weight": (4, channels, 3, 3), f"{u}out.2.bias": (4,)}


# SGM's refiner config (sd_xl_refiner.yaml): model_channels 384, channel_mult [1, 2, 4, 4], attention at
# the two middle levels with transformer depth 4, context 1280 (OpenCLIP-bigG), adm_in_channels 2560.
REFINER_UNET = dict(channels=384, mult=(1, 2, 4, 4), depth=(0, 4, 4, 0), mid_depth=4, context=1280, linear=True,
                    adm=2560)
SDXL_UNET = dict(channels=320, mult=(1, 2, 4), depth=(0, 2, 10), mid_depth=10, context=2048, linear=True, adm=2816)
SD1_UNET = dict(channels=320, mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), mid_depth=1, context=768, linear=False)


def refiner_keys() -> dict[str, tuple[int, ...]]:
    """Key -> shape of an SDXL refiner single file: its UNet, OpenCLIP-bigG at embedders.0, the SDXL VAE."""
    xl = inference_keys("sdxl")
    keys = ldm_unet_keys(**REFINER_UNET)
    te = "conditioner.embedders.1.model."
    keys |= {"conditioner.embedders.0.model." + k[len(te):]: s for k, s in xl.items() if k.startswith(te)}
    keys |= {k: s for k, s in xl.items() if k.startswith("first_stage_model.")}
    return keys


def keyset(family: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a pruned single file of ``family`` (sd1, sd2, sdxl, sdxl-refiner)."""
    return refiner_keys() if family == "sdxl-refiner" else inference_keys(family)


def tiny_checkpoint(
    family: str = "sd1", *, seed: int = 0, max_dim: int = 3, dtype=torch.float16,
    in_channels: int | None = None, parts: tuple[str, ...] = ("unet", "te", "vae"), dtypes=None,
) -> dict[str, torch.Tensor]:
    """Random tensors under real key names of any family, each dimension capped at ``max_dim``.

    ``in_channels`` widens the UNet input conv (9 inpainting, 8 instruct-pix2pix: kept uncapped so the
    channel split is real); ``parts`` keeps only those components; ``dtypes(key) -> dtype`` overrides.
    """
    g = torch.Generator().manual_seed(seed)
    prefixes = {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.",),
                "te": ("cond_stage_model.", "conditioner.")}
    out: dict[str, torch.Tensor] = {}
    for key, shape in keyset(family).items():
        if not any(key.startswith(p) for part in parts for p in prefixes[part]):
            continue
        small = [min(s, max_dim) for s in shape]
        if key == "model.diffusion_model.input_blocks.0.0.weight":
            small[1] = in_channels or 4
        if key.endswith("position_ids"):
            out[key] = torch.arange(small[-1]).reshape(small)
        else:
            want = dtypes(key) if dtypes else dtype
            out[key] = torch.randn(small, generator=g).to(want)
    return out
