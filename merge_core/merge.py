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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import Checkpoint, open_checkpoint
from .errors import CheckpointError
from .hashing import Pacer, file_sha256
from .layout import BlockLayout, layout_for
from .maths import CHUNK, all_finite, combine_chunks, linear_combination
from .methods import KeyContext, MergeMethod, get_method
from .outputs import check_output
from .provenance import merge_metadata
from .recipe import Recipe
from .safetensors_file import StreamingWriter, atomic_output, tensor_bytes

OUT_DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def output_dtype(name: str, block: str, layout: BlockLayout) -> torch.dtype:
    """The dtype a weight of ``block`` is written in.

    fp8 applies to the UNet only: the text encoders and the VAE are written fp16, as fp8
    releases ship them (their few weights lose the most from 8-bit rounding).
    """
    dtype = OUT_DTYPES[name]
    if dtype in FP8 and block not in layout.blocks:
        return torch.float16
    return dtype


@dataclass(frozen=True)
class KeyPlan:
    """How one output key is made: copied from one source, or combined from several.

    ``channels`` (the UNet input conv of inpainting / instruct-pix2pix models only): combine
    the first ``channels`` input channels (dim 1) and take the rest from ``extra_from``.
    ``check``: whether the written values must be finite (combined weights; not the buffers
    copied as they are).
    """

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    sources: tuple[int, ...]  # indices into the recipe's sources
    coeffs: tuple[float, ...]  # () = copy the bytes of sources[0] unchanged (unless `vector` is set)
    # non-linear methods: the block's parameter vector; `sources` then lists every source in recipe
    # order (a source the block does not read stands in as the first source holding the key, which
    # the method ignores)
    vector: tuple[float, ...] | None = None
    check: bool = True
    channels: int | None = None
    extra_from: int | None = None
    adjust: tuple[float, tuple[float, ...]] | None = None  # Adjust: (scale, offset) on the merged fp32 tensor
    lora: tuple = ()  # merge_core.lora.apply.Delta: LoRAs added to the merged fp32 tensor (after Adjust)


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
    """Open the recipe's sources; refuses any whose family (or SDXL base/refiner) differs from the recipe's."""
    ckpts = [open_checkpoint(s.path) for s in recipe.sources]
    for ckpt in ckpts:
        if ckpt.family != recipe.family:
            raise CheckpointError(
                f"{ckpt.path}: is an {_family_name(ckpt.family)} checkpoint but this merge is "
                f"{_family_name(recipe.family)}; merge models of one family only"
            )
    return ckpts


def _family_name(family) -> str:
    return family.value.upper().replace("-REFINER", " refiner")


def output_keys(recipe: Recipe, ckpts: list[Checkpoint]) -> list[str]:
    """Every key any source holds: the first source's in its file order, then each other's new keys.

    EMA copies come from the first source only, and only when the recipe keeps them.
    """
    seen: dict[str, None] = {}
    first = ckpts[0]
    for key in first.file_order(first.keys() + (first.ema_keys() if recipe.keep_ema else [])):
        seen[key] = None
    for other in ckpts[1:]:
        for key in other.file_order(other.keys()):
            seen.setdefault(key, None)
    return list(seen)


