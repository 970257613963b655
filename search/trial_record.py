"""What a trial stores, as one frozen model: written by the search loop, read by every command.

The study keeps a trial's facts as Optuna user attrs. This module is the only place that knows
their names: the loop writes through `write`/`write_stored` (and the `*_fields` helpers that turn
a worker's result into fields), and `status`, `report`, the dashboard, `export`,
`search.results` and the perf scripts read through `read`, which never raises on a study left
behind by a killed, interrupted, forked, concurrent or older run: a value that is absent or of the
wrong type becomes None and is named in `TrialRecord.missing` / `TrialRecord.invalid`.

Two quantities are easy to confuse and have one name each everywhere:
- `objective` — the value the sampler maximised (Optuna's trial value): the search split's tag
  recall less `negative_penalty` x negative weight mass when the config sets a penalty;
- `search` — the raw tag recall on the search split (stored under the attr `tag_recall`).
Without a penalty the two are equal. `holdout` and `confirm` are raw tag recall on those splits.

Scores per split (`search`, `holdout`, `confirm`): the mean tag recall over the split's prompts,
its standard error (sample standard deviation over prompts / sqrt(n), ddof=1), the recall per
category, and optionally the per-prompt recalls in prompt-set order (what a paired bootstrap
against another trial scored on the same prompts and seeds needs). `confirm` is the split that
re-scores the leaders; all of its fields are optional.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

SPLITS = ("search", "holdout", "confirm")
OBJECTIVE = "objective"  # display name of the value the sampler maximised
RECALL = "tag_recall"  # display name of the raw tag recall


def metric_name(negative_penalty: float) -> str:
    """The study's metric name (Optuna's `set_metric_names`): what the trial value is."""
    return OBJECTIVE if negative_penalty else RECALL


class TrialRecord(BaseModel):
    """One trial as the search stored it. Scores are tag recall in [0, 1]; times are seconds."""

    model_config = ConfigDict(frozen=True)

    number: int
    trial_id: int | None = None  # the storage's id (what storage-level calls such as notes take)
    state: str  # TrialState name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    objective: float | None = None  # Optuna's value (COMPLETE only); see the module docstring
    params: dict[str, Any] = {}  # the sampler's parameters (floats; categorical ones as stored)
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None

    recipe: str | None = None  # merge_core.Recipe JSON
    search: float | None = None  # raw tag recall, search split
    search_se: float | None = None
    search_categories: dict[str, float] = {}
    search_prompts: tuple[float, ...] | None = None
    holdout: float | None = None
    holdout_se: float | None = None
    holdout_categories: dict[str, float] = {}
    holdout_prompts: tuple[float, ...] | None = None
    holdout_error: str | None = None  # why the holdout check has no score (interrupted, crashed)
    confirm: float | None = None
    confirm_se: float | None = None
    confirm_categories: dict[str, float] = {}
    confirm_prompts: tuple[float, ...] | None = None
    confirm_error: str | None = None
    negative_mass: float | None = None  # sum of negative weights (only when the objective penalises it)

    baseline: str | None = None  # "parent:<name>" | "uniform" | "uniform:<method>" on baselines
    method_seed: int | None = None  # seed of a random merge method (DARE)
    render_seconds: float | None = None
    apply_seconds: float | None = None
    saved_seconds: float | None = None  # render time a pruned trial did not spend (estimated)
    worker: str | None = None
    driver: str | None = None  # the driver (host:pid) that asked this trial and alone may tell it
    fail_reason: str | None = None  # "crash: ...", "interrupted", "driver: ...", "proposal: ...", NaN text
    requeued: bool = False  # failed, and its params were enqueued again
    retry_of: int | None = None  # number of the trial this one repeats
    retry_reason: str | None = None  # crash | interrupted | driver

    missing: tuple[str, ...] = ()  # attrs a trial in this state should have but does not
    invalid: tuple[str, ...] = ()  # attrs present but unreadable (wrong type), ignored

    # ---- derived --------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE.name

    @property
    def penalised(self) -> bool:
        """True when the objective is not the raw recall (a negative-weight penalty applied)."""
        return self.negative_mass is not None and self.objective is not None and self.search is not None \
            and not math.isclose(self.objective, self.search, rel_tol=0.0, abs_tol=1e-12)

    @property
    def failed_for_good(self) -> bool:
        """FAIL and not enqueued again: counts against the budget."""
        return self.state == TrialState.FAIL.name and not self.requeued

    @property
    def confirmed_score(self) -> float | None:
        """What the reported best is chosen by: the mean over the search and confirm prompts together
        (None until confirmed). Pooling the two disjoint splits halves the variance of the confirm split
        alone; measured with a fake evaluator of known truth (tests/search/test_confirm_selection.py) it
        picked the truly best trial more often and with lower regret than the confirm score alone."""
        if self.confirm is None:
            return None
        a, b = self.search_prompts, self.confirm_prompts
        if a and b:
            return (sum(a) + sum(b)) / (len(a) + len(b))
        return self.confirm if self.search is None else (self.search + self.confirm) / 2

    def score(self, split: str) -> float | None:
        return getattr(self, _check_split(split))

    def se(self, split: str) -> float | None:
        return getattr(self, f"{_check_split(split)}_se")

    def categories(self, split: str) -> dict[str, float]:
        return getattr(self, f"{_check_split(split)}_categories")

    def prompts(self, split: str) -> tuple[float, ...] | None:
        return getattr(self, f"{_check_split(split)}_prompts")

    def why_no(self, split: str) -> str:
        """Why a split has no score, in words (for tables and notes)."""
        if self.score(split) is not None:
            return ""
        err = getattr(self, f"{split}_error", None) if split != "search" else None
        return err or f"no {split} score stored"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


# ---- attr names ----------------------------------------------------------------------------------
# field -> user attr key. Keys kept from the studies already on disk (`categories`, `tag_recall_raw`).
ATTRS: dict[str, str] = {
    "recipe": "recipe",
    "search": "tag_recall",
    "search_se": "search_se",
    "search_categories": "categories",
    "search_prompts": "search_prompts",
    **{f"{s}{suffix}": f"{s}{suffix}" for s in ("holdout", "confirm")
       for suffix in ("", "_se", "_categories", "_prompts", "_error")},
    "negative_mass": "negative_mass",
    "baseline": "baseline",
    "method_seed": "method_seed",
    "render_seconds": "render_seconds",
    "apply_seconds": "apply_seconds",
    "saved_seconds": "saved_seconds",
    "worker": "worker",
    "driver": "driver",
    "fail_reason": "fail_reason",
    "requeued": "requeued",
    "retry_of": "retry_of",
    "retry_reason": "retry_reason",
}
# older spellings still read (written by earlier versions or hand-made studies)
LEGACY: dict[str, tuple[str, ...]] = {"search": ("tag_recall_raw",), "fail_reason": ("error",)}


@cache
def _adapter(field: str) -> TypeAdapter:
    return TypeAdapter(TrialRecord.model_fields[field].annotation)


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number; a trial stores finite scores only")
    return value


def attrs(**fields: Any) -> dict[str, Any]:
    """Validate trial fields by name and type; return {user attr key: JSON value} (None dropped).

    Raises TypeError for an unknown field name and ValueError for a value of the wrong type."""
    out = {}
    for name, value in fields.items():
        if name not in ATTRS:
            raise TypeError(f"TrialRecord has no stored field {name!r}; fields: {', '.join(ATTRS)}")
        if value is None:
            continue
        try:
            checked = _adapter(name).validate_python(value)
        except ValidationError as exc:
            raise ValueError(f"trial field {name}: {exc.errors()[0]['msg']} (got {value!r:.80})") from None
        out[ATTRS[name]] = _json(checked)
    return out


def write(trial: optuna.Trial, **fields: Any) -> None:
    """Store fields on a live (RUNNING) trial of this driver."""
    for key, value in attrs(**fields).items():
        trial.set_user_attr(key, value)


def write_stored(storage: optuna.storages.BaseStorage, trial_id: int, **fields: Any) -> None:
    """Store fields on a RUNNING trial known by its storage id (no live optuna.Trial at hand)."""
    for key, value in attrs(**fields).items():
        storage.set_trial_user_attr(trial_id, key, value)


def split_fields(split: str, *, value: float | None, se: float | None = None,
                 categories: Mapping[str, float] | None = None,
                 prompts: Sequence[float] | None = None) -> dict[str, Any]:
    """The fields of one split's score (for `write`): value, standard error, categories, per prompt."""
    _check_split(split)
    return {split: value, f"{split}_se": se, f"{split}_categories": dict(categories or {}) or None,
            f"{split}_prompts": tuple(prompts) if prompts else None}


