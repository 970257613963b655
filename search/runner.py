"""Prepare a search (every check before any trial) and run it: the `mergesearch search` pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search.config import ConfigError, SearchConfig
from search.loop import LoopOptions, LoopStats, SearchLoop
from search.rundir import RunInfo, write_run
from search.space import SearchSpace
from search.storage import StorageError, check_storage, make_storage
from search.study import OpenedStudy, open_study, study_attrs
from search.workers import EvaluatorSpec, LocalPool, RayPool, WorkerPool


@dataclass
class Prepared:
    config: SearchConfig
    config_text: str
    family: str
    sources: tuple[Any, ...]  # merge_core.Source, base first
    space: SearchSpace
    prompt_set: Any  # benchmark.PromptSet
    storage: optuna.storages.RDBStorage | None  # None in a dry run
    evaluator: EvaluatorSpec
    loras: tuple[Any, ...] = ()  # merge_core.recipe.LoraUse per searched LoRA (strengths filled per trial)

    def recipe_json(self, params: dict[str, float], number: int = 0, baseline: str | None = None) -> str:
        """A trial's recipe; random methods get the seed ``number`` (the trial number), stored in the recipe."""
        return self.space.recipe(params, family=self.family, sources=self.sources, seed=number,
                                 baseline=baseline, loras=self.loras).model_dump_json()


def resolve_model_path(config: SearchConfig, path: str) -> Path:
    if path.startswith("toyworld:"):
        from benchmark.toyworld import zoo

        name = path.split(":", 1)[1]
        try:
            models = zoo()
        except FileNotFoundError as exc:
            raise ConfigError(f"models: {exc}") from None
        if name not in models:
            raise ConfigError(f"models: toyworld model {name!r} does not exist; the zoo has {', '.join(models)}")
        return Path(models[name])
    return config.resolve(path)


def build_prompt_set(config: SearchConfig) -> Any:
    from benchmark import load_prompt_set, load_vocabulary, make_prompt_set

    o = config.objective
    if o.prompts is not None:
        return load_prompt_set(config.resolve(o.prompts))
    vocab = o.vocabulary
    vocab_path = config.resolve(vocab) if ("/" in vocab or vocab.endswith(".yaml")) else vocab
    return make_prompt_set(load_vocabulary(vocab_path), o.n, o.m, o.seed, holdout=o.holdout,
                           confirm=o.n if o.confirm is None else o.confirm)


def prepare(config: SearchConfig, *, config_text: str = "", evaluator: EvaluatorSpec | None = None,
            open_storage: bool = True) -> Prepared:
    """Everything that can be wrong is found here, before a worker starts or a trial is asked.
    `open_storage=False` (the dry run) checks the storage URL but neither creates nor opens it."""
    from benchmark import BenchmarkError
    from benchmark.renderer import check_renderable
    from merge_core import CheckpointError, Source, layout_for, open_checkpoint

    sources, families, ckpts = [], {}, {}
    for m in config.ordered_models:
        path = resolve_model_path(config, m.path)
        if not path.exists():
            raise ConfigError(f"models.{m.name}: no such file or diffusers folder {path}; fix the path (relative paths start at the "
                              f"config's folder, {config.root})")
        try:
            ckpt = open_checkpoint(path)
            check_renderable(ckpt)  # one reading of the file decides family and variant, as merges do
            families[m.name] = str(ckpt.family.value if hasattr(ckpt.family, "value") else ckpt.family)
            ckpts[m.name] = ckpt
            sources.append(Source(path=str(path.resolve()), sha256=ckpt.sha256, name=m.name))
        except (CheckpointError, BenchmarkError, OSError) as exc:
            raise ConfigError(f"models.{m.name}: {exc}") from None
    kinds = set(families.values())
    if len(kinds) > 1:
        listing = ", ".join(f"{n}={f}" for n, f in families.items())
        raise ConfigError(f"models: the checkpoints are of different families ({listing}); a merge needs one family")
    family = kinds.pop()
    if config.family is not None and config.family != family:
        raise ConfigError(f"family: the config says {config.family!r} but the model files are {family!r}; "
                          "remove `family` or fix it")
    layout = layout_for(family)
    try:
        space = SearchSpace.build(config.space, tuple(m.name for m in config.ordered_models),
                                  tuple(layout.blocks), tuple(layout.components), config.loras,
                                  attention_blocks=_attention_blocks(config, layout, sources))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_parts(config, ckpts, layout)
    loras = check_loras(config, ckpts[config.ordered_models[0].name])
    try:
        prompt_set = build_prompt_set(config)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"objective: {exc}") from None
    check_objective(config)
    if "confirm" not in prompt_set.splits and config.objective.confirm != 0:
        raise ConfigError(f"objective.prompts: {config.objective.prompts} has no confirm split to re-score the "
                          "leaders on; make the set with `mergesearch prompts ... --confirm N`, or set "
                          "objective.confirm: 0 to report the best by search score alone")
    if config.workers.backend == "local" and config.workers.count != 1:
        raise ConfigError("workers.count: the local backend runs one in-process worker; use backend: ray for more")
    try:
        if open_storage:
            storage = make_storage(config.storage_url)
        else:  # a server is only connected to; a SQLite file would be created by the check, so it is not made
            if not config.storage_url.startswith("sqlite"):
                check_storage(config.storage_url)
            storage = None
    except StorageError as exc:
        raise ConfigError(str(exc)) from None
    if evaluator is None:
        evaluator = default_evaluator(config, family, sources, prompt_set)
    return Prepared(config=config, config_text=config_text, family=family, sources=tuple(sources), space=space,
                    prompt_set=prompt_set, storage=storage, evaluator=evaluator, loras=loras)


