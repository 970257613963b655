"""A diffusers pipeline built once from config files, fed weights from memory.

The search writes thousands of candidate weight sets into the same pipeline, so the renderer
never rebuilds modules and never touches disk after construction: `load_state_dict` converts
single-file keys to diffusers names and copies into the live parameters in place, and the
Mixer may write into `.modules` directly. Each prompt gets its own torch.Generator seeded
from the prompt set, so an image depends on its prompt and seed only, not on its batch.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmark.compile import COMPILE_OFF, compile_module, resolve_compile
from benchmark.errors import BenchmarkError
from benchmark.images import ImageBatch, to_uint8
from benchmark.overlap import overlapped
from benchmark.prompts import Prompt
from benchmark.schedulers import make_scheduler
from benchmark.settings import RenderSettings
from benchmark.single_file import TE_PREFIXES, normalise_keys, single_file_name, to_diffusers

FAMILY_DIR = Path(__file__).resolve().parent.parent / "configs" / "families"
_JSON = {"unet": "unet/config.json", "vae": "vae/config.json", "text_encoder": "text_encoder/config.json",
         "text_encoder_2": "text_encoder_2/config.json", "scheduler": "scheduler/scheduler_config.json"}


def resolve_config(config: str | os.PathLike) -> Path:
    """A config folder: a path, a shipped family name (`sd1`, `sdxl`, `toyworld`...) or a hub id."""
    p = Path(config)
    if p.is_dir():
        return p
    if (FAMILY_DIR / str(config)).is_dir():
        return FAMILY_DIR / str(config)
    if isinstance(config, str) and config.count("/") == 1 and not p.exists():
        # A hub id: fetch only the small config and tokenizer files, never weights.
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(config, allow_patterns=["*.json", "*.txt"]))
        except Exception as exc:  # offline, unknown repo, no access
            raise BenchmarkError(
                f"config {config!r}: not a folder and not reachable as a hub id ({type(exc).__name__}); "
                f"use a folder in diffusers layout or one of {shipped_families()}"
            ) from None
    raise BenchmarkError(f"config {config!r}: no such folder; use one of {shipped_families()} or a diffusers folder")


def shipped_families() -> list[str]:
    return sorted(p.name for p in FAMILY_DIR.iterdir() if (p / "model_index.json").exists())


def load_configs(folder: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict]:
    """The per-module JSON configs of a diffusers folder, with optional overrides (tests shrink models)."""
    out: dict[str, dict] = {}
    for name, rel in _JSON.items():
        f = folder / rel
        if f.exists():
            out[name] = json.loads(f.read_text())
        elif name not in ("text_encoder_2",):
            raise BenchmarkError(f"{folder}: missing {rel}; a config folder needs the diffusers pipeline layout")
    for name, patch in (overrides or {}).items():
        if name not in out:
            raise BenchmarkError(f"config override for {name!r}, but {folder} has no such module")
        out[name] = {**out[name], **patch}
    return out


def check_renderable(ckpt) -> None:
    """Refuse, naming the file, a checkpoint the text-to-image benchmark cannot render.

    The family and variant come from merge_core's one reading of the file (``Checkpoint.family``,
    ``.variant``): the SDXL refiner only refines a base model's latents, and inpainting /
    instruct-pix2pix UNets take extra input channels (mask, image) that text-to-image does not give.
    Raises ``BenchmarkError``.
    """
    if str(ckpt.family) == "sdxl-refiner":
        raise BenchmarkError(
            f"{ckpt.path}: is an SDXL refiner, which refines an SDXL base model's latents and cannot render "
            "from a prompt alone; benchmark and search SDXL base models (merge refiners with `mergesearch merge`)"
        )
    if ckpt.variant != "standard":
        raise BenchmarkError(
            f"{ckpt.path}: is an {ckpt.variant} model (its UNet takes extra input channels), which the text-to-image "
            "benchmark cannot drive; benchmark and search the text-to-image model it was made from, and merge "
            "the inpainting version with `mergesearch merge` (add-difference)"
        )


def guess_config(path: str | os.PathLike) -> str:
    """The shipped config folder that fits a checkpoint: its family by key names, then the folder of that
    family whose cross-attention width matches (the toy world is SD1-shaped but 64 wide)."""
    from merge_core import CheckpointError, open_checkpoint

    if Path(path).is_dir() and (Path(path) / "model_index.json").is_file():
        return str(path)  # a diffusers folder carries its own configs and tokenizer
    try:
        ckpt = open_checkpoint(path)
        check_renderable(ckpt)
    except CheckpointError as exc:
        raise BenchmarkError(str(exc)) from None
    family = str(ckpt.family)
    probe = next((k for k in ckpt.keys() if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight")),
                 None)
    width = ckpt.shape(probe)[-1] if probe else None
    for name in shipped_families():
        configs = load_configs(FAMILY_DIR / name)
        if family_of(configs) == family and configs["unet"].get("cross_attention_dim") == width:
            return name
    return family


def family_of(configs: Mapping[str, Mapping[str, Any]]) -> str:
    """sdxl has two text encoders; sd2 uses OpenCLIP (gelu); sd1 (and the toy world) CLIP ViT-L style."""
    if "text_encoder_2" in configs:
        return "sdxl"
    if configs["text_encoder"].get("hidden_act") == "gelu":
        return "sd2"
    return "sd1"


class Renderer:
    """Pipeline for one family; `config` = folder, shipped family name or hub id."""

    def __init__(self, config: str | os.PathLike = "sd1", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, *,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        import diffusers
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        from benchmark.tokenizer import load_clip_tokenizer

        self.config_dir = resolve_config(config)
        self.configs = load_configs(self.config_dir, overrides)
        self.family = family_of(self.configs)
        self.device = torch.device(device)
        self.dtype = dtype
        c = self.configs
        unet = diffusers.UNet2DConditionModel.from_config(c["unet"])
        vae = diffusers.AutoencoderKL.from_config(c["vae"])
        text_encoder = _with_text_model_alias(CLIPTextModel(CLIPTextConfig(**_clip_fields(c["text_encoder"]))))
        tokenizer = load_clip_tokenizer(self.config_dir / "tokenizer")
        self._base_scheduler = dict(c["scheduler"])
        scheduler = make_scheduler("native", self._base_scheduler)
        if self.family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_clip_fields(c["text_encoder_2"])))
            self.pipeline = diffusers.StableDiffusionXLPipeline(
                vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=load_clip_tokenizer(self.config_dir / "tokenizer_2"), unet=unet,
                scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
        else:
            self.pipeline = diffusers.StableDiffusionPipeline(
                vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self._unet = unet  # the live module (weights); pipeline.unet may be its compiled wrapper
        self.compile_mode = COMPILE_OFF
        self.pipeline.to(device=self.device)
        if dtype != torch.float32:  # modules are built in fp32; cast only when asked (fp16 on GPU)
            self.pipeline.to(dtype=dtype)
        self.pipeline.set_progress_bar_config(disable=True)
        for m in self.modules.values():
            m.eval().requires_grad_(False)
        self._scheduler_key: tuple[str, str | None] = ("native", None)
        self.loaded_from: str | None = None

    # ------------------------------------------------------------------ weights
    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """The live modules the Mixer writes into: unet, text_encoder(s), vae."""
        names = ["text_encoder"] + (["text_encoder_2"] if self.family == "sdxl" else []) + ["vae"]
        return {"unet": self._unet, **{n: getattr(self.pipeline, n) for n in names}}

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Single-file keys -> {module: {diffusers name: tensor}} (pure: the pipeline is not touched)."""
        sd = normalise_keys(state_dict)
        self._check_family(sd)
        return to_diffusers(sd, self.family, self.modules, self.configs)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> None:
        """Write a single-file state dict into the live modules in place (dtype/device cast on copy)."""
        converted = self.convert(state_dict)
        plans = []
        for name, module in self.modules.items():
            plans.append(self._match(name, module.state_dict(), converted[name], source))
        with torch.no_grad():  # all modules checked before the first write: never a half-loaded pipeline
            for params, tensors in plans:
                torch._foreach_copy_(params, tensors)
        self.loaded_from = source

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Read a single-file checkpoint (safetensors, or .ckpt with weights_only) and load it."""
        self.load_state_dict(read_checkpoint(path), source=str(path))

    def _check_family(self, sd: Mapping[str, torch.Tensor]) -> None:
        want = TE_PREFIXES[self.family]
        keys = list(sd)
        for fam, prefixes in TE_PREFIXES.items():
            if fam == self.family:
                continue
            marker = next(iter(prefixes.values()))
            hit = next((k for k in keys if k.startswith(marker)), None)
            if hit and not any(k.startswith(p) for k in keys for p in want.values()):
                raise BenchmarkError(
                    f"checkpoint is not {self.family}: key {hit!r} is {fam} layout, but the renderer was "
                    f"built from {self.config_dir}; use --config {fam} (or a {self.family} checkpoint)")

    def _match(self, name: str, live: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], source: str):
        def sf(k: str) -> str:
            return single_file_name(name, k, self.family, self.configs)

        missing = [k for k in live if k not in new]
        if missing:
            raise BenchmarkError(
                f"{source}: does not fit the {self.family} renderer ({self.config_dir.name}): first missing key "
                f"{sf(missing[0])!r} ({name}.{missing[0]}; {len(missing)} missing); is it a {self.family} checkpoint?")
        extra = [k for k in new if k not in live]
        if extra:
            raise BenchmarkError(
                f"{source}: does not fit the {self.family} renderer ({self.config_dir.name}): first unexpected key "
                f"{sf(extra[0])!r} ({len(extra)} unexpected); the checkpoint has another architecture")
        params, tensors = [], []
        for k, p in live.items():
            t = new[k]
            if tuple(t.shape) != tuple(p.shape):
                raise BenchmarkError(
                    f"{source}: does not fit the {self.family} renderer ({self.config_dir.name}): first mismatching "
                    f"key {sf(k)!r} has shape {tuple(t.shape)}, the renderer expects {tuple(p.shape)}; "
                    "is it a checkpoint of another family or size?")
            params.append(p)
            tensors.append(t.to(device=p.device, dtype=p.dtype))
        return params, tensors

    # ------------------------------------------------------------------ rendering
    def native_size(self) -> int:
        return int(self.configs["unet"]["sample_size"]) * self.pipeline.vae_scale_factor

    def _use_scheduler(self, settings: RenderSettings) -> None:
        key = (settings.scheduler, settings.prediction_type)
        if key != self._scheduler_key:
            self.pipeline.scheduler = make_scheduler(settings.scheduler, self._base_scheduler,
                                                     prediction_type=settings.prediction_type)
            self._scheduler_key = key

    def call_kwargs(self, texts: Sequence[str], seeds: Sequence[int], settings: RenderSettings,
                    negative: str = "") -> dict[str, Any]:
        """The exact arguments `render` gives the diffusers pipeline (also used by the perf reference)."""
        size = self.native_size()
        gen_device = "cpu" if self.device.type == "mps" else self.device
        return dict(
            prompt=list(texts),
            negative_prompt=[negative] * len(texts) if negative else None,
            num_inference_steps=settings.steps,
            guidance_scale=settings.cfg,
            height=settings.height or size,
            width=settings.width or size,
            generator=[torch.Generator(gen_device).manual_seed(int(s)) for s in seeds],
            clip_skip=settings.clip_skip - 1 or None,
            output_type="pil",
        )

    # ------------------------------------------------------------------ compilation
    def compile(self, mode: str = "auto") -> str:
        """Compile the UNet for speed (`benchmark.compile` lists the modes); returns the mode in use.

        The compiled wrapper shares the live parameters, so the Mixer's in-place writes reach it. Compiling
        is lazy in torch: if the first call through the compiled UNet fails (no compiler, an unsupported
        device or backend), the renderer warns once, goes back to the eager UNet and renders the batch
        again; it never fails a trial for it.
        """
        chosen = resolve_compile(mode, self.device)
        self.pipeline.unet = self._unet
        self.compile_mode = COMPILE_OFF
        if chosen == COMPILE_OFF:
            return chosen
        wrapped = compile_module(self._unet, chosen)
        if wrapped is None:  # torch.compile itself refused (reported by compile_module)
            return COMPILE_OFF
        self.pipeline.unet = wrapped
        self.compile_mode = chosen
        return chosen

    def _uncompile(self, exc: BaseException) -> None:
        warnings.warn(f"render.compile={self.compile_mode!r}: compiling the UNet failed on {self.device} "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); rendering "
                      "without compilation (set render.compile: off to silence this)", RuntimeWarning, stacklevel=3)
        self.pipeline.unet = self._unet
        self.compile_mode = COMPILE_OFF

    # ------------------------------------------------------------------ rendering
    @torch.inference_mode()
    def denoise(self, texts: Sequence[str], seeds: Sequence[int], settings: RenderSettings,
                negative: str = "") -> torch.Tensor:
        """The pipeline up to the final latents (text encoding, scheduler, UNet): float [n, 4, h, w] on the
        renderer's device, still scaled by the VAE's scaling factor (what `decode` takes)."""
        self._use_scheduler(settings)
        kwargs = {**self.call_kwargs(texts, seeds, settings, negative), "output_type": "latent"}
        if self.compile_mode == COMPILE_OFF:
            return self.pipeline(**kwargs).images
        try:
            return self.pipeline(**kwargs).images
        except Exception as exc:  # noqa: BLE001 - any failure of the compiled path falls back to eager once
            self._uncompile(exc)
            kwargs["generator"] = self.call_kwargs(texts, seeds, settings, negative)["generator"]  # fresh seeds
            return self.pipeline(**kwargs).images

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents from `denoise` -> uint8 pixels [n, 3, H, W] on the renderer's device.

        The same operations, in the same dtypes, as the diffusers pipeline's own decode and PIL
        post-processing (SDXL: fp16 VAEs with `force_upcast` decode in fp32; latents_mean/std when the
        VAE config has them), so the pixels equal the pipeline's `output_type="pil"` images.
        """
        vae = self.pipeline.vae
        if self.family != "sdxl":
            return to_uint8(vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0])
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        try:
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        return to_uint8(image)

    def render(self, prompts: Sequence[Prompt | str], settings: RenderSettings | None = None, *,
               seeds: Sequence[int] | None = None, prefix: str = "", negative: str = "") -> list[Image.Image]:
        """One image per prompt; `Prompt`s carry their seed, plain strings need `seeds`."""
        settings = settings or RenderSettings()
        if not prompts:
            return []
        texts, seeds = _texts_and_seeds(prompts, seeds, prefix)
        return list(ImageBatch(self.decode(self.denoise(texts, seeds, settings, negative))))

    def render_batches(self, prompts: Sequence[Prompt | str], settings: RenderSettings | None = None,
                       batch_size: int = 8, *, seeds: Sequence[int] | None = None, prefix: str = "",
                       negative: str = "", overlap: bool = False) -> Iterator[ImageBatch]:
        """`render` in batches of `batch_size`, yielding each batch's images as soon as they exist
        (with `overlap`, batch k is decoded while batch k+1 denoises; the images are the same)."""
        return self.decoded_batches(prompts, settings, batch_size, seeds=seeds, prefix=prefix, negative=negative,
                                    then=lambda pixels: ImageBatch(pixels), overlap=overlap)

    def decoded_batches(self, prompts: Sequence[Prompt | str], settings: RenderSettings | None = None,
                        batch_size: int = 8, *, then: Callable[[torch.Tensor], Any], seeds: Sequence[int] | None = None,
                        prefix: str = "", negative: str = "", overlap: bool = False) -> Iterator[Any]:
        """For each batch: `then(pixels)`, pixels = uint8 [n, 3, H, W] on the renderer's device.

        With `overlap`, decoding and `then` (conversion, tagging) of batch k run on a worker thread (and,
        on CUDA, a second stream) while batch k+1 denoises; results come in batch order either way.
        Closing the iterator early waits for the batch in flight (see `benchmark.overlap`).
        """
        settings = settings or RenderSettings()
        texts, seeds = _texts_and_seeds(prompts, seeds, prefix)
        step = max(1, batch_size)

        def latents() -> Iterator[torch.Tensor]:
            for i in range(0, len(texts), step):
                yield self.denoise(texts[i:i + step], seeds[i:i + step], settings, negative)

        return overlapped(latents(), lambda z: then(self.decode(z)), enabled=overlap, device=self.device)


