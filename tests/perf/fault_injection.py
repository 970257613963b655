"""Fault injection: run a search, and at random points send SIGINT, SIGTERM or SIGKILL to the driver
or (Ray backend) to a worker, restart it, N times; then finish the budget and check the study's
invariants and that `status`, `report` and `export` work on what is left.

    .venv/bin/python tests/perf/fault_injection.py [--faults 20] [--backend local|ray] [--seed 0]

The search is the real driver (`mergesearch search`, search/loop.py, SQLite storage) over tiny SD1
checkpoints, with the stand-in evaluator of tests/search/search_fakes.py in place of rendering (so
20 faults take minutes, not hours; the signals, the storage and the recovery are the product's own).
Exit status 0 when every invariant holds; the counts are printed as a table.

Invariants: no trial RUNNING or WAITING at the end; trials counted against the budget = the budget;
each baseline enqueued once and completed once; every re-enqueued trial repeated exactly once with
the same params; every FAIL says why; every completed trial has its recipe and scores; each
command (status, report, export) exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "search"
sys.path[:0] = [str(ROOT), str(TESTS)]
DRIVER = TESTS / "search_cli_driver.py"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", type=int, default=20)
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--trials", type=int, default=160, help="the study's budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    args = p.parse_args()

    import optuna
    import yaml
    from search_helpers import search_config, tiny_sd1

    from search import trial_record as record
    from search.study import finished_count

    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="fault-injection-"))
    root.mkdir(parents=True, exist_ok=True)
    models = {n: tiny_sd1(root / f"{n}.safetensors", seed=i) for i, n in enumerate(("base", "a", "b"))}
    workers = {"poll_seconds": 0.2, "heartbeat_seconds": 1.0, "grace_seconds": 5.0}
    if args.backend == "ray":
        workers.update(backend="ray", count=2)
    cfg = search_config(root, models, budget={"trials": args.trials}, workers=workers)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    url = f"sqlite:///{root / 'runs' / 't' / 'study.db'}"
    env = {**os.environ, "FAKE_EVALUATOR": json.dumps({"batches": 2, "batch_seconds": 0.2})}
    env.pop("RAY_AUTH_MODE", None)

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(DRIVER), "search", str(root / "cfg.yaml"), "--quiet"],
                                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def worker_pids(study) -> list[int]:
        pids = {int(r.worker.rsplit(":", 1)[1]) for r in record.read_all(study)[-6:]
                if r.worker and r.worker.startswith("ray-")}
        return [p for p in pids if _alive(p)]

    counts: Counter = Counter()
    tracebacks = 0
    for i in range(args.faults):
        proc = start()
        started = time.time()
        # a random point: one fault in five during the set-up (imports, storage, study, workers), the
        # others at a random moment once trials run
        if rng.random() < 0.2:
            delay = rng.uniform(0.5, 8.0)
        else:
            before = _load(optuna, url)
            n0 = len(before.get_trials(deepcopy=False)) if before is not None else 0
            while proc.poll() is None and time.time() - started < 300:
                study = _load(optuna, url)
                if study is not None and len(study.get_trials(deepcopy=False)) > n0:
                    break
                time.sleep(0.2)
            delay = time.time() - started + rng.uniform(0.0, 6.0)
        while time.time() - started < delay and proc.poll() is None:
            time.sleep(0.1)
        if proc.poll() is not None:
            counts["run ended before its fault (budget reached)"] += 1
            break
        kinds = ["SIGINT driver", "SIGTERM driver", "SIGKILL driver"]
        study = _load(optuna, url)
        if args.backend == "ray" and study is not None and worker_pids(study):
            kinds.append("SIGKILL worker")
        kind = rng.choice(kinds)
        if kind == "SIGKILL worker":
            os.kill(rng.choice(worker_pids(study)), signal.SIGKILL)
            time.sleep(rng.uniform(1.0, 4.0))  # the driver notices and retries; then it is stopped too
            proc.send_signal(signal.SIGINT)
        else:
            proc.send_signal(getattr(signal, kind.split()[0]))
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            counts["driver did not stop within 120 s"] += 1
        counts[kind] += 1
        counts[f"exit {proc.returncode}"] += 1
        if "Traceback" in err:
            tracebacks += 1
            print(f"fault {i} ({kind}): traceback\n{err[-2000:]}", file=sys.stderr)
        study = _load(optuna, url)
        done = finished_count(study) if study is not None else 0
        print(f"fault {i + 1:2d}: {kind:15s} after {delay:4.1f} s -> exit {proc.returncode}; "
              f"{done}/{args.trials} trials counted", flush=True)

    final = subprocess.run([sys.executable, str(DRIVER), "search", str(root / "cfg.yaml"), "--quiet"], cwd=root,
                           env=env, capture_output=True, text=True, timeout=1800)
    problems = []
    if final.returncode != 0:
        problems.append(f"the finishing run exited {final.returncode}: {final.stderr[-1500:]}")
    study = optuna.load_study(study_name="t", storage=url)
    records = record.read_all(study)
    problems += _invariants(records, finished_count(study), args.trials)
    run = root / "runs" / "t"
    for command in (["status", str(run)], ["report", str(run)],
                    ["export", str(run), "-o", str(root / "best.safetensors"), "--overwrite", "--threads", "1"]):
        done = subprocess.run([sys.executable, str(DRIVER), *command], cwd=root, env=env, capture_output=True,
                              text=True, timeout=600)
        counts[f"`{command[0]}` exit {done.returncode}"] += 1
        if done.returncode != 0 or "Traceback" in done.stderr:
            problems.append(f"`mergesearch {' '.join(command)}` exited {done.returncode}: {done.stderr[-800:]}")

    states = Counter(r.state for r in records)
    reasons = Counter((r.fail_reason or "").split(":")[0] for r in records if r.state == "FAIL")
    print()
    print(f"faults injected ({args.backend} backend, seed {args.seed}):")
    for key, n in sorted(counts.items()):
        print(f"  {key:45s} {n}")
    print(f"trials stored: {len(records)} ({', '.join(f'{n} {s.lower()}' for s, n in sorted(states.items()))}); "
          f"counted against the budget: {finished_count(study)}/{args.trials}")
    print("failed trials by reason: " + ", ".join(f"{k or '?'} {n}" for k, n in sorted(reasons.items())))
    print(f"re-enqueued and repeated: {sum(1 for r in records if r.state == 'FAIL' and r.requeued)}; "
          f"tracebacks seen: {tracebacks}")
    if tracebacks:
        problems.append(f"{tracebacks} run(s) printed a traceback")
    print("invariants: " + ("all hold" if not problems else "BROKEN"))
    for line in problems:
        print(f"  - {line}")
    print(f"run folder: {run}")
    return 1 if problems else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _load(optuna, url: str):
    try:
        return optuna.load_study(study_name="t", storage=url)
    except Exception:  # noqa: BLE001 - not created yet
        return None


def _invariants(records, counted: int, budget: int) -> list[str]:
    out = []
    left = [r.number for r in records if r.state in ("RUNNING", "WAITING")]
    if left:
        out.append(f"trials left RUNNING/WAITING: {left}")
    if counted != budget:
        out.append(f"{counted} trials counted against a budget of {budget}")
    firsts = Counter(r.baseline for r in records if r.baseline and r.retry_of is None)
    done = Counter(r.baseline for r in records if r.baseline and r.complete)
    if set(firsts.values()) != {1} or len(firsts) != 4:
        out.append(f"baselines enqueued {dict(firsts)}")
    if done != firsts:
        out.append(f"baselines completed {dict(done)}")
    for r in records:
        if r.state == "FAIL" and r.requeued:
            retries = [x for x in records if x.retry_of == r.number]
            if len(retries) != 1 or retries[0].params != r.params:
                out.append(f"trial {r.number} was re-enqueued but repeated {len(retries)} times")
        if r.state == "FAIL" and not r.fail_reason:
            out.append(f"trial {r.number} failed without a reason")
        if r.complete and r.missing:
            out.append(f"trial {r.number} is complete but lacks {', '.join(r.missing)}")
    return out


if __name__ == "__main__":
    sys.exit(main())
