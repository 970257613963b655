"""The search loop: asynchronous ask/tell keeping every worker busy (no generation barrier).

Several drivers may run one study (search/liveness.py): each tells only the trials it asked, beats
for them while they are in flight, asks under the study lock so the budget counts every driver's
trials, recovers trials whose driver stopped, and waits for other drivers' trials before it exits.
A holdout check an earlier run lost is redone first. Each finished candidate gets its recipe, per-category
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

import contextlib
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
from search.liveness import DEFAULT_GRACE, DEFAULT_INTERVAL, Heartbeat, StudyLock, driver_id
from search.space import Params, SearchSpace
from search.study import fail_running, finished_count, recover_stale
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
    heartbeat_seconds: float = DEFAULT_INTERVAL
    grace_seconds: float = DEFAULT_GRACE


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
    recovered: int = 0  # other drivers' stale trials this driver failed and re-enqueued
    taken_over: int = 0  # own trials another driver recovered first (this one stalled past the grace period)
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
                 on_update: Callable[[LoopStats], None] | None = None, lock: StudyLock | None = None) -> None:
        self.study, self.space, self.pool = study, space, pool
        self.make_recipe, self.options, self.on_update = make_recipe, options, on_update
        self.store = FileSystemArtifactStore(str(artifact_dir)) if artifact_dir else None
        self.lock = lock
        self.driver = driver_id()
        self.heartbeat = Heartbeat(study._storage, options.heartbeat_seconds)
        self.stats = LoopStats(finished_before=finished_count(study))
        self._flights: dict[int, _Flight] = {}  # trial number -> in-flight trial
        self._queue: list[EvalTask] = []  # holdout tasks, served before new trials
        self._next_task = 0
        self._stop = False
        self._late: set[tuple[int, str]] = set()  # (trial number, split) scored after the trial finished
        self._since_confirm = 0
        self._recovered_at = time.monotonic()
        records = record.read_all(study)
        best = record.best(records)
        self._best: tuple[float, int] | None = None  # best objective scored so far, told or not
        if best is not None:
            self.stats.best_value, self.stats.best_number = best.objective, best.number
            self.stats.best_holdout = best.holdout
        top = record.best_by_search(records)
        if top is not None:
            self._best = (top.objective, top.number)
        if options.holdout:
            self._redo_holdout(records, best)

    def request_stop(self, reason: str = "interrupted") -> None:
        self._stop = True
        self.stats.stopped = reason

    def _locked(self):
        return self.lock.held() if self.lock else contextlib.nullcontext()

    def _redo_holdout(self, records: list[record.TrialRecord], best: record.TrialRecord | None) -> None:
        """Baselines (and the best) whose holdout check an earlier run lost are scored again first."""
        for r in record.completed(records):
            # (an error other than a cut-short check, e.g. a render that failed, is not retried)
            lost = r.holdout_error is None or r.holdout_error.startswith("search stopped")
            if r.holdout is None and r.recipe and lost and (r.baseline or (best is not None and r.number == best.number)):
                self._late.add((r.number, "holdout"))
                self._queue.append(self._task(r.number, r.recipe, "holdout", ()))

    # ---- budget ----------------------------------------------------------------------------------
    def _may_ask(self) -> bool:
        """Call under the study lock: the budget counts every driver's trials, so several drivers on
        one study stop at exactly `trials` (a failed trial that was re-enqueued is not counted)."""
        o = self.options
        if o.hours is not None and time.time() - self.stats.started_at >= o.hours * 3600:
            self.stats.stopped = self.stats.stopped or "time budget reached"
            return False
        if o.trials is not None:
            trials = record.read_all(self.study.get_trials(deepcopy=False))
            if any(r.state == "WAITING" for r in trials):
                return True  # ask pops an enqueued trial (baseline, retry): no new slot
            if sum(1 for r in trials if not (r.state == "FAIL" and r.requeued)) >= o.trials:
                return False
        return True

    def _others_running(self) -> bool:
        """Trials another driver has in flight (they may yet need recovery) or enqueued."""
        if self.stats.stopped:
            return False
        states = (TrialState.RUNNING, TrialState.WAITING)
        return any(t.number not in self._flights for t in self.study.get_trials(deepcopy=False, states=states))

    def _maybe_recover(self) -> None:
        if time.monotonic() - self._recovered_at < self.options.heartbeat_seconds:
            return
        self._recovered_at = time.monotonic()
        with self._locked():
            self.stats.recovered += len(recover_stale(self.study, grace_seconds=self.options.grace_seconds))

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> LoopStats:
        self.heartbeat.start()
        try:
            while not self._stop:
                self._maybe_recover()
                self._fill()
                if not self.pool.in_flight() and self.pool.idle() > 0:
                    if self._confirm_round():  # the budget is spent: confirm the leaders once more
                        continue
                    if self._stop or not self._others_running():
                        break  # idle workers and nothing left to give them (no idle worker = restarting)
                    time.sleep(self.options.poll_seconds)  # another driver's trials may still need recovering
                    continue
                for outcome in self.pool.poll(self.options.poll_seconds):
                    self._handle(outcome)
                self.stats.running = len(self._flights)
                self.stats.confirming = len(self._late)
                if self.on_update:
                    self.on_update(self.stats)
        finally:
            try:
                self._abandon_in_flight()
            finally:
                self.heartbeat.stop()
        self.stats.running = 0
        if self.on_update:
            self.on_update(self.stats)
        return self.stats

    def _fill(self) -> None:
        while self.pool.idle() > 0 and not self._stop:
            if self._queue:
                self.pool.submit(self._queue.pop(0))
                continue
            with self._locked():
                if not self._may_ask():
                    return
                trial = self.study.ask()
                record.write(trial, driver=self.driver)
                self.heartbeat.add(trial._trial_id)
            try:
                params = self.space.suggest(trial)
                recipe = self.make_recipe(params, trial.number, trial.user_attrs.get("baseline"))
            except Exception as exc:  # a sampler or recipe error fails this trial, not the search
                record.write(trial, fail_reason=f"proposal: {type(exc).__name__}: {exc}")
                self.study.tell(trial, state=TrialState.FAIL)
                self.heartbeat.discard(trial._trial_id)
                self.stats.failed += 1
                continue
            record.write(trial, recipe=recipe)
            self._flights[trial.number] = _Flight(trial=trial, params=params, recipe=recipe)
            baseline = record.read(frozen_of(trial)).baseline is not None
            self._submit(trial.number, recipe, "search", () if baseline else self._prune_thresholds())

    def _task(self, number: int, recipe: str, split: str, prune_below: tuple[float | None, ...]) -> EvalTask:
        self._next_task += 1
        return EvalTask(task_id=self._next_task - 1, trial_number=number, split=split, recipe=recipe,
                        prune_below=prune_below)

    def _submit(self, number: int, recipe: str, split: str, prune_below: tuple[float | None, ...]) -> None:
        task = self._task(number, recipe, split, prune_below)
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
        if flight is None:
            return  # stale (e.g. a trial abandoned already)
        try:
            if split == "holdout":
                self._finish_holdout(flight, outcome)
            elif isinstance(outcome, Crash):
                self._crashed(flight, outcome.error)
            else:
                self._finish_search(flight, outcome)
        except optuna.exceptions.UpdateFinishedTrialError:
            # another driver took this trial for a stopped driver's (this one stalled past the grace
            # period) and re-enqueued it; its retry will be scored, so this result is dropped
            self._drop(number)
            self.stats.taken_over += 1

    def _drop(self, number: int) -> None:
        flight = self._flights.pop(number, None)
        if flight is not None:
            self.heartbeat.discard(flight.trial._trial_id)

    def _crashed(self, flight: _Flight, error: str) -> None:
        t = flight.trial
        mine = record.read(t.study._storage.get_trial(t._trial_id))
        first = not (mine.retry_of is not None and mine.retry_reason == "crash")
        frozen = self.study._storage.get_trial(t._trial_id)
        fail_running(self.study, frozen, reason="crash", detail=error, retry=first)
        self._drop(t.number)
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
            self._drop(t.number)
            self._count_for_confirmation()
            return
        if r.status == "pruned":
            record.write(t, saved_seconds=round(r.saved_seconds, 3))
            self.stats.saved_seconds += r.saved_seconds
            self.study.tell(t, state=TrialState.PRUNED)
            self.stats.pruned += 1
            self._drop(t.number)
            self._count_for_confirmation()
            return
        value = float(r.value)  # the raw tag recall; the objective is what the sampler is told
        mass = self.space.negative_mass(flight.params) if self.options.negative_penalty else None
        record.write(t, **record.result_fields("search", r), negative_mass=mass)
        if mass is not None:
            value -= self.options.negative_penalty * mass
        self._upload_sheet(t, r.sheet)
        flight.value, flight.result = value, r
        is_best = self._best is None or value > self._best[0]
        if is_best:
            self._best = (value, t.number)
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
        self._tell_complete(flight)

    def _tell_complete(self, flight: _Flight) -> None:
        t = flight.trial
        self.study.tell(t, flight.value)
        self.stats.complete += 1
        self._drop(t.number)
        # the live line shows a best only once it is told (and counted as complete)
        if self.stats.best_value is None or flight.value > self.stats.best_value:
            self.stats.best_value, self.stats.best_number = flight.value, t.number
            self.stats.best_holdout = record.read(frozen_of(t)).holdout
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
        # leaders first: while a round runs, the reported best is the best confirmed so far, and a
        # leader (not the base, often the first baseline done) is the one a watcher should see
        for r in [*leaders, *(r for r in done if r.baseline)]:
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
        elif split == "holdout" and self.stats.best_number == number:
            self.stats.best_holdout = float(r.value)

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
            try:
                if flight.value is not None:  # scored, only its holdout check was pending: keep the score
                    record.write(flight.trial, holdout_error="search stopped before the holdout check")
                    self._tell_complete(flight)
                    continue
                frozen = self.study._storage.get_trial(flight.trial._trial_id)
                if frozen.state == TrialState.RUNNING:
                    fail_running(self.study, frozen, reason="interrupted", retry=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                self.stats.taken_over += 1  # another driver recovered it already
            self._drop(number)
        self._queue.clear()
        self.pool.close()
