"""Pure tensor maths of merging: linear combinations in fp32, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

CHUNK = 1 << 18  # elements per step: the fp32 scratch (1 MiB) stays in cache
# torch does not promote float8 in mixed-dtype arithmetic: such chunks are upcast before adding.
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def combine_chunks(
    tensors: Sequence[torch.Tensor],
    coeffs: Sequence[float],
    out_dtype: torch.dtype,
    *,
    chunk: int = CHUNK,
    scratch: torch.Tensor | None = None,
    out_scratch: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``sum_i coeffs[i] * tensors[i]`` flattened, computed in fp32 and cast to ``out_dtype``.

    Sources may be of any float dtype torch stores (float8 e4m3fn/e5m2, bf16, fp16, fp32, fp64),
    mixed freely; each chunk is upcast to the fp32 accumulator.

    Each yielded chunk is a view of a reused buffer: consume it before asking for the next.
    Sources are read in place (memory-mapped views stay file-backed); no whole-tensor
    temporaries are made, so peak memory is two small buffers whatever the model size.
    """
    flats = [t.reshape(-1) for t in tensors]
    n = flats[0].numel()
    buf = scratch if scratch is not None and scratch.numel() >= min(n, chunk) else torch.empty(min(n, chunk))
    direct = out_dtype == torch.float32
    if not direct:
        obuf = (
            out_scratch
            if out_scratch is not None
            and out_scratch.numel() >= min(n, chunk)
            and out_scratch.dtype == out_dtype
            else torch.empty(min(n, chunk), dtype=out_dtype)
        )
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        b = buf[: end - start]
        b.copy_(flats[0][start:end])
        if coeffs[0] != 1.0:
            b.mul_(coeffs[0])
        for t, c in zip(flats[1:], coeffs[1:], strict=True):
            part = t[start:end]
            b.add_(part.float() if part.dtype in _FP8 else part, alpha=c)  # fp32 self: the sum stays fp32
        if direct:
            yield b
        else:
            o = obuf[: end - start]
            o.copy_(b)
            yield o


def linear_combination(
    tensors: Sequence[torch.Tensor], coeffs: Sequence[float], out_dtype: torch.dtype
) -> torch.Tensor:
    """Whole-tensor form of :func:`combine_chunks` (for small tensors and tests)."""
    out = torch.empty(tensors[0].numel(), dtype=out_dtype)
    pos = 0
    for part in combine_chunks(tensors, coeffs, out_dtype):
        out[pos : pos + part.numel()] = part
        pos += part.numel()
    return out.reshape(tensors[0].shape)


def all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or infinite (one reduction pass, no boolean temporaries)."""
    if t.numel() == 0 or not t.is_floating_point():
        return True
    if torch.isfinite(t.sum(dtype=torch.float32)):
        return True
    if t.dtype in _FP8:  # isfinite has no float8 kernel
        flat = t.reshape(-1)
        return all(bool(torch.isfinite(flat[i : i + CHUNK].float()).all()) for i in range(0, flat.numel(), CHUNK))
    return bool(torch.isfinite(t).all())  # the sum can overflow on huge but finite values
