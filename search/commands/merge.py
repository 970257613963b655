"""`mergesearch merge`: the everyday merger (every registered method: merge modes, TIES/DARE/SLERP, calc modes)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

HELP = """\
Merge checkpoints of one family (SD1.x, SD2.x, SDXL, SDXL refiner) into a new .safetensors, streaming key by
key from memory-mapped sources (memory use stays bounded by the largest tensor, not the model).
alpha=0 gives model A, as in A1111 and SuperMerger. Methods (`mergesearch methods` for details):

{methods}

Task-vector methods (ties, dare, dare-ties, affine) take BASE M1 [M2 ...] and --weights (one per
model after the base, default 1 each; affine: 1/n); random ones (dare) take --seed.
--blocks sets alpha per UNet block: 25 values IN00..IN11,M00,OUT00..OUT11 for SD1/SD2 (19 for
SDXL), or 26 (20) with BASE first as SuperMerger writes them. BASE then applies to the text
encoder and the VAE; --te-alpha / --vae-alpha override it (and --alpha when BASE is absent).
The SDXL refiner is its own family with 25 blocks. Sources may mix fp8, bf16, fp16, fp32 and fp64
(the maths is fp32). An inpainting (9-channel) or instruct-pix2pix (8-channel) model merged with a
standard one keeps its extra input channels; only the first 4 are merged.

