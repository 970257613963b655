"""Counter-based uniform random numbers: element i of a key's stream depends only on (seed, key, i).

DARE's drop masks come from here, so a mask is the same on CPU and GPU, chunk by chunk or whole,
in the streaming merger and in the Mixer. The mixing function is Chris Wellons' "lowbias32"
integer hash (https://nullprogram.com/blog/2018/07/31/), computed in int64 with 32-bit
products split in 16-bit halves so no intermediate overflows on any device.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_M32 = 0xFFFFFFFF


def stream_key(seed: int, key: str, index: int) -> int:
    """A 32-bit stream id for ``(seed, key, source index)`` (blake2b of their text)."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 for x < 2^32 without an int64 overflow: split x into 16-bit halves.
    hi = ((x >> 16) * c) & 0xFFFF
    return ((hi << 16) + (x & 0xFFFF) * c) & _M32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 hash of each element of an int64 tensor holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_uniform(stream: int, offset: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` fp32 values in [0, 1): element j is ``lowbias32((stream + offset + j) mod 2^32) >> 8`` / 2^24.

    The top 24 bits make every value exact in fp32. On CPU the hash runs in numpy's uint32 (native
    wrap-around multiplies and logical shifts: about 1 ns an element, against about 100 ns for the
    int64 torch form); other devices use the torch form. Both give the same bits (tested).
    """
    if torch.device(device).type == "cpu":
        return torch.from_numpy(_hashed_uniform_numpy(stream, offset, n))
    idx = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    x = lowbias32((idx + stream) & _M32)
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _hashed_uniform_numpy(stream: int, offset: int, n: int) -> np.ndarray:
    """:func:`hashed_uniform` in numpy uint32 arithmetic (all operations wrap mod 2^32)."""
    x = np.arange(n, dtype=np.uint32)
    x += np.uint32((stream + offset) & _M32)  # wraps like (stream + offset + j) mod 2^32
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    x >>= np.uint32(8)
    out = x.astype(np.float32)
    out *= np.float32(1.0 / (1 << 24))
    return out
