"""Selection by confirmed score: with known true scores and known noise, the real search loop's
reported best (confirmed) is the truly best candidate clearly more often than the max of the
noisy search scores, and its true score is higher on average."""

import optuna
import pytest
from search_fakes import NoisyEvaluator

from merge_core import Recipe, Source
from search import trial_record as record
from search.config import SpaceSpec
from search.loop import LoopOptions, SearchLoop
from search.space import SearchSpace
from search.study import enqueue_baselines
from search.workers import EvaluatorSpec, LocalPool

BLOCKS = tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))
SOURCES = tuple(Source(path=f"/{m}.safetensors", name=m) for m in ("base", "a", "b"))


def one_search(seed: int, k: int = 5, confirm_prompts: int = 64) -> tuple[float, float, float, bool, bool]:
    space = SearchSpace.build(SpaceSpec(groups={"ALL": ("IN00-IN11", "M00", "OUT00-OUT11")}, default_bounds=(0, 1),
                                        components={"TE": "base", "VAE": "base"}),
                              ("base", "a", "b"), BLOCKS, ("TE", "VAE"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    enqueue_baselines(study, space)
    pool = LocalPool(EvaluatorSpec(factory="search_fakes:NoisyEvaluator", kwargs={"seed": seed, "confirm_prompts": confirm_prompts}))

    def make_recipe(params, number, baseline):
        return space.recipe(params, family="sd1", sources=SOURCES, baseline=baseline).model_dump_json()

    SearchLoop(study, space, pool, make_recipe=make_recipe,
               options=LoopOptions(trials=30, prune=False, holdout=False, confirm=True, confirm_top_k=k,
                                   confirm_every=10, poll_seconds=0.01)).run()
    records = record.read_all(study)
    true = {r.number: NoisyEvaluator.true_score(Recipe.model_validate_json(r.recipe)) for r in record.completed(records)}
    top = max(true.values())
    by_confirm, by_search = record.best(records), record.best_by_search(records)
    assert by_confirm.confirm is not None  # the final round confirmed the leaders
    return (top, true[by_confirm.number], true[by_search.number],
            true[by_confirm.number] == top, true[by_search.number] == top)


@pytest.mark.slow
def test_confirmed_best_is_the_true_best_more_often():
    # per-prompt noise 0.15 (0.027 on a 32-prompt search score); 5 leaders confirmed on 64 prompts.
    # Measured when written: true best picked 0.70 (confirmed) against 0.53 (max of search), mean regret
    # 0.0025 against 0.0076 (30 searches of 30 trials).
    runs = [one_search(seed) for seed in range(30)]
    hit_confirm = sum(r[3] for r in runs) / len(runs)
    hit_search = sum(r[4] for r in runs) / len(runs)
    regret_confirm = sum(r[0] - r[1] for r in runs) / len(runs)
    regret_search = sum(r[0] - r[2] for r in runs) / len(runs)
    print(f"true best picked: confirmed {hit_confirm:.2f}, max of search {hit_search:.2f}; "
          f"mean regret {regret_confirm:.4f} vs {regret_search:.4f}")
    assert hit_confirm >= hit_search + 0.15
    assert regret_confirm < 0.5 * regret_search


def test_confirmation_rounds_run_every_n_finished_trials_and_at_the_end():
    space = SearchSpace.build(SpaceSpec(groups={"ALL": ("IN00-IN11", "M00", "OUT00-OUT11")}, default_bounds=(0, 1),
                                        components={"TE": "base", "VAE": "base"}),
                              ("base", "a", "b"), BLOCKS, ("TE", "VAE"))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    enqueue_baselines(study, space)
    rounds = []

    class Spy(SearchLoop):
        def _confirm_round(self):
            rounds.append(self.stats.finished)
            return super()._confirm_round()

    def make_recipe(params, number, baseline):
        return space.recipe(params, family="sd1", sources=SOURCES, baseline=baseline).model_dump_json()

    pool = LocalPool(EvaluatorSpec(factory="search_fakes:NoisyEvaluator", kwargs={"fail_every": 4}))
    Spy(study, space, pool, make_recipe=make_recipe,
        options=LoopOptions(trials=25, prune=False, holdout=True, confirm=True, confirm_top_k=2, confirm_every=10,
                            poll_seconds=0.01)).run()
    assert rounds[:2] == [10, 20] and rounds[-1] == 25  # failed trials count as finished too
    records = record.read_all(study)
    assert sum(r.state == "FAIL" for r in records) >= 5
    best = record.best(records)
    assert best.confirm is not None and best.holdout is not None  # the confirmed best was checked on holdout
