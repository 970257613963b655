"""Run the tail of batch k (decode, convert, tag) while the head of batch k+1 (the UNet) runs.

A trial renders its prompts batch by batch: denoise (UNet, the bulk of the cost), then VAE decode,
conversion and tagging. Done one after the other, the device idles while the host converts and
tags. `overlapped` keeps one batch's tail in flight on a worker thread while the calling thread
produces the next batch, and yields the tails' results in the producer's order, so scores and
images are the same as without overlap (every batch is computed by the same functions, only the
timing changes).

On CUDA the worker thread issues its kernels on a second stream that waits for an event recorded
after the producer's batch, so decoding really runs beside the next batch's UNet on the device.
Grad mode is thread-local in torch, so the worker enters inference mode itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

X = TypeVar("X")
Y = TypeVar("Y")


def overlapped(produce: Iterator[X], finish: Callable[[X], Y], *, enabled: bool = True,
               device: torch.device | str | None = None) -> Iterator[Y]:
    """`finish(x)` for every `x` of `produce`, in order; with `enabled`, finish(x_k) runs on a worker
    thread while `produce` makes x_{k+1} (at most one finish in flight, so memory stays one batch ahead).

    `device`: where x's tensors live; on CUDA the finish runs on its own stream (see the module note).
    Errors: an exception raised by `finish` is raised here when its result is due; one raised by
    `produce` is raised after the finish in flight has ended. Closing the iterator early (a pruned
    trial) waits for the finish in flight, so no thread still reads the live modules when the caller
    writes the next candidate into them.
    """
    if not enabled:
        for x in produce:
            yield finish(x)
        return
    dev = torch.device(device) if device is not None else torch.device("cpu")
    side = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-tail")
    pending: Future | None = None
    try:
        for x in produce:
            ready = None
            if side is not None:
                ready = torch.cuda.Event()
                ready.record(torch.cuda.current_stream(dev))
            job = pool.submit(_finish_on, finish, x, side, ready)
            if pending is not None:
                yield pending.result()
            pending = job
        if pending is not None:
            result, pending = pending.result(), None
            yield result
    finally:
        if pending is not None:
            try:
                pending.result()  # never leave a thread reading the modules behind
            except Exception:  # noqa: BLE001 - the caller stopped listening; its own error (if any) wins
                pass
        pool.shutdown(wait=True)


def _finish_on(finish: Callable[[Any], Any], x: Any, side: Any, ready: Any) -> Any:
    with torch.inference_mode():
        if side is None:
            return finish(x)
        with torch.cuda.stream(side):
            side.wait_event(ready)
            for t in _tensors(x):
                t.record_stream(side)  # the caching allocator must not reuse x's memory before side is done
            out = finish(x)
        side.synchronize()  # results (host copies included) are complete when the future resolves
        return out


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x] if x.is_cuda else []
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in _tensors(item)]
    return []
