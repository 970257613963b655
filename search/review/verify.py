"""`export --verify`: reload the exported file, re-run the benchmark's search split, compare scores."""

from __future__ import annotations

import math
import time
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from search.review.export import ExportResult
from search.review.run import ReviewError, RunFolder
from search.review.trials import pick_trial

# Rounding the merged weights to 16 bits moves every image by a hair; a tag whose probability sat
# on the tagger's threshold can then flip. One flip in a hundred prompted tags (at least one) is
# what we accept for fp16/bf16; an fp32 export reproduces the search's weights and must match.
HALF_FLIP_SHARE = 0.01


class VerifyResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    trial: int
    dtype: str
    trial_score: float
    export_score: float
    n_tags: int
    tolerance: float
    seconds: float

    @property
    def difference(self) -> float:
        return self.export_score - self.trial_score

    @property
    def ok(self) -> bool:
        return abs(self.difference) <= self.tolerance + 1e-9

    def describe(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return (f"verify {verdict}: trial {self.trial} scored tag_recall {self.trial_score:.4f} in the search, "
                f"the {self.dtype} export scores {self.export_score:.4f} on the same search split "
                f"(difference {self.difference:+.4f}, allowed ±{self.tolerance:.4f} over {self.n_tags} tags; "
                f"{self.seconds:.1f} s)")


def tolerance(dtype: str, n_tags: int) -> float:
    if dtype == "fp32":
        return 1e-6
    return max(1, math.floor(HALF_FLIP_SHARE * n_tags)) / max(1, n_tags)


def search_config(study: optuna.Study):
    """The SearchConfig the study was run with (stored in its `config` user attr)."""
    from search.config import SearchConfig

    raw = study.user_attrs.get("config")
    if raw is None:
        raise ReviewError(f"study {study.study_name!r} has no 'config' user attr; it was not made by "
                          "`mergesearch search`, so its benchmark cannot be rebuilt")
    try:
        return SearchConfig.model_validate_json(raw) if isinstance(raw, str) else SearchConfig.model_validate(raw)
    except ValueError as exc:
        raise ReviewError(f"study {study.study_name!r}: stored config does not validate ({str(exc).splitlines()[0]})"
                          ) from None


def build_search_benchmark(study: optuna.Study) -> tuple[Any, Any]:
    """(Renderer, Benchmark of the search split) exactly as the search's workers built them."""
    import torch

    from benchmark import Benchmark, Renderer, RenderSettings, get_tagger
    from search.mixer import choose_device
    from search.runner import build_prompt_set

    config = search_config(study)
    prompt_set = build_prompt_set(config)
    stored = study.user_attrs.get("prompt_set_hash")
    if stored is not None and prompt_set.hash != stored:
        raise ReviewError(
            f"the prompt set rebuilt from the study's config has hash {prompt_set.hash}, but the search used "
            f"{stored}; the prompt file or vocabulary changed since, so the scores cannot be compared — restore it"
        )
    o = config.objective
    device = choose_device(config.workers.device)
    family = study.user_attrs.get("family")
    renderer = Renderer(config.renderer or family, device=device,
                        dtype=torch.float16 if device.type == "cuda" else torch.float32)
    options = dict(o.tagger_options)
    tagger = get_tagger(o.tagger, **options)
    settings = RenderSettings(**o.render.settings())
    return renderer, Benchmark(prompt_set, "search", tagger, settings, batch_size=o.batch_size)


def verify_export(run: RunFolder, result: ExportResult, *, progress: bool = True) -> VerifyResult:
    study = run.open_study()
    trial = pick_trial(study, result.trial)
    started = time.perf_counter()
    renderer, bench = build_search_benchmark(study)
    renderer.load_checkpoint(result.path)
    n_batches = math.ceil(len(bench.prompts) / bench.batch_size)
    batches = tqdm(bench.evaluate_batches(renderer), total=n_batches, desc="verify: rendering", unit="batch",
                   disable=not progress, leave=False)
    score = [partial for partial, _images in batches][-1]  # the last batch's score covers the whole split
    # the export is checked against the raw recall, never the penalised objective
    if trial.search is None:
        raise ReviewError(f"trial {trial.number} has no stored search-split tag recall to verify against")
    reference = float(trial.search)
    n_tags = sum(len(p.tags) for p in score.prompts)
    return VerifyResult(trial=trial.number, dtype=result.dtype, trial_score=reference,
                        export_score=float(score.overall), n_tags=n_tags, tolerance=tolerance(result.dtype, n_tags),
                        seconds=time.perf_counter() - started)
