"""Streaming merges: a Recipe in, a .safetensors out, one key at a time.

Everything that can be checked before writing is checked first (families, keys, shapes,
output path). Tensors are then combined chunk by chunk from the memory-mapped sources and
written straight into a preallocated temporary file beside the output, which is renamed
over the output only when complete. Source hashes are computed on a background thread
while the merge runs and land in the header, which is written last.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import Checkpoint, open_checkpoint
from .errors import CheckpointError
from .hashing import Pacer, file_sha256
from .layout import BlockLayout, layout_for
from .maths import CHUNK, all_finite, combine_chunks
from .methods import KeyContext, MergeMethod, get_method
from .provenance import merge_metadata
from .recipe import Recipe
from .safetensors_file import StreamingWriter, atomic_output, tensor_bytes

OUT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class KeyPlan:
    """How one output key is made: copied from one source, or combined from several."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    sources: tuple[int, ...]  # indices into the recipe's sources
    coeffs: tuple[float, ...]  # () = copy the bytes of sources[0] unchanged (unless `vector` is set)
    # non-linear methods: the block's parameter vector; `sources` then lists every source in recipe
    # order (a source the block does not read stands in as source 0, which the method ignores)
    vector: tuple[float, ...] | None = None


class _Hashes:
    """sha256 of the sources, one thread per file, computed while the merge runs.

    Each thread is paced to stay just ahead of the merge's reads in its file (see Pacer).
    """

    def __init__(self, ckpts: list[Checkpoint]):
        self.ckpts = ckpts
        self.hashes: list[str | None] = [None] * len(ckpts)
        self.errors: list[BaseException] = []
        self.pacers = [Pacer() if c.byte_ranges is not None else None for c in ckpts]
        self.threads = [
            threading.Thread(target=self._one, args=(i,), daemon=True, name=f"sha256-{i}")
            for i in range(len(ckpts))
        ]
        for t in self.threads:
            t.start()

    def _one(self, i: int) -> None:
        try:
            self.hashes[i] = file_sha256(self.ckpts[i].path, pacer=self.pacers[i])
        except BaseException as exc:  # re-raised by result()
            self.errors.append(exc)

    def read_up_to(self, key: str) -> None:
        """The merge has read ``key`` from every source that holds it."""
        for ckpt, pacer in zip(self.ckpts, self.pacers, strict=True):
            if pacer is not None and key in ckpt:
                pacer.advance(ckpt.byte_ranges[key].end)

    def release(self) -> None:
        for pacer in self.pacers:
            if pacer is not None:
                pacer.release()

    def result(self) -> list[str]:
        self.release()
        for t in self.threads:
            t.join()
        if self.errors:
            raise self.errors[0]
        return [h for h in self.hashes if h is not None]


def open_sources(recipe: Recipe) -> list[Checkpoint]:
    ckpts = [open_checkpoint(s.path) for s in recipe.sources]
    for ckpt in ckpts:
        if ckpt.family != recipe.family:
            raise CheckpointError(
                f"{ckpt.path}: is an {ckpt.family.value.upper()} checkpoint but this merge is "
                f"{recipe.family.value.upper()}; merge models of one family only"
            )
    return ckpts


