"""Which sampler copes with a noisy objective? A synthetic stand-in for the toy world, no rendering.

The objective is a smooth function of 12 search dimensions (3 groups x 4 weights, bounds [-0.3, 1.2],
the shape of configs/toyworld.yaml) plus Gaussian noise with the standard error the toy world's
64-prompt search split has (about 0.02). Each sampler runs 40 trials from the same five baselines;
we report the true value of the best-by-observed trial, of the best of the top 5 re-scored without
noise (what confirmation approximates), and the mean true value of the top 5 by observed value.

    .venv/bin/python tests/perf/sampler_noise.py [--seeds 5] [--trials 40] [--noise 0.02]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from search.samplers import AutoSampler  # noqa: E402

DIMS = [f"{g}.{m}" for g in ("IN", "MID", "OUT", "TE") for m in ("a", "b", "c")]


def true_value(x: np.ndarray) -> float:
    # each group has its own optimum: one model strong, another partly; interactions between groups
    target = np.array([0.9, 0.3, 0.0, 0.1, 0.1, 0.8, 0.0, 1.0, 0.4, 0.6, 0.2, 0.2])
    d = x - target
    return float(0.62 - 0.08 * np.sum(d ** 2) - 0.05 * (d[0] * d[7]) + 0.02 * np.sin(3 * x[4]))


def run(sampler: optuna.samplers.BaseSampler, seed: int, trials: int, noise: float) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed + 1000)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for onehot in np.eye(3).tolist() + [[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]]:  # the baselines
        study.enqueue_trial({d: onehot[i % 3] for i, d in enumerate(DIMS)})
    truth = {}

    def objective(trial: optuna.Trial) -> float:
        x = np.array([trial.suggest_float(d, -0.3, 1.2) for d in DIMS])
        truth[trial.number] = true_value(x)
        return truth[trial.number] + rng.normal(0, noise)

    study.optimize(objective, n_trials=trials)
    done = sorted(study.trials, key=lambda t: -t.value)
    top5 = [truth[t.number] for t in done[:5]]
    return truth[done[0].number], max(top5), float(np.mean(top5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--noise", type=float, default=0.02)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    samplers = {
        "auto (GP, noise learned)": lambda s: AutoSampler(seed=s, n_startup_trials=13),
        "GP, deterministic": lambda s: _auto_deterministic(s),
        "tpe": lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=13, multivariate=True),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
    }
    print(f"{args.seeds} seeds x {args.trials} trials, noise sd {args.noise}; true values (optimum 0.62)")
    print(f"{'sampler':<26} {'best-by-observed':>17} {'best of top 5':>14} {'top-5 mean':>11} {'s/run':>6}")
    for name, make in samplers.items():
        t0 = time.perf_counter()
        res = np.array([run(make(s), s, args.trials, args.noise) for s in range(args.seeds)])
        m = res.mean(axis=0)
        print(f"{name:<26} {m[0]:>17.4f} {m[1]:>14.4f} {m[2]:>11.4f} {(time.perf_counter() - t0) / args.seeds:>6.1f}")
    return 0


def _auto_deterministic(seed: int) -> optuna.samplers.BaseSampler:
    s = AutoSampler(seed=seed, n_startup_trials=13)
    s._gp = optuna.samplers.GPSampler(seed=seed, n_startup_trials=0, deterministic_objective=True)
    return s


if __name__ == "__main__":
    raise SystemExit(main())