def plan_merge(recipe: Recipe, ckpts: list[Checkpoint], layout: BlockLayout | None = None) -> list[KeyPlan]:
    """The output keys (see :func:`output_keys`) and how each is made.

    One rule for keys that only some sources hold: a weight is combined from the sources whose
    coefficient in its block is non-zero, and every one of them must hold it (else a
    ``CheckpointError`` names the file, the key and the weight that leaves it out); a key
    outside every block (buffers, position ids, markers) is copied from the first source that
    holds it. Nothing is dropped. Also refused: shapes that differ (except the UNet input conv
    of inpainting / instruct-pix2pix models, whose first 4 channels are merged), and a UNet
    key the layout cannot place (it would be copied unmerged although the recipe asks to merge it).
    """
    from .prediction import V_MARKER, merged_prediction

    layout = layout or layout_for(recipe.family)
    method = get_method(recipe.method)
    coefficients = recipe.coefficients() if method.linear else None
    v_out = merged_prediction(ckpts) == "v"
    adjust_ops = recipe.adjust.ops(recipe.family) if recipe.adjust is not None and not recipe.adjust.off else {}
    plans: list[KeyPlan] = []
    for key in output_keys(recipe, ckpts):
        if key == V_MARKER and not v_out:
            continue  # the sources disagree and the merge follows A, which is not v-prediction
        holders = [i for i, c in enumerate(ckpts) if key in c]
        ref = ckpts[holders[0]]
        shape, dtype = ref.shape(key), ref.dtype(key)
        block = layout.block_of(key)
        if block is None or not dtype.is_floating_point:
            if block is None and key.startswith(layout.unet_prefix) and not layout.is_non_mergeable(key):
                raise CheckpointError(
                    f"{ref.path}: UNet key {key!r} belongs to no block of the {recipe.family.value} layout, so "
                    "the recipe cannot merge it; the file is a variant mergesearch does not know — check "
                    f"`mergesearch inspect {ref.path.name}` (family and unplaced keys) before merging it"
                )
            plans.append(KeyPlan(key, dtype, shape, (holders[0],), (), check=False))  # copied as it is
            continue
        out_dtype = output_dtype(recipe.dtype, block, layout)
        # Elemental / include-exclude may give this key other parameters, or hold it from A (None)
        params = recipe.key_params(key, block) if recipe.per_key else recipe.weights[block]
        adjust = adjust_ops.get(key) if params is not None else None  # a key held from A is not adjusted
        if params is None:
            used = [(holders[0], 1.0)]
        elif coefficients is None:
            uses = method.uses(params, len(ckpts))
            used = [(i, 1.0) for i, u in enumerate(uses) if u]
        elif params is recipe.weights[block]:
            used = [(i, c) for i, c in enumerate(coefficients[block]) if c != 0.0]
        else:
            used = [(i, c) for i, c in enumerate(method.coefficients(params, len(ckpts))) if c != 0.0]
        for i, _ in used:
            if key not in ckpts[i]:
                raise _missing_key_error(recipe, ckpts, i, key, block, holders[0])
        channels, extra_from, shape = _input_channels(key, layout, ckpts, used, holders, shape)
        if coefficients is None and params is not None:
            srcs = tuple(i if u else holders[0] for i, u in enumerate(uses))
            plans.append(KeyPlan(key, out_dtype, shape, srcs, (), params, channels=channels,
                                 extra_from=extra_from, adjust=adjust))
            continue
        if not used:  # all weights cancel: the block is zero
            used = [(holders[0], 0.0)]
        if (
            channels is None
            and len(used) == 1
            and used[0][1] == 1.0
            and ckpts[used[0][0]].dtype(key) == out_dtype
        ):
            plans.append(KeyPlan(key, out_dtype, shape, (used[0][0],), (), adjust=adjust))  # held from one model
        else:
            plans.append(
                KeyPlan(
                    key,
                    out_dtype,
                    shape,
                    tuple(i for i, _ in used),
                    tuple(c for _, c in used),
                    channels=channels,
                    extra_from=extra_from,
                    adjust=adjust,
                )
            )
    return plans


def _missing_key_error(recipe, ckpts, i, key, block, holder) -> CheckpointError:
    part = {"TE": "text encoder", "VAE": "VAE"}.get(block, f"UNet block {block}")
    if recipe.method == "weighted-sum" and block in ("TE", "VAE"):
        flag = "--te-alpha" if block == "TE" else "--vae-alpha"
        fix = f"{flag} {1 if i == 0 else 0} takes the {part} from {'B' if i == 0 else 'A'} alone"
    else:
        fix = f"give {block} a weight of 0 for this model"
    return CheckpointError(
        f"{ckpts[i].path}: has no key {key!r} ({part}) that {ckpts[holder].path.name} has, yet its weight for "
        f"{block} is not 0; use a full checkpoint, or leave this model out of {block}: {fix}"
    )