def _texts_and_seeds(prompts: Sequence[Prompt | str], seeds: Sequence[int] | None,
                     prefix: str) -> tuple[list[str], list[int]]:
    if all(isinstance(p, Prompt) for p in prompts):
        return [p.text(prefix) for p in prompts], [p.seed for p in prompts] if seeds is None else list(seeds)
    if seeds is None or len(seeds) != len(prompts):
        raise BenchmarkError("render: plain-text prompts need one seed each (seeds=[...])")
    texts = [p.text(prefix) if isinstance(p, Prompt) else (f"{prefix}, {p}" if prefix else p) for p in prompts]
    return texts, list(seeds)


def _with_text_model_alias(model: torch.nn.Module) -> torch.nn.Module:
    """transformers >= 5.6 flattened CLIPTextModel, but diffusers' clip-skip path still calls
    `text_encoder.text_model.final_layer_norm`; alias the model as its own `text_model` (a plain
    attribute, not a submodule, so parameters and state-dict keys stay as they are)."""
    if "text_model" not in model._modules and not hasattr(model, "text_model"):
        object.__setattr__(model, "text_model", model)
    return model


def _clip_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in copy.deepcopy(dict(cfg)).items() if k not in ("architectures", "_name_or_path")}


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Single-file weights from disk with merge_core's normalised keys (.ckpt only via weights_only);
    a diffusers folder is read under single-file keys (merge_core.open_checkpoint)."""
    from merge_core import CheckpointError, open_checkpoint

    p = Path(path)
    if not p.exists():
        raise BenchmarkError(f"{p}: no such checkpoint file or diffusers folder")
    try:
        ckpt = open_checkpoint(p)
        check_renderable(ckpt)
        return {k: ckpt.tensor(k) for k in ckpt.keys()}
    except CheckpointError as exc:
        raise BenchmarkError(str(exc)) from None
