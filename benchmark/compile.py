"""`render.compile`: which torch.compile mode or backend the UNet runs under.

Small models (the toy world's 32x32 UNet) are bound by Python and kernel launches, not by the
device; CUDA graphs (torch.compile's "reduce-overhead" mode, or dynamo's "cudagraphs" backend)
replay a whole UNet call as one launch. Large models gain less, and compiling costs a minute or
more per new batch shape, so compilation is optional:

- "off": eager (the default);
- "auto": "reduce-overhead" on CUDA, off elsewhere (CPU inductor builds C++ for minutes and gains
  little for a UNet this size; measured with tests/perf/render_throughput.py);
- a torch.compile mode: "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs";
- a dynamo backend name from `torch._dynamo.list_backends()` (e.g. "cudagraphs", "inductor", "eager").

A backend that cannot compile on this machine is not an error: the renderer warns once and renders
eagerly (Renderer.compile / Renderer.denoise).
"""

from __future__ import annotations

import warnings

import torch

from benchmark.errors import BenchmarkError

COMPILE_OFF = "off"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def known_compile_names() -> list[str]:
    """Every value `render.compile` accepts."""
    try:
        import torch._dynamo as dynamo

        backends = list(dynamo.list_backends(exclude_tags=()))
    except Exception:  # noqa: BLE001 - a torch without dynamo still accepts the modes (they fall back)
        backends = []
    return [COMPILE_OFF, "auto", *COMPILE_MODES, *sorted(set(backends) - set(COMPILE_MODES))]


def check_compile(name: str) -> str:
    """`name` if `render.compile` accepts it; BenchmarkError naming the choices otherwise."""
    if name in (COMPILE_OFF, "auto", *COMPILE_MODES):
        return name
    names = known_compile_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BenchmarkError(f"render.compile: unknown mode or backend {name!r}{hint}; choose one of {', '.join(names)}")
    return name


def resolve_compile(name: str, device: torch.device) -> str:
    """The mode to use on `device`: "auto" becomes "reduce-overhead" on CUDA and "off" elsewhere."""
    name = check_compile(name)
    if name == "auto":
        return "reduce-overhead" if device.type == "cuda" else COMPILE_OFF
    return name


def compile_module(module: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """torch.compile(module) with `name` as mode or backend; None (and one warning) if torch refuses at once.

    The wrapper shares the module's parameters (in-place weight writes reach it); the compilation
    itself happens at the first call, where Renderer.denoise catches a failure.
    """
    kwargs = {"mode": name} if name in COMPILE_MODES else {"backend": name}
    try:
        return torch.compile(module, fullgraph=False, dynamic=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. dynamo unsupported on this Python or platform
        warnings.warn(f"render.compile={name!r}: torch.compile is not available here ({type(exc).__name__}: "
                      f"{exc}); rendering without compilation", RuntimeWarning, stacklevel=3)
        return None