def _input_channels(key, layout, ckpts, used, holders, shape):
    """(channels, extra_from, output shape) for ``key``; refuses shapes that differ in any other way.

    Only the UNet input conv may differ, and only in its input channels (dim 1), one model
    having the latent's 4 and others 8 or 9: the output is the wide shape, its first 4 channels
    combined as the recipe says and the rest taken from the first source that has them
    (A1111's and SuperMerger's rule for inpainting and instruct-pix2pix models).
    """
    shapes = {i: ckpts[i].shape(key) for i in holders}
    if all(shapes[i] == shape for i, _ in used):
        return None, None, shape
    first_name = ckpts[holders[0]].path.name
    if key == layout.input_conv:
        base = layout.latent_channels
        widths = {s[1] for s in shapes.values()}
        same_rest = len({(s[0], *s[2:]) for s in shapes.values()}) == 1
        wide = sorted(w for w in widths if w != base)
        if same_rest and base in widths and len(wide) == 1:
            extra_from = next(i for i in holders if shapes[i][1] == wide[0])
            wide_shape = shapes[extra_from]
            if all(shapes[i][1] == wide[0] for i, _ in used):
                return None, None, wide_shape
            return base, extra_from, wide_shape
        if same_rest and base in widths and len(wide) > 1:
            listing = ", ".join(f"{ckpts[i].path.name}: {shapes[i][1]}" for i in holders)
            raise CheckpointError(
                f"{ckpts[holders[0]].path}: key {key!r} has input channels that disagree ({listing}); "
                "an inpainting (9) and an instruct-pix2pix (8) model cannot be merged with each other"
            )
    for i, _ in used:
        if shapes[i] != shape:
            raise CheckpointError(
                f"{ckpts[i].path}: key {key!r} has shape {shapes[i]} but {first_name} has {shape}; "
                "these models are different architectures and cannot be merged"
            )
    raise AssertionError("unreachable: some used shape differs")


def _nonfinite_error(plan: KeyPlan, ckpts: list[Checkpoint], out_dtype: torch.dtype) -> CheckpointError:
    for i in plan.sources:
        if not all_finite(ckpts[i].tensor(plan.key)):
            return CheckpointError(
                f"{ckpts[i].path}: key {plan.key!r} holds NaN or infinite values; the file is damaged — "
                "re-download it, or merge with a weight of 0 for this model in that block"
            )
    return CheckpointError(
        f"merged key {plan.key!r} overflows {str(out_dtype).removeprefix('torch.')}; use --dtype "
        + ("fp16, bf16 or fp32" if out_dtype in FP8 else "bf16 or fp32")
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
    elif method.stored_dtype:  # it upcasts piece by piece: no fp32 copy of every source
        yield method.apply(tensors, vector, ctx).reshape(-1)
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
    ahead = _KeysAhead(plans, lambda plan: _computed_key_bytes(plan, ckpts, method, seed, state), method)
    with ahead, tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress, leave=False) as bar:
        for i, plan in enumerate(plans):
            writer.begin(plan.key)
            if ahead.holds(i):
                writer.write(ahead.result(i))
            elif not plan.coeffs:
                src = ckpts[plan.sources[0]]
                if plan.check and not all_finite(src.tensor(plan.key)):
                    raise _nonfinite_error(plan, ckpts, plan.dtype)
                writer.write(src.raw_bytes(plan.key))
            elif plan.dtype in FP8:
                tensors = [ckpts[j].tensor(plan.key) for j in plan.sources]
                for part in combine_chunks(tensors, plan.coeffs, torch.float32, scratch=scratch):
                    writer.write(tensor_bytes(_cast_checked(part, plan, ckpts)))
            else:
                tensors = [ckpts[j].tensor(plan.key) for j in plan.sources]
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