def plan_merge(recipe: Recipe, ckpts: list[Checkpoint], layout: BlockLayout | None = None) -> list[KeyPlan]:
    """The output keys (in the first source's file order) and how each is made.

    Refuses, naming the first offending key, when a source with a non-zero weight lacks a
    key of the first source or holds it with another shape.
    """
    layout = layout or layout_for(recipe.family)
    out_dtype = OUT_DTYPES[recipe.dtype]
    method = get_method(recipe.method)
    coefficients = recipe.coefficients() if method.linear else None
    first = ckpts[0]
    plans: list[KeyPlan] = []
    keys = first.keys() + (first.ema_keys() if recipe.keep_ema else [])
    for key in first.file_order(keys):
        shape, dtype = first.shape(key), first.dtype(key)
        block = layout.block_of(key)
        if block is None or not dtype.is_floating_point:
            plans.append(KeyPlan(key, dtype, shape, (0,), ()))  # not a weight: copied verbatim
            continue
        if coefficients is None:
            uses = method.uses(recipe.weights[block], len(ckpts))
            _check_sources(ckpts, key, block, shape, [i for i, u in enumerate(uses) if u])
            srcs = tuple(i if u else 0 for i, u in enumerate(uses))
            plans.append(KeyPlan(key, out_dtype, shape, srcs, (), recipe.weights[block]))
            continue
        used = [(i, c) for i, c in enumerate(coefficients[block]) if c != 0.0]
        _check_sources(ckpts, key, block, shape, [i for i, _ in used])
        if not used:  # all weights cancel: the block is zero
            used = [(0, 0.0)]
        if len(used) == 1 and used[0][1] == 1.0 and ckpts[used[0][0]].dtype(key) == out_dtype:
            plans.append(KeyPlan(key, out_dtype, shape, (used[0][0],), ()))  # held from one model
        else:
            plans.append(KeyPlan(key, out_dtype, shape, tuple(i for i, _ in used), tuple(c for _, c in used)))
    return plans


def _check_sources(ckpts: list[Checkpoint], key: str, block: str, shape: tuple[int, ...], used: list[int]) -> None:
    """Refuse when a source the block reads lacks ``key`` or holds it with another shape."""
    first = ckpts[0]
    for i in used:
        other = ckpts[i]
        if key not in other:
            raise CheckpointError(
                f"{other.path}: has no key {key!r} (block {block}) that {first.path.name} has; "
                f"use full checkpoints of one family, or give {block} a weight of 0 for this model"
            )
        if other.shape(key) != shape:
            raise CheckpointError(
                f"{other.path}: key {key!r} has shape {other.shape(key)} but {first.path.name} has {shape}; "
                "these models are different architectures and cannot be merged"
            )


def _nonfinite_error(plan: KeyPlan, ckpts: list[Checkpoint], out_dtype: torch.dtype) -> CheckpointError:
    for i in plan.sources:
        if not all_finite(ckpts[i].tensor(plan.key)):
            return CheckpointError(
                f"{ckpts[i].path}: key {plan.key!r} holds NaN or infinite values; the file is damaged — "
                "re-download it, or merge with a weight of 0 for this model in that block"
            )
    return CheckpointError(
        f"merged key {plan.key!r} overflows {str(out_dtype).removeprefix('torch.')}; use --dtype bf16 or fp32"
    )


def write_plans(
    writer: StreamingWriter,
    plans: list[KeyPlan],
    ckpts: list[Checkpoint],
    *,
    progress: bool = True,
    desc: str = "merging",
    on_key=None,
    method: MergeMethod | None = None,
    seed: int | None = None,
) -> None:
    """Stream every planned key into ``writer``; ``on_key(key)`` is called after each.

    ``method`` (and ``seed`` for random methods) computes the plans that carry a parameter vector.
    """
    with one_torch_thread():
        state = _prepare(method, plans, ckpts) if method is not None and method.prepare else None
        _write_plans(writer, plans, ckpts, progress=progress, desc=desc, on_key=on_key,
                     method=method, seed=seed, state=state)


def _prepare(method: MergeMethod, plans: list[KeyPlan], ckpts: list[Checkpoint]):
    """The method's whole-model pass over the keys it merges (fp32 copies, one key at a time)."""
    pairs = (
        (p.key, [ckpts[i].tensor(p.key).float() for i in p.sources])
        for p in plans
        if p.vector is not None and not (method.skip and method.skip(p.key))
    )
    return method.prepare(pairs)


def method_chunks(method: MergeMethod, tensors: list[torch.Tensor], vector: tuple[float, ...], ctx: KeyContext,
                  *, chunk: int = CHUNK):
    """Yield the merged key as flat fp32 pieces: chunk by chunk for elementwise methods, else whole.

    Sources are upcast to fp32 one piece at a time, so an elementwise method's memory stays at a
    few chunks whatever the tensor size; a whole-tensor method holds one fp32 copy per source.
    """
    if method.elementwise:
        flats = [t.reshape(-1) for t in tensors]
        n = flats[0].numel()
        for start in range(0, n, chunk):
            parts = [f[start : start + chunk].float() for f in flats]
            piece = KeyContext(ctx.key, ctx.shape, start, ctx.seed, ctx.state)
            yield method.apply(parts, vector, piece).reshape(-1)
    else:
        yield method.apply([t.float() for t in tensors], vector, ctx).reshape(-1)


