"""Sampler registry. Samplers hold no state worth keeping: they are rebuilt on every (re)start."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GPSampler, QMCSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)


class AutoSampler(BaseSampler):
    """Enqueued baselines run first (Optuna pops them before sampling), then a scrambled Sobol
    start that covers the box evenly, then a Gaussian process once `n_startup_trials` completed.

    The choice is made once per trial (at search-space inference) so one trial never mixes the two.
    A score is a mean over prompts with a standard error of about 0.02 on the toy world, so the GP
    fits a noise variance (``deterministic_objective=False``) instead of interpolating lucky trials;
    the reported best is then chosen by confirmation (search.loop), not by the GP's observed maximum.
    """

    def __init__(self, *, seed: int | None = None, n_startup_trials: int = 10) -> None:
        self._n_startup = n_startup_trials
        with warnings.catch_warnings():  # "experimental" says nothing a user can act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._qmc = QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_asynchronous_seeding=False,
                                   warn_independent_sampling=False)
        self._gp = GPSampler(seed=seed, n_startup_trials=0, warn_independent_sampling=False,
                             deterministic_objective=False)
        self._random = RandomSampler(seed=seed)
        self._chosen: dict[int, BaseSampler] = {}

    def _for(self, study: optuna.Study, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._chosen:
            done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=False)
            self._chosen[trial.number] = self._gp if len(done) >= self._n_startup else self._qmc
        return self._chosen[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached before any trial completed (QMC infers its box from the first one).
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(study, trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        sampler = self._chosen.pop(trial.number, None)
        if sampler is not None:
            sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        for s in (self._qmc, self._gp, self._random):
            s.reseed_rng()


def _tpe(seed: int | None, startup: int) -> BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)


def _cmaes(seed: int | None, startup: int) -> BaseSampler:
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)


SAMPLERS: dict[str, Callable[[int | None, int], BaseSampler]] = {
    "auto": lambda seed, startup: AutoSampler(seed=seed, n_startup_trials=startup),
    "tpe": _tpe,
    "cmaes": _cmaes,
    "random": lambda seed, startup: RandomSampler(seed=seed),
}


def make_sampler(name: str, *, seed: int | None, n_startup_trials: int) -> BaseSampler:
    try:
        factory = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}") from None
    return factory(seed, n_startup_trials)