def result_fields(split: str, result: Any) -> dict[str, Any]:
    """Fields from a worker's `search.tasks.EvalResult` scored on `split`."""
    return split_fields(split, value=result.value, se=getattr(result, "se", None),
                        categories=result.categories, prompts=getattr(result, "prompt_scores", None) or None)


def standard_error(values: Sequence[float]) -> float | None:
    """Standard error of the mean: sample std (ddof=1) / sqrt(n); None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def write_finished(study: optuna.Study, number: int, group: str, **fields: Any) -> None:
    """Store fields for a trial that is already finished (Optuna refuses user attrs on those), e.g. a
    holdout check redone on resume or a confirm score of a leader. They go into one study system
    attr per (trial, group), `trial:<number>:<group>`, an upsert: concurrent drivers never lose each
    other's writes, and `read_all(study)` merges them over the trial's own attrs."""
    key = f"{LATE_PREFIX}{int(number)}:{group}"
    study._storage.set_study_system_attr(study._study_id, key, attrs(**fields))


LATE_PREFIX = "trial:"


def late_attrs(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """{trial number: user attrs stored after it finished}, from the study's system attrs."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in sorted(study._storage.get_study_system_attrs(study._study_id).items()):
        if not key.startswith(LATE_PREFIX) or not isinstance(value, dict):
            continue
        try:
            number = int(key[len(LATE_PREFIX):].split(":", 1)[0])
        except ValueError:
            continue
        out.setdefault(number, {}).update(value)
    return out


