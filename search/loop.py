"""The search loop: asynchronous ask/tell keeping every worker busy (no generation barrier).

Only this driver talks to the storage. Each finished candidate gets its recipe, per-category
scores and contact sheet (uploaded before tell); a crash fails the trial and re-enqueues its params
once; NaN/blank renders fail it for good. Every baseline is also scored on the holdout split before
it is told.

Confirmation (when the prompt set has a confirm split): after every `confirm_every` finished trials,
and once more when the budget is spent, the baselines and the `confirm_top_k` leaders by objective
are re-scored on the confirm split, and the best confirmed trial on the holdout split. These scores
of finished trials are stored with `trial_record.write_finished`. The reported best is the best
confirmed trial (`trial_record.best`), not the maximum of noisy search scores. Without a confirm
split, the best-by-search trial is scored on holdout before it is told, as baselines are.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

from search import trial_record as record
from search.space import Params, SearchSpace
from search.study import fail_running, finished_count
from search.tasks import EvalResult, EvalTask
from search.workers import Crash, WorkerPool


@dataclass(frozen=True)
class LoopOptions:
    trials: int | None = None
    hours: float | None = None
    poll_seconds: float = 1.0
    prune: bool = True
    prune_startup_trials: int = 5
    prune_warmup_batches: int = 1
    prune_percentile: float = 30.0
    holdout: bool = True
    negative_penalty: float = 0.0
    confirm: bool = False
    confirm_top_k: int = 3
    confirm_every: int = 20


@dataclass
class LoopStats:
    started_at: float = field(default_factory=time.time)
    finished_before: int = 0  # trials already counted against the budget when this run began
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    retried: int = 0
    running: int = 0
    best_value: float | None = None
    best_number: int | None = None
    best_holdout: float | None = None
    confirmed: int = 0  # confirm-split scores computed by this run
    confirming: int = 0  # confirm/holdout scorings of finished trials in flight or queued
    render_seconds: float = 0.0
    saved_seconds: float = 0.0
    apply_seconds: float = 0.0
    stopped: str = ""

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


@dataclass
class _Flight:
    trial: optuna.Trial
    params: Params
    recipe: str
    value: float | None = None  # set while waiting for the holdout score
    result: EvalResult | None = None


def frozen_of(trial: optuna.Trial):
    """The stored state of a live trial (its attrs as the storage holds them)."""
    return trial.study._storage.get_trial(trial._trial_id)


class SearchLoop:
    def __init__(self, study: optuna.Study, space: SearchSpace, pool: WorkerPool, *,
                 make_recipe: Callable[[Params, int, str | None], str], options: LoopOptions,
                 artifact_dir: str | Path | None = None,
                 on_update: Callable[[LoopStats], None] | None = None) -> None:
        self.study, self.space, self.pool = study, space, pool
        self.make_recipe, self.options, self.on_update = make_recipe, options, on_update
        self.store = FileSystemArtifactStore(str(artifact_dir)) if artifact_dir else None
        self.stats = LoopStats(finished_before=finished_count(study))
        self._flights: dict[int, _Flight] = {}  # trial number -> in-flight trial
        self._queue: list[EvalTask] = []  # holdout tasks, served before new trials
        self._next_task = 0
        self._stop = False
        self._late: set[tuple[int, str]] = set()  # (trial number, split) scored after the trial finished
        self._since_confirm = 0
        best = record.best(record.read_all(study))
        if best is not None:
            self.stats.best_value, self.stats.best_number = best.objective, best.number
            self.stats.best_holdout = best.holdout

    def request_stop(self, reason: str = "interrupted") -> None:
        self._stop = True
        self.stats.stopped = reason

    # ---- budget ----------------------------------------------------------------------------------
    def _may_ask(self) -> bool:
        o = self.options
        if o.hours is not None and time.time() - self.stats.started_at >= o.hours * 3600:
            self.stats.stopped = self.stats.stopped or "time budget reached"
            return False
        if o.trials is not None:
            counted = self.stats.finished_before + self.stats.finished + len(self._flights)
            if counted >= o.trials:
                return False
        return True

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> LoopStats:
        try:
            while not self._stop:
                self._fill()
                if not self.pool.in_flight() and self.pool.idle() > 0:
                    if self._confirm_round():  # the budget is spent: confirm the leaders once more
                        continue
                    break  # idle workers and nothing left to give them (no idle worker = restarting)
                for outcome in self.pool.poll(self.options.poll_seconds):
                    self._handle(outcome)
                self.stats.running = len(self._flights)
                self.stats.confirming = len(self._late)
                if self.on_update:
                    self.on_update(self.stats)
        finally:
            self._abandon_in_flight()
        self.stats.running = 0
        if self.on_update:
            self.on_update(self.stats)
        return self.stats

    def _fill(self) -> None:
        while self.pool.idle() > 0 and not self._stop:
            if self._queue:
                self.pool.submit(self._queue.pop(0))
                continue
            if not self._may_ask():
                return
            trial = self.study.ask()
            try:
                params = self.space.suggest(trial)
                recipe = self.make_recipe(params, trial.number, trial.user_attrs.get("baseline"))
            except Exception as exc:  # a sampler or recipe error fails this trial, not the search
                record.write(trial, fail_reason=f"proposal: {type(exc).__name__}: {exc}")
                self.study.tell(trial, state=TrialState.FAIL)
                self.stats.failed += 1
                continue
            record.write(trial, recipe=recipe)
            self._flights[trial.number] = _Flight(trial=trial, params=params, recipe=recipe)
            baseline = record.read(frozen_of(trial)).baseline is not None
            self._submit(trial.number, recipe, "search", () if baseline else self._prune_thresholds())

    def _submit(self, number: int, recipe: str, split: str, prune_below: tuple[float | None, ...]) -> None:
        task = EvalTask(task_id=self._next_task, trial_number=number, split=split, recipe=recipe,
                        prune_below=prune_below)
        self._next_task += 1
        if split != "search" and self.pool.idle() == 0:
            self._queue.append(task)
        else:
            self.pool.submit(task)

    def _prune_thresholds(self) -> tuple[float | None, ...]:
        """Percentile of completed trials' running scores per batch (Optuna's PercentilePruner rule)."""
        o = self.options
        if not o.prune:
            return ()
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < o.prune_startup_trials:
            return ()
        steps = max((max(t.intermediate_values, default=-1) for t in done), default=-1) + 1
        out: list[float | None] = []
        for step in range(steps):
            vals = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
            out.append(float(np.percentile(vals, o.prune_percentile)) if step >= o.prune_warmup_batches and vals
                       else None)
        return tuple(out)

    # ---- outcomes --------------------------------------------------------------------------------
    def _handle(self, outcome: EvalResult | Crash) -> None:
        task = outcome.task if isinstance(outcome, Crash) else None
        number = task.trial_number if task else outcome.trial_number
        split = task.split if task else outcome.split
        if (number, split) in self._late:
            self._finish_late(number, split, outcome)
            return
        flight = self._flights.get(number)
        if flight is None:  # stale (e.g. a trial abandoned already)
            return
        if split == "holdout":
            self._finish_holdout(flight, outcome)
        elif isinstance(outcome, Crash):
            self._crashed(flight, outcome.error)
        else:
            self._finish_search(flight, outcome)

    def _crashed(self, flight: _Flight, error: str) -> None:
        t = flight.trial
        mine = record.read(t.study._storage.get_trial(t._trial_id))
        first = not (mine.retry_of is not None and mine.retry_reason == "crash")
        frozen = self.study._storage.get_trial(t._trial_id)
        fail_running(self.study, frozen, reason="crash", detail=error, retry=first)
        del self._flights[t.number]
        if first:
            self.stats.retried += 1
        else:
            self.stats.failed += 1

    def _finish_search(self, flight: _Flight, r: EvalResult) -> None:
        t = flight.trial
        for step, v in enumerate(r.intermediate):
            t.report(v, step)
        record.write(t, render_seconds=round(r.render_seconds, 3), apply_seconds=round(r.apply_seconds, 3),
                     worker=r.worker)
        self.stats.render_seconds += r.render_seconds
        self.stats.apply_seconds += r.apply_seconds
        if r.status == "failed":
            record.write(t, fail_reason=r.error or "failed")
            self.study.tell(t, state=TrialState.FAIL)
            self.stats.failed += 1
            del self._flights[t.number]
            self._count_for_confirmation()
            return
        if r.status == "pruned":
            record.write(t, saved_seconds=round(r.saved_seconds, 3))
            self.stats.saved_seconds += r.saved_seconds
            self.study.tell(t, state=TrialState.PRUNED)
            self.stats.pruned += 1
            del self._flights[t.number]
            self._count_for_confirmation()
            return
        value = float(r.value)  # the raw tag recall; the objective is what the sampler is told
        mass = self.space.negative_mass(flight.params) if self.options.negative_penalty else None
        record.write(t, **record.result_fields("search", r), negative_mass=mass)
        if mass is not None:
            value -= self.options.negative_penalty * mass
        self._upload_sheet(t, r.sheet)
        flight.value, flight.result = value, r
        is_best = self.stats.best_value is None or value > self.stats.best_value
        if is_best:
            self.stats.best_value, self.stats.best_number, self.stats.best_holdout = value, t.number, None
        baseline = record.read(frozen_of(t)).baseline
        if self.options.holdout and (baseline or (is_best and not self.options.confirm)):
            self._submit(t.number, flight.recipe, "holdout", ())
        else:
            self._tell_complete(flight)

    def _finish_holdout(self, flight: _Flight, r: EvalResult | Crash) -> None:
        t = flight.trial
        if isinstance(r, Crash) or r.status != "ok":
            record.write(t, holdout_error=r.error if isinstance(r, Crash) else (r.error or r.status))
        else:
            record.write(t, **record.result_fields("holdout", r))
            if self.stats.best_number == t.number:
                self.stats.best_holdout = float(r.value)
        self._tell_complete(flight)

    def _tell_complete(self, flight: _Flight) -> None:
        self.study.tell(flight.trial, flight.value)
        self.stats.complete += 1
        del self._flights[flight.trial.number]
        self._count_for_confirmation()

    def _count_for_confirmation(self) -> None:
        """A trial finished (complete, pruned or failed): a confirmation round every `confirm_every`."""
        self._since_confirm += 1
        if self._since_confirm >= self.options.confirm_every and not self._stop:
            self._confirm_round()

    # ---- confirmation ----------------------------------------------------------------------------
    def _confirm_round(self) -> bool:
        """Submit confirm-split scoring for the baselines and the top-k leaders that lack it, and the
        holdout check of the best confirmed trial; True when anything was submitted."""
        self._since_confirm = 0
        if not self.options.confirm or self._stop:
            return False
        records = record.read_all(self.study)
        done = record.completed(records)
        leaders = sorted((r for r in done if not r.baseline), key=lambda r: -r.objective)[: self.options.confirm_top_k]
        submitted = False
        for r in [*(r for r in done if r.baseline), *leaders]:
            submitted |= self._submit_late(r, "confirm")
        return self._holdout_for_best(records) or submitted

    def _holdout_for_best(self, records) -> bool:
        best = record.best(records)
        if not self.options.holdout or best is None or best.confirm is None:
            return False
        return self._submit_late(best, "holdout")

    def _submit_late(self, r: record.TrialRecord, split: str) -> bool:
        if r.score(split) is not None or r.recipe is None or getattr(r, f"{split}_error") is not None \
                or (r.number, split) in self._late:
            return False
        self._late.add((r.number, split))
        self._submit(r.number, r.recipe, split, ())
        return True

    def _finish_late(self, number: int, split: str, r: EvalResult | Crash) -> None:
        self._late.discard((number, split))
        if isinstance(r, Crash) or r.status != "ok":
            error = r.error if isinstance(r, Crash) else (r.error or r.status)
            record.write_finished(self.study, number, split, **{f"{split}_error": error})
            return
        record.write_finished(self.study, number, split, **record.result_fields(split, r))
        if split == "confirm":
            self.stats.confirmed += 1
            self._holdout_for_best(record.read_all(self.study))

    def _upload_sheet(self, trial: optuna.Trial, sheet: bytes | None) -> None:
        if not sheet or self.store is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number:05d}-sheet.webp"
            path.write_bytes(sheet)
            upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                            mimetype="image/webp")

    def _abandon_in_flight(self) -> None:
        """On stop: in-flight trials are failed and re-enqueued so the next run evaluates them."""
        for number, flight in list(self._flights.items()):
            if flight.value is not None:  # scored, only its holdout check was pending: keep the score
                record.write(flight.trial, holdout_error="search stopped before the holdout check")
                self._tell_complete(flight)
                continue
            frozen = self.study._storage.get_trial(flight.trial._trial_id)
            if frozen.state == TrialState.RUNNING:
                fail_running(self.study, frozen, reason="interrupted", retry=True)
            del self._flights[number]
        self._queue.clear()
        self.pool.close()