Diffusers folders (model_index.json, unet/, text_encoder/, vae/) are accepted wherever a file is,
and `-o OUT/` writes one (diffusers' own save_pretrained). --unet-alpha, --te-alpha and --vae-alpha
give each component its own alpha. --vae FILE bakes a separate VAE into the output.

examples:
  mergesearch merge a.safetensors b.safetensors --alpha 0.3 -o ab.safetensors
  mergesearch merge a-diffusers/ b-diffusers/ --unet-alpha 0.75 --te-alpha 0.75 --vae-alpha 0.05 -o ab-diffusers/
  mergesearch merge a.safetensors b.safetensors --vae vae-ft-mse.safetensors -o ab-vae.safetensors
  mergesearch merge a.ckpt b.safetensors --blocks 0.5,1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,1 -o mbw.safetensors
  mergesearch merge a.safetensors b.safetensors base.safetensors --mode add-difference --alpha 1 --vae-alpha 0 -o ad.safetensors
  mergesearch merge base.safetensors m1.safetensors m2.safetensors --mode ties --density 0.2 --lambda 1 -o ties.safetensors
  mergesearch merge a.safetensors b.safetensors --mode cosineA --alpha 0.2 -o cos.safetensors
  mergesearch merge --recipe best.json -o best.safetensors
  mergesearch merge a.safetensors b.safetensors --alpha 0.5 --elemental "OUT03-OUT06:attn2:0.9, NOT M00:norm:0" \
      --exclude "VAE" --adjust 0,0,0,0,3,0,0,0 -o nudged.safetensors

--elemental sets alpha per key inside blocks: BLOCKS:ELEMENTS:RATIO entries (comma or newline
separated; ranges IN03-IN06, a leading NOT, element names are substrings of the key; later
entries win; RATIO v1/v2 sets alpha and beta). --include / --exclude name blocks (and, after a
':', key substrings) that are merged / held from model A. --adjust takes the eight Adjust values
IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3 (detail, contrast, brightness, colour; about +-5).
"""


def _method_lines() -> str:
    from merge_core.methods import METHODS

    lines = []
    for m in METHODS.values():
        roles = "BASE M1 .." if m.model_weights else " ".join(m.roles)
        params = ", ".join(p.name for p in m.params)
        lines.append(f"  {m.name:<16} {roles:<11} {params:<20} {m.summary}")
    return "\n".join(lines)


def _param_names() -> list[str]:
    """Every named parameter of every registered method, in first-seen order (alpha, beta, ...)."""
    from merge_core.methods import METHODS

    return list(dict.fromkeys(p.name for m in METHODS.values() for p in m.params))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "merge",
        help="merge checkpoints (merge modes, TIES/DARE/SLERP, calc modes, per-block weights)",
        description=HELP.format(methods=_method_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="A B [C ...]: .safetensors, .ckpt or .pt files, or diffusers folders")
    p.add_argument("-o", "--output", required=True,
                   help="the merged .safetensors to write; a name ending in / (or without a suffix when a "
                        "source is a diffusers folder) writes a diffusers folder")
    p.add_argument(
        "--mode", "--method", dest="mode", default="weighted-sum", metavar="METHOD",
        help="merge method or calc mode, any A1111/SuperMerger spelling (default: weighted-sum; see above)",
    )
    for name in _param_names():  # one option per method parameter; None = the method's default
        p.add_argument(f"--{name}", dest=f"param_{name}", type=float, metavar="X",
                       help=f"{name} (default: the method's; see `mergesearch methods`)")
    p.add_argument("--weights", metavar="W", help="task-vector methods: one weight per model after the base, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of random methods (dare), stored in the recipe (default 0)")
    p.add_argument("--blocks", metavar="W", help="alpha per UNet block, comma-separated (see above)")
    p.add_argument("--blocks-beta", metavar="W", help="beta per UNet block, like --blocks")
    p.add_argument("--unet-alpha", type=float, help="alpha for every UNet block (--blocks still overrides)")
    p.add_argument("--te-alpha", type=float, help="alpha for the text encoder(s)")
    p.add_argument("--vae-alpha", type=float, help="alpha for the VAE")
    p.add_argument(
        "--dtype",
        choices=["fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"],
        default=None,
        help="output dtype (default fp16, or the recipe's with --recipe); fp8 applies to the UNet, "
        "the text encoders and VAE stay fp16. The maths is fp32 whatever the sources' dtypes",
    )
    p.add_argument("--elemental", metavar="RULES", help="per-key alpha: BLOCKS:ELEMENTS:RATIO entries (see above)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--include", metavar="BLOCKS[:ELEMENTS]", help="merge only these blocks/elements (rest = A)")
    sel.add_argument("--exclude", metavar="BLOCKS[:ELEMENTS]", help="hold these blocks/elements from model A")
    p.add_argument("--adjust", metavar="8 VALUES", help="Adjust: IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3")
    p.add_argument("--vae", metavar="FILE", help="bake this VAE into the output (single-file VAE with or "
                   "without the first_stage_model. prefix, .pt read weights-only, or a diffusers VAE folder)")
    p.add_argument("--keep-ema", action="store_true", help="keep model A's EMA weights (dropped by default)")
    p.add_argument(
        "--recipe", type=Path, help="replay a recipe JSON (from --save-recipe, a search or an export)"
    )
    p.add_argument("--save-recipe", type=Path, metavar="FILE", help="also write the recipe used as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def _block_vectors(args, method, layout, n_sources):
    """The method's per-block vector for every weight id from the CLI options.

    Model weights come from --weights; each named parameter from its option (or the method's
    default); alpha and beta may vary per block (--blocks, --blocks-beta, BASE, --te/--vae-alpha).
    """
    from merge_core.weights import parse_block_list

    names = {p.name for p in method.params}
    if args.blocks and "alpha" not in names:
        raise ValueError(f"--blocks sets alpha per block, but {method.name} has no alpha parameter")
    if args.blocks_beta and "beta" not in names:
        raise ValueError(f"--blocks-beta sets beta per block, but {method.name} has no beta parameter")
    given = [n for n in _param_names() if getattr(args, f"param_{n}") is not None and n not in names]
    if given:
        raise ValueError(f"{method.name} takes no {', '.join('--' + n for n in given)}; "
                         f"its parameters are {', '.join(names) or 'none'}")
    weights: tuple[float, ...] = ()
    if method.model_weights:
        k = n_sources - 1
        if args.weights:
            try:
                weights = tuple(float(v) for v in args.weights.split(","))
            except ValueError:
                raise ValueError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
            if len(weights) != k:
                raise ValueError(f"--weights takes {k} value(s), one per model after the base; got {len(weights)}")
        else:
            weights = (1.0 / n_sources,) * k if method.linear else (1.0,) * k
    elif args.weights:
        raise ValueError(f"--weights is for task-vector methods (ties, dare, affine, ...), not {method.name}")
    alphas, base_a = parse_block_list(args.blocks, layout) if args.blocks else ({}, None)
    betas, base_b = parse_block_list(args.blocks_beta, layout) if args.blocks_beta else ({}, None)
    out = {}
    for wid in layout.weight_ids:
        values = {p.name: getattr(args, f"param_{p.name}") for p in method.params}
        values = {n: (method.defaults()[n] if v is None else v) for n, v in values.items()}
        if "alpha" in values:
            if wid in layout.blocks:
                unet_alpha = getattr(args, "unet_alpha", None)
                values["alpha"] = alphas.get(wid, values["alpha"] if unet_alpha is None else unet_alpha)
            else:
                values["alpha"] = base_a if base_a is not None else values["alpha"]
                override = args.te_alpha if wid == "TE" else args.vae_alpha if wid == "VAE" else None
                if override is not None:
                    values["alpha"] = override
        if "beta" in values:
            values["beta"] = betas.get(wid, values["beta"]) if wid in layout.blocks else (
                base_b if base_b is not None else values["beta"])
        out[wid] = weights + tuple(values[p.name] for p in method.params)
    return out


def with_key_rules(recipe, args):
    """The recipe with --elemental / --include / --exclude / --adjust applied (validated before any work)."""
    from merge_core import Recipe, layout_for
    from merge_core.adjust import parse_adjust
    from merge_core.elemental import parse_elemental, parse_selection

    update = {}
    layout = layout_for(recipe.family)
    if getattr(args, "elemental", None):
        update["elemental"] = parse_elemental(args.elemental, layout)
    if getattr(args, "include", None):
        update["selection"] = parse_selection("include", args.include, layout)
    if getattr(args, "exclude", None):
        update["selection"] = parse_selection("exclude", args.exclude, layout)
    if getattr(args, "adjust", None):
        update["adjust"] = parse_adjust(args.adjust)
    if not update:
        return recipe
    return Recipe.model_validate({**recipe.model_dump(), **{k: v.model_dump() if hasattr(v, "model_dump") else
                                                           tuple(e.model_dump() for e in v) for k, v in update.items()}})


def build_recipe(args):
    return with_key_rules(_base_recipe(args), args)


def _base_recipe(args):
    from merge_core import Recipe, Source, get_method, layout_for, open_checkpoint

    if args.recipe:
        if args.models:
            raise ValueError("give either MODEL files or --recipe, not both")
        return Recipe.load(args.recipe)
    method = get_method(args.mode)
    method.check_sources(len(args.models))
    family = open_checkpoint(args.models[0]).family
    layout = layout_for(family)
    weights = _block_vectors(args, method, layout, len(args.models))
    sources = tuple(Source(path=str(Path(m).resolve())) for m in args.models)
    return Recipe(
        family=family,
        method=method.name,
        sources=sources,
        weights=weights,
        dtype=args.dtype or "fp16",
        keep_ema=args.keep_ema,
        seed=args.seed if method.random else None,
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
    import tempfile

    from merge_core.outputs import same_file

    if path.is_dir():
        raise ValueError(f"--save-recipe {path}: is a folder; give a file name such as {path / 'recipe.json'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"--save-recipe {path}: folder {folder} does not exist; create it first")
    try:  # a real write, not os.access: it also catches read-only filesystems and holds for root
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise ValueError(f"--save-recipe {path}: cannot write in {folder} ({exc.strerror}); choose a writable folder") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"--save-recipe {path}: the file is read-only; choose another name")
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


def wants_folder(out_text: str, sources) -> bool:
    """A diffusers folder is written for ``OUT/``, or for a suffix-less OUT when a source is a folder."""
    import os

    if out_text.endswith(("/", os.sep)):
        return True
    return Path(out_text).suffix == "" and any((Path(s.path) / "model_index.json").is_file() for s in sources)


def merge_to_folder(recipe, out: Path, *, vae=None, overwrite=False, progress=True) -> Path:
    """Stream the merge into a temporary single file beside OUT, then write it as a diffusers folder
    (configs and tokenizer from the first source when it is a folder, else the family's shipped ones)."""
    from benchmark.diffusers_folder import check_output_folder, write_diffusers_folder
    from merge_core import merge_to_file

    check_output_folder(out, overwrite=overwrite)
    first = Path(recipe.sources[0].path)
    config = str(first) if (first / "model_index.json").is_file() else None
    tmp = out.with_name(f".{out.name}.merge.tmp.safetensors")
    dtype = recipe.dtype if recipe.dtype in ("fp16", "bf16", "fp32") else "fp16"
    try:
        merge_to_file(recipe, tmp, overwrite=True, progress=progress, vae=vae)
        write_diffusers_folder(tmp, out, config=config, dtype=dtype, overwrite=overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def run(args) -> int:
    from benchmark import BenchmarkError
    from merge_core import CheckpointError, merge_to_file

    t0 = time.perf_counter()
    out_text = str(args.output)
    args.output = Path(out_text)
    try:
        recipe = build_recipe(args)
        if args.recipe and args.dtype:  # the recipe's dtype unless --dtype is given
            recipe = recipe.model_copy(update={"dtype": args.dtype})
        warn_unusual_weights(recipe)
        if args.save_recipe:
            check_recipe_path(args.save_recipe, args.output, [s.path for s in recipe.sources])
        with unwind_on_sigterm():
            if wants_folder(out_text, recipe.sources):
                out = merge_to_folder(recipe, args.output, vae=args.vae, overwrite=args.overwrite,
                                      progress=not args.quiet)
            else:
                out = merge_to_file(recipe, args.output, overwrite=args.overwrite, progress=not args.quiet,
                                    vae=args.vae)
        if args.save_recipe:
            if out.is_dir():
                args.save_recipe.write_text(recipe.to_json(indent=2) + "\n")
            else:
                save_recipe_of(out, args.save_recipe)
        from merge_core.history import record, written_recipe

        record("merge", out, recipe=written_recipe(out) or recipe)
    except (CheckpointError, BenchmarkError, ValueError, OSError) as exc:
        print(f"mergesearch merge: error: {error_text(exc)}", file=sys.stderr)
        return 1
    if not args.quiet:
        files = [f for f in out.rglob("*") if f.is_file()] if out.is_dir() else [out]
        size = sum(f.stat().st_size for f in files) / 1e9
        print(
            f"wrote {out} ({size:.2f} GB, {recipe.family.value}, {recipe.method}) in {time.perf_counter() - t0:.1f} s"
        )
    return 0