def check_loras(config: SearchConfig, base) -> tuple[Any, ...]:
    """Each LoRA read and checked against the base (family, module names, shapes); LoraUse templates."""
    from merge_core import CheckpointError
    from merge_core.lora import lora_targets, read_lora
    from merge_core.lora.apply import check_lora_family
    from merge_core.recipe import LoraUse

    if not config.loras:
        return ()
    targets = lora_targets(base)
    out = []
    for lo in config.loras:
        path = config.resolve(lo.path)
        if not path.is_file():
            raise ConfigError(f"loras.{lo.name}: no such file {path}; fix the path (relative paths start at the "
                              f"config's folder, {config.root})")
        try:
            lora = read_lora(path)
            check_lora_family(lora, base.family, targets)
        except (CheckpointError, OSError) as exc:
            raise ConfigError(f"loras.{lo.name}: {exc}") from None
        out.append(LoraUse(path=str(path.resolve()), sha256=lora.sha256, name=lo.name, strengths={}))
    return tuple(out)


def check_parts(config: SearchConfig, ckpts: dict, layout) -> None:
    """The merge's rule for keys only some sources hold, applied to the search: every weight another model
    has must be in each model's file too. Stricter than a merge (which lets a component held from one model
    skip the others): the Mixer keeps every part of every source resident, so a partial file cannot be loaded."""
    holders: dict[str, str] = {}
    for name, ckpt in ckpts.items():
        for key in ckpt.keys():
            if layout.block_of(key) is not None and ckpt.dtype(key).is_floating_point:
                holders.setdefault(key, name)
    for name, ckpt in ckpts.items():
        for key, other in holders.items():
            if key in ckpt:
                continue
            block = layout.block_of(key)
            part = {"TE": "text encoder", "VAE": "VAE"}.get(block, f"UNet block {block}")
            raise ConfigError(f"models.{name}: {ckpt.path} has no key {key!r} ({part}) that model {other!r} has; "
                              "the search loads every part of every model — use a full checkpoint (`mergesearch "
                              f"merge` can combine this file with {other!r}'s {part} into one)")


def _attention_blocks(config: SearchConfig, layout: Any, sources: list[Any]) -> frozenset[str] | None:
    """Blocks of the base checkpoint that hold attention keys, for an attn-conv preset (else None)."""
    from merge_core import open_checkpoint
    from search.presets import get_preset, is_attention_key

    if config.space.preset is None or not get_preset(config.space.preset).split:
        return None
    keys = open_checkpoint(sources[0].path).keys()
    return frozenset(b for k in keys if k.startswith("model.diffusion_model.") and is_attention_key(k)
                     and (b := layout.block_of(k)) is not None)


def check_objective(config: SearchConfig) -> None:
    """Renderer config, tagger name and render settings, checked in the driver before workers start."""
    from benchmark import TAGGERS, RenderSettings
    from benchmark.renderer import resolve_config

    o = config.objective
    if o.tagger not in TAGGERS:
        raise ConfigError(f"objective.tagger: unknown tagger {o.tagger!r}; choose one of {', '.join(sorted(TAGGERS))}")
    try:
        RenderSettings(**o.render.settings())
    except ValueError as exc:
        raise ConfigError(f"objective.render: {str(exc).splitlines()[0]}") from None
    if config.renderer is not None:
        try:
            resolve_config(config.renderer)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"renderer: {exc}") from None