@contextlib.contextmanager
def one_torch_thread():
    """Run torch ops on one thread: the ops are small and memory-bound, and on a busy host
    OpenMP workers waiting at barriers for descheduled siblings made merges 20x slower.
    The other core hashes the sources meanwhile."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_plans(writer, plans, ckpts, *, progress, desc, on_key, method=None, seed=None, state=None) -> None:
    scratch = torch.empty(CHUNK)
    out_scratch = {dt: torch.empty(CHUNK, dtype=dt) for dt in (torch.float16, torch.bfloat16)}
    total = sum(writer.offsets[p.key][1] - writer.offsets[p.key][0] for p in plans)
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress, leave=False) as bar:
        for plan in plans:
            writer.begin(plan.key)
            if plan.vector is not None:
                tensors = [ckpts[i].tensor(plan.key) for i in plan.sources]
                ctx = KeyContext(plan.key, plan.shape, 0, seed, state)
                for part in method_chunks(method, tensors, plan.vector, ctx):
                    out = part if plan.dtype == torch.float32 else part.to(plan.dtype)
                    if not all_finite(out):
                        raise _nonfinite_error(plan, ckpts, plan.dtype)
                    writer.write(tensor_bytes(out))
            elif not plan.coeffs:
                src = ckpts[plan.sources[0]]
                if plan.dtype.is_floating_point and not all_finite(src.tensor(plan.key)):
                    raise _nonfinite_error(plan, ckpts, plan.dtype)
                writer.write(src.raw_bytes(plan.key))
            else:
                tensors = [ckpts[i].tensor(plan.key) for i in plan.sources]
                chunks = combine_chunks(
                    tensors, plan.coeffs, plan.dtype, scratch=scratch, out_scratch=out_scratch.get(plan.dtype)
                )
                for part in chunks:
                    if not all_finite(part):
                        raise _nonfinite_error(plan, ckpts, plan.dtype)
                    writer.write(tensor_bytes(part))
            bar.update(writer.offsets[plan.key][1] - writer.offsets[plan.key][0])
            if on_key is not None:
                on_key(plan.key)


def merge_to_file(
    recipe: Recipe,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Merge ``recipe`` from its source files into the safetensors file ``out``."""
    out = Path(out)
    ckpts = open_sources(recipe)
    if any(out.exists() and out.resolve() == c.path.resolve() for c in ckpts):
        raise CheckpointError(f"{out}: is one of the sources; write the merge to a new file")
    plans = plan_merge(recipe, ckpts)
    pending = ["0" * 64] * len(ckpts)
    entries = {p.key: (p.dtype, p.shape) for p in plans}
    with atomic_output(out, overwrite=overwrite) as (fd, _tmp):
        writer = StreamingWriter(
            fd, out, entries, {**merge_metadata(recipe, ckpts, pending), **(extra_metadata or {})}
        )
        hasher = _Hashes(ckpts)
        try:
            write_plans(writer, plans, ckpts, progress=progress, on_key=hasher.read_up_to,
                        method=get_method(recipe.method), seed=recipe.seed)
        finally:
            hasher.release()
            writer.close()  # no write-back thread may outlive the file descriptor
        hashes = hasher.result()
        for src, sha, ckpt in zip(recipe.sources, hashes, ckpts, strict=True):
            if src.sha256 and src.sha256 != sha:
                raise CheckpointError(
                    f"{ckpt.path}: sha256 {sha[:10]} differs from the recipe's {src.sha256[:10]}; "
                    "the file changed since the recipe was made — point the recipe at the original file"
                )
        writer.finish({**merge_metadata(recipe, ckpts, hashes), **(extra_metadata or {})})
    return out
