"""optuna-dashboard for a run: per-trial notes, study figures, metric names, and a local server."""

from __future__ import annotations

import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard
import pandas as pd

# The note helpers that take storage ids: a finished trial has no live optuna.Trial to pass to save_note.
from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

from search.review import figures
from search.review.report import category_comparison
from search.review.run import ReviewError, RunFolder
from search.review.trials import (
    METRIC,
    OBJECTIVE,
    baselines,
    block_weights,
    completed,
    pick_trial,
    trial_recipe,
    weights_caption,
)
from search.trial_record import TrialRecord

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Notes end with this line while they are ours to refresh; a user who edits a note removes it.
NOTE_MARK = "_Written by `mergesearch dashboard` and kept up to date; delete this line to keep your own edits._"
WEIGHTS_FIGURE_ID = "best-block-weights"
CATEGORIES_FIGURE_ID = "best-vs-parents"


def _fmt(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):.3f}"


def trial_note(trial: TrialRecord, parents: dict[str, TrialRecord]) -> str:
    """Markdown: the trial's per-category scores on both splits beside each baseline's search score."""
    search, holdout = trial.search_categories, trial.holdout_categories
    header = f"## Trial {trial.number}: {METRIC} {_fmt(trial.search)}"
    if trial.negative_mass is not None:
        header += f", {OBJECTIVE} {_fmt(trial.objective)}"
    if trial.holdout is not None:
        header += f", held-out {_fmt(trial.holdout)}"
    if trial.confirm is not None:
        header += f", confirm {_fmt(trial.confirm)}"
    lines = [header, ""]
    if trial.baseline:
        lines += [f"Baseline: **{trial.baseline}**", ""]
    others = [(label, t) for label, t in sorted(parents.items()) if t.number != trial.number]
    cats = sorted(set(search) | set(holdout))
    if cats:
        lines.append("| category | search | held-out | " + " | ".join(label for label, _ in others) + " |")
        lines.append("|---|---:|---:|" + "---:|" * len(others))
        for cat in cats:
            theirs = [_fmt(t.search_categories.get(cat)) for _, t in others]
            lines.append(f"| {cat} | {_fmt(search.get(cat))} | {_fmt(holdout.get(cat))} | " + " | ".join(theirs) + " |")
        lines.append(f"| **overall** | {_fmt(trial.search)} | {_fmt(trial.holdout)} | "
                     + " | ".join(_fmt(t.search) for _, t in others) + " |")
        if others:
            lines += ["", "Baseline columns are their search-split scores."]
    else:
        lines.append("No per-category scores recorded.")
    if trial.holdout is None and trial.holdout_error:
        lines += ["", f"No held-out score: {trial.holdout_error}."]
    if trial.negative_mass is not None:
        lines += ["", f"{OBJECTIVE.capitalize()} {_fmt(trial.objective)} = {METRIC} {_fmt(trial.search)} less the "
                  f"negative-weight penalty (negative mass {_fmt(trial.negative_mass)})."]
    if trial.render_seconds is not None:
        lines += ["", f"Rendered in {trial.render_seconds:.1f} s"
                  + (f" on {trial.worker}" if trial.worker else "") + "."]
    if trial.missing:
        lines += ["", "Missing from this trial's record: " + ", ".join(trial.missing) + "."]
    return "\n".join(lines + ["", NOTE_MARK])


def study_note(study: optuna.Study) -> str:
    attrs = study.user_attrs
    lines = [f"## {study.study_name}", ""]
    for key in ("family", "tagger", "sampler", "prompt_set_hash", "config_hash"):
        if attrs.get(key) is not None:
            lines.append(f"- **{key}**: `{attrs[key]}`")
    for source in attrs.get("sources") or []:
        lines.append(f"- source **{source.get('name')}**: `{source.get('path')}` (sha256 `{str(source.get('sha256'))[:12]}`)")
    lines += ["", "Each trial's note holds its per-category scores beside the parents'. "
              "The study's figures show the best recipe's block weights and its categories against the parents."]
    from search import trial_record as record
    from search.comparison import summary_lines

    found = summary_lines(record.read_all(study))
    if found:
        lines += ["", "**Result** (paired bootstrap 95 % intervals over the same prompts and seeds):", ""]
        lines += [f"- {line}" for line in found]
    return "\n".join(lines + ["", NOTE_MARK])