def default_evaluator(config: SearchConfig, family: str, sources: list[Any], prompt_set: Any) -> EvaluatorSpec:
    o = config.objective
    return EvaluatorSpec(
        factory="search.evaluator:BenchmarkEvaluator",
        torch_threads=config.workers.torch_threads,
        kwargs={
            "renderer": config.renderer or family,
            "sources": [s.path for s in sources],
            "prompt_set": prompt_set.model_dump_json(),
            "tagger": o.tagger,
            "tagger_options": dict(o.tagger_options),
            "render": o.render.model_dump(),
            "batch_size": o.batch_size,
            "device": config.workers.device,
        },
    )


def make_pool(prepared: Prepared) -> WorkerPool:
    w = prepared.config.workers
    if w.backend == "local":
        return LocalPool(prepared.evaluator)
    return RayPool(prepared.evaluator, count=w.count, gpus_per_worker=w.gpus_per_worker,
                   max_restarts=w.max_restarts, address=w.address)


@dataclass
class SearchRun:
    opened: OpenedStudy
    info: RunInfo
    stats: LoopStats

    @property
    def study(self) -> optuna.Study:
        return self.opened.study


def open_run(prepared: Prepared, *, fork: bool = False) -> tuple[OpenedStudy, RunInfo]:
    config = prepared.config
    name = f"{config.name}.{config.config_hash[:8]}" if fork else config.name
    attrs = study_attrs(
        config_json=config.model_dump_json(), family=prepared.family,
        sources=[{"name": s.name, "path": s.path, "sha256": s.sha256} for s in prepared.sources],
        prompt_set_hash=prepared.prompt_set.hash, tagger=config.objective.tagger)
    if fork:
        attrs["forked_from"] = config.name
    import optuna.pruners

    # The workers apply this rule themselves (the driver sends the per-batch bars with each task).
    pruner = optuna.pruners.PercentilePruner(config.pruner.percentile, n_startup_trials=config.pruner.startup_trials,
                                             n_warmup_steps=config.pruner.warmup_batches)
    from search.liveness import StudyLock
    from search.trial_record import metric_name

    lock = StudyLock(config.storage_url, name)
    opened = open_study(storage=prepared.storage, study_name=name, config_hash=config.config_hash,
                        space=prepared.space, sampler=config.sampler, seed=config.seed, pruner=pruner,
                        study_attrs=attrs, startup_trials=config.sampler_startup, lock=lock,
                        grace_seconds=config.workers.grace_seconds,
                        metric=metric_name(config.objective.negative_penalty))
    opened.lock = lock
    text = prepared.config_text or json.dumps(json.loads(config.model_dump_json()), indent=2)
    info = write_run(config.run_dir, study_name=name, storage=config.storage_url, config_text=text)
    return opened, info


def run_search(prepared: Prepared, *, fork: bool = False, pool: WorkerPool | None = None,
               on_update: Callable[[LoopStats], None] | None = None,
               on_loop: Callable[[SearchLoop], None] | None = None) -> SearchRun:
    opened, info = open_run(prepared, fork=fork)
    config = prepared.config
    pool = pool or make_pool(prepared)
    options = LoopOptions(trials=config.budget.trials, hours=config.budget.hours,
                          poll_seconds=config.workers.poll_seconds, prune=config.pruner.enabled,
                          prune_startup_trials=config.pruner.startup_trials,
                          prune_warmup_batches=config.pruner.warmup_batches,
                          prune_percentile=config.pruner.percentile, holdout=config.holdout,
                          negative_penalty=config.objective.negative_penalty,
                          confirm="confirm" in prepared.prompt_set.splits and config.objective.confirm != 0,
                          confirm_top_k=config.confirm.top_k, confirm_every=config.confirm.every,
                          heartbeat_seconds=config.workers.heartbeat_seconds,
                          grace_seconds=config.workers.grace_seconds)
    loop = SearchLoop(opened.study, prepared.space, pool, make_recipe=prepared.recipe_json, options=options,
                      artifact_dir=info.artifact_dir, on_update=on_update, lock=opened.lock)
    if on_loop:
        on_loop(loop)
    stats = loop.run()
    return SearchRun(opened=opened, info=info, stats=stats)
