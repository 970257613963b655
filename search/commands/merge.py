"""`mergesearch merge`: the everyday merger (weighted sum, add difference, triple sum, sum twice)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

HELP = """\
Merge two or three checkpoints of one family (SD1.x, SD2.x, SDXL) into a new .safetensors,
streaming key by key from memory-mapped sources (memory use stays small whatever the size).
alpha=0 gives model A, as in A1111 and SuperMerger.

  weighted-sum    (1-a)A + aB                 A B
  add-difference  A + a(B - C)                A B C
  triple-sum      (1-a-b)A + aB + bC          A B C
  sum-twice       (1-b)((1-a)A + aB) + bC     A B C

--blocks sets alpha per UNet block: 25 values IN00..IN11,M00,OUT00..OUT11 for SD1/SD2 (19 for
SDXL), or 26 (20) with BASE first as SuperMerger writes them. BASE then applies to the text
encoder and the VAE; --te-alpha / --vae-alpha override it (and --alpha when BASE is absent).

examples:
  mergesearch merge a.safetensors b.safetensors --alpha 0.3 -o ab.safetensors
  mergesearch merge a.ckpt b.safetensors --blocks 0.5,1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,1 -o mbw.safetensors
  mergesearch merge a.safetensors b.safetensors base.safetensors --mode add-difference --alpha 1 --vae-alpha 0 -o ad.safetensors
  mergesearch merge --recipe best.json -o best.safetensors
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "merge",
        help="merge checkpoints (weighted sum, add difference, per-block weights)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="A B [C]: .safetensors, .ckpt or .pt files")
    p.add_argument("-o", "--output", required=True, type=Path, help="the merged .safetensors to write")
    p.add_argument(
        "--mode",
        default="weighted-sum",
        choices=["weighted-sum", "add-difference", "triple-sum", "sum-twice"],
        help="merge method (default: weighted-sum)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="weight of B (default 0.5)")
    p.add_argument(
        "--beta", type=float, default=0.25, help="weight of C for triple-sum / sum-twice (default 0.25)"
    )
    p.add_argument("--blocks", metavar="W", help="alpha per UNet block, comma-separated (see above)")
    p.add_argument("--blocks-beta", metavar="W", help="beta per UNet block, like --blocks")
    p.add_argument("--te-alpha", type=float, help="alpha for the text encoder(s)")
    p.add_argument("--vae-alpha", type=float, help="alpha for the VAE")
    p.add_argument(
        "--dtype",
        choices=["fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"],
        default=None,
        help="output dtype (default fp16, or the recipe's with --recipe); fp8 applies to the UNet, "
        "the text encoders and VAE stay fp16. The maths is fp32 whatever the sources' dtypes",
    )
    p.add_argument("--keep-ema", action="store_true", help="keep model A's EMA weights (dropped by default)")
    p.add_argument(
        "--recipe", type=Path, help="replay a recipe JSON (from --save-recipe, a search or an export)"
    )
    p.add_argument("--save-recipe", type=Path, metavar="FILE", help="also write the recipe used as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def _block_params(args, layout, alpha_text, beta_text, n_params):
    """weights per weight id for a 1- or 2-parameter method from the CLI options."""
    from merge_core.weights import parse_block_list

    alphas, base_a = parse_block_list(alpha_text, layout) if alpha_text else ({}, None)
    betas, base_b = parse_block_list(beta_text, layout) if beta_text else ({}, None)
    weights = {}
    for wid in layout.weight_ids:
        if wid in layout.blocks:
            a, b = alphas.get(wid, args.alpha), betas.get(wid, args.beta)
        else:
            a = base_a if base_a is not None else args.alpha
            b = base_b if base_b is not None else args.beta
            override = args.te_alpha if wid == "TE" else args.vae_alpha if wid == "VAE" else None
            if override is not None:
                a = override
        weights[wid] = (a,) if n_params == 1 else (a, b)
    return weights


def build_recipe(args):
    from merge_core import Recipe, Source, get_method, layout_for, open_checkpoint

    if args.recipe:
        if args.models:
            raise ValueError("give either MODEL files or --recipe, not both")
        return Recipe.load(args.recipe)
    method = get_method(args.mode)
    if len(args.models) != method.n_sources:
        names = " ".join("ABC"[: method.n_sources])
        raise ValueError(f"{method.name} merges {method.n_sources} models ({names}); got {len(args.models)}")
    family = open_checkpoint(args.models[0]).family
    layout = layout_for(family)
    weights = _block_params(args, layout, args.blocks, args.blocks_beta, method.n_params(method.n_sources))
    sources = tuple(Source(path=str(Path(m).resolve())) for m in args.models)
    return Recipe(
        family=family,
        method=method.name,
        sources=sources,
        weights=weights,
        dtype=args.dtype or "fp16",
        keep_ema=args.keep_ema,
    )


@contextlib.contextmanager
def unwind_on_sigterm():
    """Make SIGTERM (a killed job, a closed session) unwind like Ctrl-C, so the temporary output is removed."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return str(err.get("ctx", {}).get("error", err["msg"])).removeprefix("Value error, ")
    return str(exc)


# SuperMerger's sliders allow weights in [-1, 2]; outside it a typo (5 for 0.5) is the likelier story.
USUAL_RANGE = (-1.0, 2.0)


def warn_unusual_weights(recipe) -> None:
    """A CheckpointWarning naming the blocks whose weights lie outside USUAL_RANGE."""
    import warnings

    from merge_core.errors import CheckpointWarning

    lo, hi = USUAL_RANGE
    odd = [(w, p) for w, params in recipe.weights.items() for p in params if not lo <= p <= hi]
    if odd:
        listing = ", ".join(f"{w}={p:g}" for w, p in odd[:6]) + (" ..." if len(odd) > 6 else "")
        warnings.warn(
            f"weights outside [{lo:g}, {hi:g}] ({listing}); merges that far out rarely make a usable model — "
            "check for a typo (e.g. 5 for 0.5)",
            CheckpointWarning,
            stacklevel=2,
        )


def check_recipe_path(path: Path, output: Path, models) -> None:
    """Refuse a --save-recipe path that could not be written, before the merge starts."""
    import os

    from merge_core.outputs import same_file

    if path.is_dir():
        raise ValueError(f"--save-recipe {path}: is a folder; give a file name such as {path / 'recipe.json'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"--save-recipe {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--save-recipe {path}: cannot write there (permission denied); choose a writable folder")
    for other in [output, *models]:
        if same_file(path, Path(other)) or path.resolve() == Path(other).resolve():
            raise ValueError(f"--save-recipe {path}: is {other}, an input or the output; choose another name")


def save_recipe_of(out: Path, path: Path) -> None:
    """Write the recipe the merge in ``out`` records (with each source's sha256), atomically."""
    import os
    import tempfile

    from merge_core import Recipe
    from merge_core.provenance import RECIPE_KEY
    from merge_core.safetensors_file import read_header

    recipe = Recipe.from_json(read_header(out)[1][RECIPE_KEY])
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(recipe.to_json(indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args) -> int:
    from merge_core import CheckpointError, merge_to_file

    t0 = time.perf_counter()
    try:
        recipe = build_recipe(args)
        if args.recipe and args.dtype:  # the recipe's dtype unless --dtype is given
            recipe = recipe.model_copy(update={"dtype": args.dtype})
        warn_unusual_weights(recipe)
        if args.save_recipe:
            check_recipe_path(args.save_recipe, args.output, [s.path for s in recipe.sources])
        with unwind_on_sigterm():
            out = merge_to_file(recipe, args.output, overwrite=args.overwrite, progress=not args.quiet)
        if args.save_recipe:
            save_recipe_of(out, args.save_recipe)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"mergesearch merge: error: {error_text(exc)}", file=sys.stderr)
        return 1
    if not args.quiet:
        size = out.stat().st_size / 1e9
        print(
            f"wrote {out} ({size:.2f} GB, {recipe.family.value}, {recipe.method}) in {time.perf_counter() - t0:.1f} s"
        )
    return 0