def _is_computed_key(plan: KeyPlan, method: MergeMethod | None) -> bool:
    """Whether a key is computed (by a non-linear method, or as a whole fp32 tensor: Adjust, LoRAs,
    an inpainting input conv) rather than copied or combined linearly, which is memory-bound."""
    if plan.channels is not None or plan.adjust is not None or plan.lora:
        return True
    return plan.vector is not None and method is not None


def _computed_key_bytes(plan: KeyPlan, ckpts: list[Checkpoint], method, seed, state) -> memoryview:
    """The output bytes of a computed key (see _is_computed_key), checked finite and cast."""
    if plan.channels is not None:
        return tensor_bytes(_combine_input_conv(plan, ckpts, method, seed, state))
    if plan.adjust is not None or plan.lora:  # whole tensor in fp32: adjusted and/or LoRAs added, cast
        return tensor_bytes(_adjusted(plan, ckpts, method, seed, state))
    tensors = [ckpts[i].tensor(plan.key) for i in plan.sources]
    ctx = KeyContext(plan.key, plan.shape, 0, seed, state)
    if not method.elementwise:
        (part,) = method_chunks(method, tensors, plan.vector, ctx)
        return tensor_bytes(_cast_checked(part, plan, ckpts))
    out = torch.empty(tensors[0].numel(), dtype=plan.dtype)  # an elementwise method: chunk by chunk into it
    start = 0
    for part in method_chunks(method, tensors, plan.vector, ctx):
        out[start : start + part.numel()] = _cast_checked(part, plan, ckpts)
        start += part.numel()
    return tensor_bytes(out)


def merge_workers() -> int:
    """Threads that compute the keys of non-linear methods (TIES, DARE, SLERP, the calc modes) in parallel.

    One per CPU this process may run on, at most 8; ``MERGESEARCH_MERGE_THREADS`` overrides it
    (1: every key on the calling thread). Each runs torch on one thread (one_torch_thread): no
    OpenMP barriers to stall on a busy host.
    """
    env = os.environ.get("MERGESEARCH_MERGE_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise CheckpointError(
                f"MERGESEARCH_MERGE_THREADS={env!r} is not a whole number; set it to 1 or more, or unset it"
            ) from None
        if n < 1:
            raise CheckpointError(f"MERGESEARCH_MERGE_THREADS={n} must be 1 or more; 1 merges on one thread")
        return n
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


_AHEAD_BYTES = 384 << 20  # working memory of the keys computed ahead (the largest key always runs)
_AHEAD_KEYS = 64  # at most this many keys submitted ahead of the writer


