"""How many prompts one pipeline call renders on this device (`render.batch: auto`).

On a CPU the batch does not change the throughput much (the cores are busy at batch 1), so the
score step (`objective.batch_size`) is kept and pruning stays fine-grained. On a GPU small batches
leave it idle between kernel launches (the toy world's 32x32 UNet most of all), so the batch grows
until the decode of one batch would need half the free memory: the VAE decoder's full-resolution
activations dominate (about 128 channels, a handful alive at once: ~768 values per output pixel),
in fp32 where an fp16 SDXL VAE is upcast. The batch is rounded down to a multiple of the score
step (scores and images do not depend on the batch: one seeded generator per prompt).
"""

from __future__ import annotations

import torch

VALUES_PER_PIXEL = 768  # decoder activations alive per output pixel (estimate, see the module note)
MEMORY_SHARE = 0.5  # of the free device memory; the rest: the overlapped UNet batch, the tagger, fragmentation
MAX_BATCH = 64


def choose_render_batch(*, device: torch.device, height: int, width: int, step: int, n_prompts: int,
                        decode_bytes: int = 2, free_bytes: int | None = None) -> int:
    """Prompts per pipeline call. `height`/`width` in pixels; `decode_bytes` per value of the VAE decode
    (2 for fp16, 4 for fp32 or an upcast SDXL VAE); `free_bytes` defaults to the device's free memory
    (torch.cuda.mem_get_info). CPU and other devices: `step`. Always in [1, max(step, n_prompts)]."""
    step = max(1, step)
    if device.type != "cuda":
        return step
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    per_image = VALUES_PER_PIXEL * height * width * decode_bytes
    fit = int(MEMORY_SHARE * free_bytes // max(1, per_image))
    batch = max(1, min(fit, MAX_BATCH, max(n_prompts, 1)))
    if batch >= step:
        batch -= batch % step
    return batch
