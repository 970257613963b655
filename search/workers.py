"""Workers: one interface, two backends. A worker holds an evaluator (sources resident, renderer,
benchmark) built once; it takes EvalTasks and gives EvalResults.

- LocalPool: one evaluator in this process (tests, a single GPU without Ray).
- RayPool: one Ray actor per worker (num_gpus configurable, 0 on CPU; max_restarts); ray.wait always
  with a timeout so the driver stays responsive to Ctrl-C and to dead actors.
A crash (exception, killed process) comes back as a `Crash`, never as an exception in the loop.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from search.tasks import EvalResult, EvalTask


class EvaluatorSpec(BaseModel):
    """How a worker builds its evaluator: 'module:attr' factory called with kwargs (JSON-able)."""

    model_config = ConfigDict(frozen=True)

    factory: str = "search.evaluator:BenchmarkEvaluator"
    kwargs: dict[str, Any] = {}
    torch_threads: int | None = None


class Evaluator(Protocol):
    def evaluate(self, task: EvalTask) -> EvalResult: ...


def build_evaluator(spec: EvaluatorSpec) -> Evaluator:
    if spec.torch_threads:
        import torch

        torch.set_num_threads(spec.torch_threads)
    module, _, attr = spec.factory.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(**spec.kwargs)


@dataclass(frozen=True)
class Crash:
    task: EvalTask
    error: str
    worker: str


Outcome = EvalResult | Crash


class WorkerPool(Protocol):
    size: int

    def idle(self) -> int: ...
    def submit(self, task: EvalTask) -> None: ...
    def poll(self, timeout: float) -> list[Outcome]: ...
    def in_flight(self) -> list[EvalTask]: ...
    def close(self) -> None: ...


def _safe_evaluate(evaluator: Evaluator, task: EvalTask, worker: str) -> Outcome:
    try:
        result = evaluator.evaluate(task)
    except Exception as exc:  # one bad candidate must not stop the search
        return Crash(task=task, error=f"{type(exc).__name__}: {exc}", worker=worker)
    return result.model_copy(update={"worker": worker})


class LocalPool:
    """In-process: tasks run one at a time inside poll()."""

    size = 1

    def __init__(self, spec: EvaluatorSpec) -> None:
        self._evaluator = build_evaluator(spec)
        self._queue: queue.SimpleQueue[EvalTask] = queue.SimpleQueue()
        self._pending: list[EvalTask] = []
        self._name = f"local@{socket.gethostname()}"

    def idle(self) -> int:
        return 0 if self._pending else 1

    def submit(self, task: EvalTask) -> None:
        self._pending.append(task)

    def in_flight(self) -> list[EvalTask]:
        return list(self._pending)

    def poll(self, timeout: float) -> list[Outcome]:
        if not self._pending:
            time.sleep(min(timeout, 0.05))
            return []
        task = self._pending.pop(0)
        return [_safe_evaluate(self._evaluator, task, self._name)]

    def close(self) -> None:
        self._pending.clear()


def _watch_driver(driver: str, own_cluster: bool, interval: float = 1.0) -> None:
    """Exit this worker process soon after its driver is gone. Ray's own clean-up after kill -9 of the
    driver leaves its agents (ray::DashboardAgent, ray::RuntimeEnvAgent, ~90 MB each) waiting minutes on
    the dead GCS; when the driver started a private cluster (`own_cluster`), they are ended here too.
    Only a driver on this host can be checked; on other hosts Ray's job clean-up remains."""
    import threading

    from search.liveness import driver_alive

    if driver_alive(driver) is not True:
        return  # another host (or unknown): nothing to watch from here
    raylet = os.getppid()

    def cluster_processes() -> list:
        """The private cluster's other processes: the raylet's children but this one (agents, workers)."""
        if not own_cluster:
            return []
        try:
            import psutil

            return [p for p in psutil.Process(raylet).children() if p.pid != os.getpid()]
        except Exception:  # noqa: BLE001 - the raylet is gone already: keep the last list
            return []

    def watch() -> None:
        helpers = cluster_processes()
        while True:
            time.sleep(interval)
            if driver_alive(driver) is False:
                for p in helpers:
                    try:
                        p.kill()
                    except Exception:  # noqa: BLE001 - already gone
                        pass
                os._exit(0)
            helpers = cluster_processes() or helpers  # refreshed: restarted workers, pre-started idle ones

    threading.Thread(target=watch, name="mergesearch-driver-watch", daemon=True).start()


class _Actor:
    """Body of the Ray actor (wrapped by ray.remote in RayPool, so this module imports without Ray)."""

    def __init__(self, spec: EvaluatorSpec, index: int, driver: str | None = None, own_cluster: bool = False) -> None:
        if driver:
            _watch_driver(driver, own_cluster)
        self._evaluator = build_evaluator(spec)
        self._name = f"ray-{index}@{socket.gethostname()}:{os.getpid()}"

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, task: EvalTask) -> Outcome:
        return _safe_evaluate(self._evaluator, task, self._name)


class NoWorkersLeft(RuntimeError):
    pass