class _KeysAhead:
    """Computed keys (see _is_computed_key) made by worker threads ahead of the writer, handed over
    in file order.

    A non-linear method (a top-k, a random mask, a norm, a filter) is compute-bound and its keys are
    independent, so up to ``merge_workers()`` of them run at once; the writer still writes every key in order,
    so the output is the same bytes as one thread's. Memory stays bounded: the keys in flight hold
    at most _AHEAD_BYTES of fp32 results and output copies together (any one key may exceed it
    alone). An error in a key is raised when the writer reaches that key, as on one thread; the
    keys still in flight are then cancelled or awaited.
    """

    def __init__(self, plans: list[KeyPlan], compute, method: MergeMethod | None):
        self.plans, self.compute = plans, compute
        self.order = [i for i, p in enumerate(plans) if _is_computed_key(p, method)]
        self.computed = set(self.order)
        self.elementwise = method is not None and method.elementwise
        self.workers = merge_workers() if len(self.order) > 1 else 1
        self.pool = None
        self.futures: dict[int, Future] = {}
        self.next = 0  # position in self.order of the next key to submit
        self.in_flight = 0  # bytes the submitted, not yet written keys hold
        self.handed = 0  # bytes of the key last handed to the writer (written by the next call)

    def __enter__(self) -> _KeysAhead:
        if self.workers > 1:
            # torch's OpenMP thread count is per thread: each worker sets its own to 1
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="merge-key",
                                           initializer=torch.set_num_threads, initargs=(1,))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def holds(self, i: int) -> bool:
        return i in self.computed

    def _cost(self, i: int) -> int:
        p = self.plans[i]
        n = 1
        for s in p.shape:
            n *= s
        if self.elementwise and p.vector is not None:
            return n * p.dtype.itemsize  # the output, filled chunk by chunk
        return n * (4 + p.dtype.itemsize)  # the fp32 result and its cast copy

    def _top_up(self) -> None:
        # Keys differ in size by 1000x: a count of keys ahead would starve the workers behind one
        # big key, so the memory budget is what bounds the lookahead (the count only caps overhead).
        while self.next < len(self.order) and len(self.futures) < _AHEAD_KEYS:
            i = self.order[self.next]
            if self.futures and self.in_flight + self._cost(i) > _AHEAD_BYTES:
                return
            self.futures[i] = self.pool.submit(self.compute, self.plans[i])
            self.in_flight += self._cost(i)
            self.next += 1

    def result(self, i: int) -> memoryview:
        """Key i's output bytes (computed here when there is no pool)."""
        if self.pool is None:
            return self.compute(self.plans[i])
        self.in_flight -= self.handed  # the writer is done with the previous key
        self._top_up()
        data = self.futures.pop(i).result()
        self.handed = self._cost(i)
        return data


def _cast_checked(part: torch.Tensor, plan: KeyPlan, ckpts: list[Checkpoint]) -> torch.Tensor:
    """An fp32 piece cast to the plan's dtype, refused when not finite there.

    fp8 casts saturate instead of overflowing, so for fp8 the fp32 values are checked against the range.
    """
    if plan.dtype in FP8:
        if not all_finite(part) or float(part.abs().max()) > torch.finfo(plan.dtype).max:
            raise _nonfinite_error(plan, ckpts, plan.dtype)
        return part.to(plan.dtype)
    out = part if plan.dtype == torch.float32 else part.to(plan.dtype)
    if not all_finite(out):
        raise _nonfinite_error(plan, ckpts, plan.dtype)
    return out


def _combine_input_conv(plan: KeyPlan, ckpts: list[Checkpoint], method, seed, state) -> torch.Tensor:
    """The UNet input conv of an inpainting / instruct-pix2pix merge (small: out x 9 x 3 x 3).

    Channels ``[:channels]`` are merged as the recipe says; the extra ones are copied from
    ``extra_from`` (in fp32, then cast once like every other weight).
    """
    c = plan.channels
    out = torch.empty(plan.shape, dtype=torch.float32)
    narrow = [ckpts[i].tensor(plan.key)[:, :c].contiguous() for i in plan.sources]
    if plan.vector is not None:
        ctx = KeyContext(plan.key, tuple(narrow[0].shape), 0, seed, state)
        out[:, :c] = torch.cat(list(method_chunks(method, narrow, plan.vector, ctx))).reshape(narrow[0].shape)
    else:
        out[:, :c] = linear_combination(narrow, plan.coeffs, torch.float32)
    out[:, c:] = ckpts[plan.extra_from].tensor(plan.key)[:, c:].float()
    if plan.adjust is not None:
        from .adjust import apply_op

        apply_op(out, plan.adjust)
    return _cast_checked(out, plan, ckpts)


def _adjusted(plan: KeyPlan, ckpts: list[Checkpoint], method, seed, state) -> torch.Tensor:
    """The plan's merged tensor in fp32 with its Adjust op applied, cast to the output dtype."""
    from .adjust import apply_op

    tensors = [ckpts[i].tensor(plan.key) for i in plan.sources]
    if plan.vector is not None:
        ctx = KeyContext(plan.key, plan.shape, 0, seed, state)
        merged = torch.cat(list(method_chunks(method, tensors, plan.vector, ctx))).reshape(plan.shape)
    elif plan.coeffs:
        merged = linear_combination(tensors, plan.coeffs, torch.float32)
    else:
        merged = tensors[0].to(torch.float32, copy=True)
    if plan.adjust is not None:
        merged = apply_op(merged, plan.adjust)
    if plan.lora:
        from .lora.apply import apply_deltas

        merged = apply_deltas(merged, list(plan.lora))
    return _cast_checked(merged, plan, ckpts)