def _save_if_ours(study: optuna.Study, system_attrs: dict, trial_id: int | None, body: str) -> None:
    """Write a note where there is none, or refresh one we wrote; a note the user edited stays."""
    note = get_note_from_system_attrs(system_attrs, trial_id)
    if note["version"] and (NOTE_MARK not in note["body"] or note["body"] == body):
        return
    save_note_with_version(study._storage, study._study_id, trial_id, note["version"] + 1, body)


def annotate_study(study: optuna.Study, *, last_best: int | None = None) -> int | None:
    """Write what the dashboard shows beyond Optuna's own pages; returns the best trial's number.

    Notes are written where none exists and refreshed while they carry NOTE_MARK, so a note the user
    edited in the dashboard (and took the mark out of) stays.
    Figures are rewritten under fixed ids when the best trial changes.
    """
    if study.metric_names is None:
        study.set_metric_names([METRIC])  # studies made before metric names were set (never penalised)
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    _save_if_ours(study, system_attrs, None, study_note(study))
    done = completed(study)
    parents = baselines(study)
    for trial in done:
        _save_if_ours(study, system_attrs, trial.trial_id, trial_note(trial, parents))
    if not done:
        return None
    best = pick_trial(study, "best")
    if best.number != last_best:
        try:
            recipe = trial_recipe(best)
            weights = block_weights(recipe)
        except ReviewError as exc:  # a study not made by `mergesearch search`: show the rest anyway
            print(f"dashboard: no block-weight figure ({exc})", file=sys.stderr)
        else:
            optuna_dashboard.save_plotly_graph_object(
                study,
                figures.weights_heatmap(
                    weights, title=f"Best recipe (trial {best.number}): {weights_caption(recipe)}, per block"),
                graph_object_id=WEIGHTS_FIGURE_ID,
            )
        comparison = category_comparison(study)["search"]
        if not comparison.empty:
            optuna_dashboard.save_plotly_graph_object(
                study,
                figures.category_bars(comparison, title=f"Per-category {METRIC} (search split): best vs parents"),
                graph_object_id=CATEGORIES_FIGURE_ID,
            )
    return best.number


def make_app(run: RunFolder):
    """The optuna-dashboard WSGI app on the run's storage and artifact store."""
    return optuna_dashboard.wsgi(run.open_storage(), artifact_store=run.artifact_store())


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-") -> None:  # one line per asset is noise
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class DashboardServer:
    """The dashboard served from a background thread; port 0 picks a free port."""

    def __init__(self, run: RunFolder, *, host: str = "127.0.0.1", port: int = 8080, refresh_s: float = 60.0):
        self.run = run
        self.study = run.open_study()
        self._best = annotate_study(self.study)
        self._server = make_server(host, port, make_app(run), server_class=_ThreadingServer,
                                   handler_class=_QuietHandler)
        self.host, self.port = host, self._server.server_port
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard"

    def start(self) -> DashboardServer:
        serve = threading.Thread(target=self._server.serve_forever, name="dashboard", daemon=True)
        refresh = threading.Thread(target=self._refresh_loop, name="dashboard-notes", daemon=True)
        self._threads = [serve, refresh]
        for thread in self._threads:
            thread.start()
        return self

    def _refresh_loop(self) -> None:
        # A search may still be running: notes and figures follow new trials.
        while not self._stop.wait(self._refresh_s):
            try:
                self._best = annotate_study(self.study, last_best=self._best)
            except Exception as exc:  # noqa: BLE001 - a busy database must not end the refreshes
                print(f"dashboard: notes not refreshed this time ({exc}); retrying in {self._refresh_s:.0f} s",
                      file=sys.stderr)

    def request_stop(self) -> None:
        """Ask wait() to return (safe from a signal handler); stop() then shuts the server down."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() (or the timeout); True once stopped."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._threads:  # shutdown() waits for serve_forever, which only runs once started
            self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
