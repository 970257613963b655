"""The worker's evaluator: renderer + Mixer (sources resident) + benchmark splits, built once.

evaluate(task): apply the recipe in place, render the split batch by batch (stopping early when
the running score falls under the driver's pruning bar), tag, score, and return the score, the
per-category scores and a small WebP contact sheet. NaN/blank renders and non-finite weights fail
the candidate (a result, not an exception: the candidate is bad, the worker is fine).
"""

from __future__ import annotations

import inspect
import io
import math
import time
from contextlib import closing
from typing import Any

import numpy as np

from search.tasks import EvalResult, EvalTask

SHEET_CELL = 64  # pixels per image in the contact sheet that travels back (kept small)


def _blank(image: Any) -> bool:
    a = np.asarray(image, dtype=np.float32)
    return bool(a.size == 0 or not np.isfinite(a).all() or a.std() < 0.5)


def _webp(sheet: Any) -> bytes:
    buf = io.BytesIO()
    sheet.save(buf, format="WEBP", quality=70, method=4)
    return buf.getvalue()


class BenchmarkEvaluator:
    def __init__(self, *, renderer: str, sources: list[str], prompt_set: str, tagger: str,
                 tagger_options: dict[str, Any] | None = None, render: dict[str, Any] | None = None,
                 batch_size: int = 8, device: str = "auto", sheet_images: int = 16) -> None:
        import torch

        from benchmark import Benchmark, PromptSet, Renderer, RenderSettings, get_tagger
        from search.mixer import Mixer, choose_device

        dev = choose_device(device)
        self.renderer = Renderer(renderer, device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
        self.mixer = Mixer(self.renderer, sources)
        options = dict(tagger_options or {})
        from benchmark.taggers import TAGGERS

        factory = TAGGERS.get(tagger)
        target = getattr(factory, "__doc__", "") or ""
        if "device" not in options and _accepts_device(target):
            options["device"] = str(dev)
        self.tagger = get_tagger(tagger, **options)
        self.prompt_set = PromptSet.model_validate_json(prompt_set)
        render = dict(render or {})
        speed = {k: render.pop(k) for k in ("compile", "overlap", "batch") if k in render}
        self.settings = RenderSettings(**{k: v for k, v in render.items() if v is not None})
        self.batch_size = batch_size
        self.compile_mode = self.renderer.compile(speed.get("compile") or "off")
        overlap = {"on": True, "off": False}.get(speed.get("overlap") or "auto")  # None = on CUDA only
        splits = [s for s in self.prompt_set.splits if self.prompt_set.prompts(s)]
        self.render_batch = self._render_batch(speed.get("batch") or "auto",
                                               max((len(self.prompt_set.prompts(s)) for s in splits), default=1))
        self.benchmarks = {split: Benchmark(self.prompt_set, split, self.tagger, self.settings, batch_size=batch_size,
                                            render_batch=self.render_batch, overlap=overlap)
                           for split in splits}
        self.sheet_images = sheet_images

    def _render_batch(self, batch: int | str, n_prompts: int) -> int:
        if batch != "auto":
            return int(batch)
        import torch

        from benchmark.batching import choose_render_batch

        size = self.renderer.native_size()
        vae = self.renderer.modules["vae"]
        upcast = self.renderer.family == "sdxl" and vae.dtype == torch.float16 and vae.config.force_upcast
        return choose_render_batch(device=self.renderer.device, height=self.settings.height or size,
                                   width=self.settings.width or size, step=self.batch_size, n_prompts=n_prompts,
                                   decode_bytes=4 if upcast or vae.dtype == torch.float32 else 2)

    def evaluate(self, task: EvalTask) -> EvalResult:
        from benchmark import contact_sheet
        from merge_core import Recipe

        head = dict(task_id=task.task_id, trial_number=task.trial_number, split=task.split)
        if task.split not in self.benchmarks:
            return EvalResult(**head, status="failed", error=f"the prompt set has no {task.split!r} split")
        recipe = Recipe.model_validate_json(task.recipe)
        apply_seconds = self.mixer.apply(recipe)
        bad = self.mixer.nonfinite_blocks()
        if bad:
            return EvalResult(**head, status="failed", apply_seconds=apply_seconds,
                              error=f"non-finite merged weights in {', '.join(bad)}")
        bench = self.benchmarks[task.split]
        n_batches = math.ceil(len(bench.prompts) / self.batch_size)
        partial: list[float] = []
        t0 = time.perf_counter()
        score = images = None
        batches = bench.evaluate_batches(self.renderer)
        with closing(batches):  # a pruned trial waits here for the batch still in flight
            for step, (score, images) in enumerate(batches):
                result = self._after_batch(head, task, step, n_batches, score, images, partial, t0, apply_seconds)
                if result is not None:
                    return result
        render_seconds = time.perf_counter() - t0
        if not math.isfinite(score.overall):
            return EvalResult(**head, status="failed", error="the score is not a finite number")
        k = self.sheet_images
        sheet = contact_sheet(images[:k], score.model_copy(update={"prompts": score.prompts[:k]}), cell=SHEET_CELL)
        from search.trial_record import standard_error

        per_prompt = tuple(float(p.recall) for p in score.prompts)
        return EvalResult(**head, status="ok", value=float(score.overall), se=standard_error(per_prompt),
                          prompt_scores=per_prompt, categories=dict(score.category_recall),
                          intermediate=tuple(partial), render_seconds=render_seconds, apply_seconds=apply_seconds,
                          sheet=_webp(sheet))


    def _after_batch(self, head: dict, task: EvalTask, step: int, n_batches: int, score: Any, images: Any,
                     partial: list[float], t0: float, apply_seconds: float) -> EvalResult | None:
        """A failed or pruned result after score step `step`, or None to go on."""
        new = images[step * self.batch_size:]
        blank = sum(_blank(new.array(i) if hasattr(new, "array") else new[i]) for i in range(len(new)))
        if blank:
            return EvalResult(**head, status="failed", apply_seconds=apply_seconds,
                              render_seconds=time.perf_counter() - t0, intermediate=tuple(partial),
                              error=f"{blank} of {len(new)} images in batch {step} are blank or non-finite")
        partial.append(float(score.overall))
        bar = task.prune_below[step] if step < len(task.prune_below) else None
        if bar is not None and score.overall < bar and step < n_batches - 1:
            spent = time.perf_counter() - t0
            return EvalResult(**head, status="pruned", intermediate=tuple(partial), render_seconds=spent,
                              apply_seconds=apply_seconds, saved_seconds=spent / (step + 1) * (n_batches - step - 1))
        return None


def _accepts_device(target: str) -> bool:
    """Whether the registered tagger's constructor ('module.attr') takes a `device` argument."""
    import importlib

    module, _, attr = target.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
        return "device" in inspect.signature(fn).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return False
