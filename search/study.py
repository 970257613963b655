"""Create or resume a study: config-hash guard, recovery of trials whose driver stopped, baselines
enqueued once (under the study lock, so several drivers may open one study at the same moment)."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import trial_record as record
from search.liveness import DEFAULT_GRACE, StudyLock, driver_id, stale_trials
from search.samplers import make_sampler
from search.space import SearchSpace

METRIC = "tag_recall"


class StudyMismatchError(RuntimeError):
    """The stored study was made from a different space or benchmark."""


@dataclass
class OpenedStudy:
    study: optuna.Study
    created: bool
    recovered: list[int]  # numbers of stale RUNNING trials failed and re-enqueued
    enqueued_baselines: list[str]
    lock: StudyLock | None = None  # the study's cross-process lock, for the loop


def fixed_params(trial: FrozenTrial) -> dict[str, Any]:
    """The params a trial was (or was to be) evaluated at, even if it died before suggesting them."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


def requeue(study: optuna.Study, trial: FrozenTrial, *, reason: str) -> None:
    """Enqueue the same params again, carrying the baseline label; the old trial is marked `requeued`."""
    attrs = record.enqueue_attrs(retry_of=trial.number, retry_reason=reason, baseline=record.read(trial).baseline)
    study.enqueue_trial(fixed_params(trial), user_attrs=attrs)


def fail_running(study: optuna.Study, trial: FrozenTrial, *, reason: str, retry: bool, detail: str = "") -> None:
    """Fail a RUNNING trial; with retry, enqueue its params again (reason: crash|interrupted|driver)."""
    storage = study._storage
    retry = retry and bool(fixed_params(trial))  # died before its params were drawn: nothing to repeat
    record.write_stored(storage, trial._trial_id, requeued=True if retry else None,
                        fail_reason=f"{reason}: {detail}" if detail else reason)
    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    if retry:
        requeue(study, trial, reason=reason)


def open_study(
    *,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    config_hash: str,
    space: SearchSpace,
    sampler: str,
    seed: int,
    pruner: optuna.pruners.BasePruner | None = None,
    study_attrs: Mapping[str, Any] | None = None,
    startup_trials: int | None = None,
    lock: StudyLock | None = None,
    grace_seconds: float = DEFAULT_GRACE,
    metric: str = METRIC,
) -> OpenedStudy:
    """Create the study, or resume it: same command, same study. Refuses another config's study.

    Several drivers may open one study at once (other terminals, other hosts): under `lock` the
    study is created with its attrs and baselines in one step (a second driver waits, then finds it
    complete; a creator killed half-way is completed by the next), and only trials whose driver has
    stopped (search/liveness.py) are failed and re-enqueued."""
    with lock.held() if lock else contextlib.nullcontext():
        existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        created = study_name not in existing
        n_existing = 0 if created else len(storage.get_all_trials(storage.get_study_id_from_name(study_name),
                                                                    deepcopy=False))
        startup = sampler_startup(space, startup_trials)
        # Seed shifted by the trials already stored so a resumed run does not replay its first proposals.
        sampler_obj = make_sampler(sampler, seed=seed + n_existing, n_startup_trials=startup)
        if created:
            study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                        sampler=sampler_obj, pruner=pruner)
        else:
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler_obj, pruner=pruner)
        stored = study.user_attrs.get("config_hash")
        if stored is None:  # new, or its creator was killed before it finished setting it up
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([metric])
            for key, value in {**(study_attrs or {}), "sampler": sampler}.items():
                study.set_user_attr(key, value)
            study.set_user_attr("config_hash", config_hash)  # last: its presence says the set-up is complete
        elif stored != config_hash:
            raise StudyMismatchError(
                f"study {study_name!r} in {storage_label(storage)} was made from another space or benchmark "
                f"(config hash {stored}, this config {config_hash}); run with --fork to start a new study "
                "beside it, or give the run another name"
            )
        else:
            study.set_user_attr("sampler", sampler)
        recovered = recover_stale(study, grace_seconds=grace_seconds)
        enqueued = enqueue_baselines(study, space)
    return OpenedStudy(study=study, created=created, recovered=recovered, enqueued_baselines=enqueued)


def recover_stale(study: optuna.Study, *, grace_seconds: float) -> list[int]:
    """Fail and re-enqueue the RUNNING trials whose driver has stopped; call it under the study lock.

    A trial another driver failed first (it raced us) is skipped: only one driver re-enqueues it."""
    out = []
    for t in stale_trials(study, grace=grace_seconds, exclude_driver=driver_id()):
        try:
            fail_running(study, t, reason="driver", detail="left RUNNING by a stopped driver", retry=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        out.append(t.number)
    return out


def enqueue_baselines(study: optuna.Study, space: SearchSpace) -> list[str]:
    present = {r.baseline for r in record.read_all(study.get_trials(deepcopy=False))}
    out = []
    for label, params in space.baselines():
        if label not in present:
            study.enqueue_trial(params, user_attrs=record.enqueue_attrs(baseline=label))
            out.append(label)
    return out


def default_startup(space: SearchSpace) -> int:
    """Baselines, then a Sobol start of one point per two dimensions (at least 8, at most 24).

    Counted in completed trials (pruned ones teach the GP nothing). One point per dimension left a
    40-trial search of the toy world's 20 dimensions (6 baselines, a quarter of its trials pruned)
    about 6 GP trials; measured in the README's search-quality section."""
    return len(space.baselines()) + min(max(8, len(space.dimensions()) // 2), 24)


def sampler_startup(space: SearchSpace, configured: int | None) -> int:
    """Completed trials before the model-based sampler takes over: the config's `sampler_startup`, else
    `default_startup`."""
    return configured if configured is not None else default_startup(space)


def storage_label(storage: optuna.storages.BaseStorage) -> str:
    url = getattr(storage, "url", None)
    if url is None:
        return type(storage).__name__
    from search.storage import _redacted

    return _redacted(url)


def finished_count(study: optuna.Study) -> int:
    """Trials that count against the budget: complete, pruned, or failed for good (not requeued)."""
    return sum(1 for r in record.read_all(study.get_trials(deepcopy=False))
               if r.state in ("COMPLETE", "PRUNED") or r.failed_for_good)


def study_attrs(*, config_json: str, family: str, sources: list[dict[str, str]], prompt_set_hash: str,
                tagger: str) -> dict[str, Any]:
    return {"config": json.loads(config_json), "family": family, "sources": sources,
            "prompt_set_hash": prompt_set_hash, "tagger": tagger}