def merge_to_file(
    recipe: Recipe,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    extra_metadata: dict[str, str] | None = None,
    vae: str | os.PathLike | None = None,
) -> Path:
    """Merge ``recipe`` from its source files into the safetensors file ``out``.

    Everything is checked before anything is written (:func:`plan_merge`, and
    :func:`merge_core.outputs.check_output`: never over a source, --overwrite or not); on any
    error no output is left behind. Raises ``CheckpointError`` naming the file, the key and the fix.
    ``vae``: a VAE file or folder whose weights replace the merged VAE (merge_core.vae); its
    path and sha256 go into the metadata as ``mergesearch_vae``.
    """
    ckpts = open_sources(recipe)
    out = check_output(out, [c.path for c in ckpts], overwrite=overwrite)
    plans = plan_merge(recipe, ckpts)
    sources = ckpts
    if recipe.loras:
        plans = with_loras(plans, ckpts, recipe)
    if vae is not None:
        plans, sources, vae_meta = bake_vae(plans, ckpts, vae, recipe)
        extra_metadata = {**(extra_metadata or {}), **vae_meta}
    pending = ["0" * 64] * len(ckpts)
    entries = {p.key: (p.dtype, p.shape) for p in plans}
    with atomic_output(out, overwrite=overwrite) as (fd, _tmp):
        writer = StreamingWriter(
            fd, out, entries, {**merge_metadata(recipe, ckpts, pending), **(extra_metadata or {})}
        )
        hasher = _Hashes(ckpts)
        try:
            write_plans(writer, plans, sources, progress=progress, on_key=hasher.read_up_to,
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


def bake_vae(plans: list[KeyPlan], ckpts: list[Checkpoint], vae: str | os.PathLike, recipe: Recipe):
    """Plans whose VAE keys are copied (cast to the output dtype) from the VAE at ``vae``.

    Returns (plans, sources with the VAE appended, metadata naming the VAE and its sha256).
    """
    import json

    from .vae import open_vae

    vae_ckpt = open_vae(vae, ckpts[0])
    layout = layout_for(recipe.family)
    out_dtype = OUT_DTYPES[recipe.dtype]
    index = len(ckpts)
    baked = [
        KeyPlan(p.key, out_dtype, p.shape, (index,), (1.0,))
        if layout.block_of(p.key) == "VAE" and p.dtype.is_floating_point
        else p
        for p in plans
    ]
    meta = {"mergesearch_vae": json.dumps({"path": str(vae_ckpt.path), "sha256": vae_ckpt.sha256})}
    return baked, [*ckpts, vae_ckpt], meta


def with_loras(plans: list[KeyPlan], ckpts: list[Checkpoint], recipe: Recipe) -> list[KeyPlan]:
    """Plans whose keys a recipe LoRA changes carry its deltas (read and checked here, before writing)."""
    import dataclasses

    from .lora.apply import recipe_lora_deltas

    deltas = recipe_lora_deltas(recipe.loras, _FamilyView(ckpts[0], recipe.family))
    # the plan's dtype is already the output dtype of its block (a key held from one model included)
    return [dataclasses.replace(p, lora=tuple(deltas[p.key])) if p.key in deltas else p for p in plans]


class _FamilyView:
    """A checkpoint's keys and shapes under the recipe's family."""

    def __init__(self, ckpt: Checkpoint, family):
        self.family, self._c = family, ckpt

    def keys(self):
        return self._c.keys()

    def shape(self, key):
        return self._c.shape(key)