def enqueue_attrs(**fields: Any) -> dict[str, Any]:
    """User attrs for `study.enqueue_trial(..., user_attrs=...)` (baseline label, retry_of, ...)."""
    return attrs(**fields)


# ---- reading -------------------------------------------------------------------------------------
def _expected(state: str, record: dict[str, Any]) -> list[str]:
    if state == TrialState.COMPLETE.name:
        need = ["recipe", "search", "search_categories"]
    elif state == TrialState.FAIL.name:
        need = ["fail_reason"]
    else:
        need = []
    return [f for f in need if record.get(f) in (None, {}, ())]


def read(trial: FrozenTrial, late: Mapping[str, Any] | None = None) -> TrialRecord:
    """The record of a stored trial (`late`: attrs written after it finished, see `write_finished`).
    Never raises for absent or malformed attrs (see `missing`/`invalid`)."""
    raw = {**trial.user_attrs, **(late or {})}
    fields: dict[str, Any] = {}
    invalid = []
    for name, key in ATTRS.items():
        value = raw.get(key)
        if value is None:
            value = next((raw[k] for k in LEGACY.get(name, ()) if raw.get(k) is not None), None)
        if value is None:
            continue
        try:
            fields[name] = _adapter(name).validate_python(value)
        except ValidationError:
            invalid.append(key)
    state = trial.state.name
    objective = trial.value if trial.state == TrialState.COMPLETE else None
    if fields.get("search") is None and objective is not None and "negative_mass" not in fields:
        fields["search"] = objective  # written before the raw recall was always stored: unpenalised
    if state != TrialState.FAIL.name:  # recovery marks on a trial its live driver then finished
        fields.pop("requeued", None)
        fields.pop("fail_reason", None)
    params = dict(trial.params)
    return TrialRecord(number=trial.number, trial_id=trial._trial_id, state=state, objective=objective, params=params,
                       datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
                       missing=tuple(_expected(state, fields)), invalid=tuple(invalid), **fields)


def read_all(trials: optuna.Study | Iterable[FrozenTrial]) -> list[TrialRecord]:
    """Every trial's record; given the study, scores stored after a trial finished are merged in."""
    late: dict[int, dict[str, Any]] = {}
    if isinstance(trials, optuna.Study):
        late = late_attrs(trials)
        trials = trials.get_trials(deepcopy=False)
    return [read(t, late.get(t.number)) for t in trials]


def penalised_study(records: Iterable[TrialRecord]) -> bool:
    """True when the study's objective is the recall less a negative-weight penalty (the loop then
    stores `negative_mass` on every scored trial, zero or not)."""
    return any(r.negative_mass is not None for r in records)


def completed(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.complete and r.objective is not None]


def best(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The reported best: once any trial is confirmed (the leaders re-scored on the confirm split), the
    confirmed trial with the highest `confirmed_score`; before that the highest objective; the first
    of equals; None when nothing completed."""
    done = completed(records)
    confirmed = [r for r in done if r.confirm is not None]
    if confirmed:
        return max(confirmed, key=lambda r: r.confirmed_score)
    return max(done, key=lambda r: r.objective) if done else None


def best_by_search(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The completed trial with the highest objective (what the sampler saw), or None."""
    done = completed(records)
    return max(done, key=lambda r: r.objective) if done else None


def baselines(records: Iterable[TrialRecord]) -> dict[str, TrialRecord]:
    """Completed baselines by label; a retried baseline's latest completion wins."""
    found: dict[str, TrialRecord] = {}
    for r in completed(records):
        if r.baseline:
            found[r.baseline] = r
    return found


def gaps(records: Iterable[TrialRecord]) -> list[str]:
    """What the stored trials lack, one line per kind (empty when nothing is missing)."""
    records = list(records)
    lines = []
    for field in ("recipe", "search", "search_categories", "fail_reason"):
        who = [r.number for r in records if field in r.missing]
        if who:
            lines.append(f"{len(who)} trial(s) have no {ATTRS[field]!r} ({_numbers(who)})")
    bad = sorted({k for r in records for k in r.invalid})
    for key in bad:
        who = [r.number for r in records if key in r.invalid]
        lines.append(f"{len(who)} trial(s) have an unreadable {key!r} ({_numbers(who)}); ignored")
    no_holdout = [r.number for r in completed(records) if r.baseline and r.holdout is None]
    if no_holdout:
        lines.append(f"{len(no_holdout)} baseline(s) have no holdout score ({_numbers(no_holdout)}); "
                     "the next `mergesearch search` scores them")
    return lines


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(f"#{n}" for n in numbers[:8])
    return shown + (f" and {len(numbers) - 8} more" if len(numbers) > 8 else "")
