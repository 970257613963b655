"""`mergesearch search CONFIG`: run (or resume) a merge search and print the closing table."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "search",
        help="search per-block merge weights that beat the parents (resumable)",
        description="Run a merge search from a YAML config. Running the same command again resumes the study: "
                    "trials left RUNNING by a stopped driver are retried and baselines are not repeated. "
                    "Ctrl-C (or SIGTERM, SIGHUP) stops after re-enqueuing the trials in flight. Several "
                    "drivers (terminals or hosts) may run one study: see the README's multi-host recipe.",
    )
    p.add_argument("config", type=Path, help="search config (YAML), e.g. configs/toyworld.yaml")
    p.add_argument("--trials", type=int, help="override budget.trials (total trials of the study)")
    p.add_argument("--hours", type=float, help="override budget.hours (wall time of this run)")
    p.add_argument("--workers", type=int, help="override workers.count")
    p.add_argument("--backend", choices=("local", "ray"), help="override workers.backend")
    p.add_argument("--sampler", help="override the sampler (auto, tpe, cmaes, random)")
    p.add_argument("--seed", type=int, help="override the sampler seed")
    p.add_argument("--name", help="override the run name (runs/<name>)")
    p.add_argument("--storage", help="override the storage URL (sqlite:///... or postgresql+psycopg://...)")
    p.add_argument("--runs-dir", help="override the folder run folders are made in (default runs)")
    p.add_argument("--fork", action="store_true",
                   help="the stored study has another space or benchmark: start a new study beside it")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--dry-run", action="store_true",
                   help="print the search dimensions, bounds and parameter count, measure a few batches and print "
                        "seconds per trial and trials per hour on this machine; run nothing, write nothing")
    p.add_argument("--no-measure", action="store_true", help="with --dry-run: print the space only")
    p.add_argument("--measure-batches", type=int, default=2, metavar="N",
                   help="with --dry-run: render batches timed after one warm-up batch (default 2)")
    p.set_defaults(handler=run)
    return p


OVERRIDES = {"trials": "budget.trials", "hours": "budget.hours", "workers": "workers.count",
             "backend": "workers.backend", "sampler": "sampler", "seed": "seed", "name": "name",
             "storage": "storage", "runs_dir": "runs_dir"}


def run(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, arg) for arg, key in OVERRIDES.items() if getattr(args, arg, None) is not None}
    t0 = time.time()
    dry = getattr(args, "dry_run", False)
    holder: dict = {}
    stop_signals = [sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig]
    previous = {sig: signal.getsignal(sig) for sig in stop_signals}

    def on_stop(signum, frame):  # Ctrl-C, `timeout`, `kill`, a closed terminal: stop cleanly; again: now
        if holder.get("stopping"):
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            raise KeyboardInterrupt
        holder["stopping"] = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\nstopping ({name}): trials in flight are re-enqueued for the next run (Ctrl-C again to abort)",
              file=sys.stderr)
        loop = holder.get("loop")
        if loop is not None:
            loop.request_stop("interrupted")
        # before the loop exists (loading, checking, starting workers) the stop is taken at the next
        # safe point: never as an exception somewhere inside a library, where it can be swallowed

    def on_loop(loop) -> None:
        holder["loop"] = loop
        for sig in stop_signals:  # ray.init replaces SIGTERM's handler with sys.exit: ours again
            signal.signal(sig, on_stop)
        if holder.get("stopping"):
            loop.request_stop("interrupted")

    for sig in stop_signals:  # installed first: a signal during the set-up is not lost either
        signal.signal(sig, on_stop)
    try:
        return _run(args, overrides, t0, dry, holder, on_loop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args, overrides, t0, dry, holder, on_loop) -> int:
    from search.config import ConfigError, load_config
    from search.progress import LiveView
    from search.results import closing_table
    from search.runner import prepare, run_search
    from search.study import StudyMismatchError
    from search.workers import NoWorkersLeft

    try:
        config = load_config(args.config, overrides=overrides,
                             option_names={key: "--" + arg.replace("_", "-") for arg, key in OVERRIDES.items()})
        prepared = prepare(config, config_text=args.config.read_text(encoding="utf-8"), open_storage=not dry)
    except ConfigError as exc:
        print(f"mergesearch search: {exc}", file=sys.stderr)
        return 2
    if dry:
        from search.dryrun import dry_run

        dry_run(prepared, measure=not args.no_measure, batches=args.measure_batches, out=sys.stdout)
        return 0
    if holder.get("stopping"):
        print("stopped before the search started; nothing was run", file=sys.stderr)
        return 130
    view = None if args.quiet else LiveView(budget_trials=config.budget.trials, budget_hours=config.budget.hours)
    w = config.workers
    print(f"search {config.name}: {len(prepared.sources)} models ({prepared.family}), "
          f"{len(prepared.space.dimensions())} dimensions, sampler {config.sampler}, "
          f"{w.count} {w.backend} worker(s), storage {prepared.config.storage_url}", file=sys.stderr)
    try:
        result = run_search(prepared, fork=args.fork, on_update=view, on_loop=on_loop)
    except StudyMismatchError as exc:
        print(f"mergesearch search: {exc}", file=sys.stderr)
        return 2
    except NoWorkersLeft as exc:
        print(f"mergesearch search: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\naborted", file=sys.stderr)
        return 130
    finally:
        if view:
            view.close()
        _shutdown_ray(w.backend)
    stats = result.stats
    from search import trial_record as record

    records = record.read_all(result.study)
    trials = records
    opened = result.opened
    resumed = "" if opened.created else f" (resumed; {len(opened.recovered)} stale trial(s) re-enqueued)"
    print(f"\nstudy {result.info.study_name}{resumed}: {len(trials)} trials stored, this run: "
          f"{stats.complete} complete, {stats.pruned} pruned, {stats.failed} failed, {stats.retried} retried "
          f"in {time.time() - t0:.0f} s")
    if stats.pruned:
        share = stats.saved_seconds / max(stats.render_seconds + stats.saved_seconds, 1e-9)
        print(f"pruning saved {stats.saved_seconds:.0f} s of rendering ({share:.0%} of the render time)")
    print(closing_table(records))
    folder = Path(result.info.config_path).parent
    print(f"run folder: {folder}  (mergesearch status / report / export)")
    others = [n for n in result.info.all_studies() if n != result.info.study_name]
    if others:
        print(f"this run folder also holds {', '.join(others)}: pass --study NAME to status / report / export")
    return 130 if stats.stopped == "interrupted" else 0


def _shutdown_ray(backend: str) -> None:
    if backend != "ray":
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