def _root_cause(exc: BaseException) -> str:
    """The innermost error line of a Ray error (its text embeds whole remote tracebacks)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln.split(":")[0]]
    line = (errors or lines or [type(exc).__name__])[-1]
    return line if len(line) < 400 else line[:400] + "..."


class RayPool:
    def __init__(self, spec: EvaluatorSpec, *, count: int, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                 max_restarts: int = 2, address: str | None = None, ready_timeout: float = 600.0) -> None:
        import ray

        self._ray = ray
        own_cluster = not ray.is_initialized() and not address
        # Ray announces its token-auth default (or its absence) on every start: noise for a search
        # whose cluster the user did not configure; RAY_AUTH_MODE, when set, is respected as ever.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        if not ray.is_initialized():
            # log_to_driver off: a dead worker is reported once, in our words (the trial's fail_reason and
            # the retry), not as Ray's multi-line notice; workers' own output stays in Ray's log files.
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING,
                         **({} if address else {"num_cpus": max(int(count * cpus_per_worker), 1)}))
            except Exception as exc:  # noqa: BLE001 - any start failure means the same to the user
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise NoWorkersLeft(f"could not start {where}: {_root_cause(exc)}") from None
        actor_cls = ray.remote(_Actor).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                               max_restarts=max_restarts, max_task_retries=0)
        self.size = count
        from search.liveness import driver_id

        self._actors = [actor_cls.remote(spec, i, driver_id(), own_cluster) for i in range(count)]
        self._busy: dict[Any, tuple[int, EvalTask]] = {}  # ref -> (actor index, task)
        self._dead: set[int] = set()
        self._crashes = [0] * count
        self._recovering: dict[Any, int] = {}  # ping ref -> actor index (restarting after a crash)
        self._max_restarts = max_restarts
        # Wait for every actor to have built its evaluator (sources loaded) before the clock starts.
        refs = [a.pid.remote() for a in self._actors]
        ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=ready_timeout)
        if not_ready:
            raise NoWorkersLeft(f"{len(not_ready)} of {count} Ray workers did not start within {ready_timeout:.0f} s")
        try:
            self.pids = ray.get(refs, timeout=ready_timeout)
        except Exception as exc:  # noqa: BLE001
            raise NoWorkersLeft(f"a Ray worker failed to start: {_root_cause(exc)}") from None

    def _free_actors(self) -> list[int]:
        busy = {i for i, _ in self._busy.values()} | set(self._recovering.values())
        return [i for i in range(len(self._actors)) if i not in busy and i not in self._dead]

    def idle(self) -> int:
        return len(self._free_actors())

    def in_flight(self) -> list[EvalTask]:
        return [t for _, t in self._busy.values()]

    def submit(self, task: EvalTask) -> None:
        free = self._free_actors()
        if not free:
            raise RuntimeError("no idle worker; check idle() before submit()")
        i = free[0]
        self._busy[self._actors[i].evaluate.remote(task)] = (i, task)

    def poll(self, timeout: float) -> list[Outcome]:
        ray = self._ray
        if not self._busy and not self._recovering:
            if len(self._dead) == len(self._actors):
                raise NoWorkersLeft("every Ray worker died and used up its restarts")
            time.sleep(min(timeout, 0.05))
            return []
        waiting = list(self._busy) + list(self._recovering)
        # return as soon as one is done (a worker must not idle for the rest of the timeout) ...
        ready, rest = ray.wait(waiting, num_returns=1, timeout=timeout)
        if ready and rest:  # ... taking along whatever else is already done
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        out: list[Outcome] = []
        for ref in ready:
            if ref in self._recovering:
                self._recovered(ref)
                continue
            i, task = self._busy.pop(ref)
            try:
                out.append(ray.get(ref, timeout=timeout))
            except ray.exceptions.RayActorError as exc:  # the process died; Ray restarts it if it may
                self._crashes[i] += 1
                self._after_crash(i)
                out.append(Crash(task=task, error=f"worker {i} died: {str(exc).splitlines()[0]}", worker=f"ray-{i}"))
            except ray.exceptions.RayError as exc:  # the task itself raised past the evaluator's guard
                out.append(Crash(task=task, error=f"worker {i}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                                 worker=f"ray-{i}"))
        if len(self._dead) == len(self._actors) and not self._busy:
            raise NoWorkersLeft("every Ray worker died and used up its restarts")
        return out

    def _after_crash(self, i: int) -> None:
        """No task goes to a crashed actor until Ray has restarted it and it answers a ping."""
        if self._crashes[i] > self._max_restarts:
            self._dead.add(i)
        else:
            self._recovering[self._actors[i].pid.remote()] = i

    def _recovered(self, ref: Any) -> None:
        i = self._recovering.pop(ref)
        try:
            self.pids[i] = self._ray.get(ref, timeout=10)
        except self._ray.exceptions.RayError:
            self._crashes[i] += 1
            self._after_crash(i)

    def close(self) -> None:
        for a in self._actors:
            try:
                self._ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._busy.clear()
