"""`mergesearch convert IN OUT`: single-file checkpoint <-> diffusers folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = """\
Convert between a single-file checkpoint (.safetensors, .ckpt/.pt read weights-only) and a
diffusers folder (model_index.json, unet/, text_encoder/, vae/, tokenizer/, scheduler/).

  IN a file    -> OUT a diffusers folder, written by diffusers' save_pretrained (weights through
                  diffusers' own single-file converters; configs and tokenizer from --config or the
                  shipped family config that fits the file)
  IN a folder  -> OUT a .safetensors in the single-file (ldm) key layout A1111/ComfyUI load

examples:
  mergesearch convert model.safetensors model-diffusers/
  mergesearch convert model-diffusers/ model.safetensors --dtype fp16
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="single-file checkpoint <-> diffusers folder", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("output", type=Path, metavar="OUT")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="output dtype (default fp16)")
    p.add_argument("--config", help="diffusers config folder or shipped family (sd1, sd2, sdxl, toyworld) for a "
                                    "file -> folder conversion (default: guessed from the file)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from benchmark import BenchmarkError
    from benchmark.diffusers_folder import write_diffusers_folder
    from merge_core import CheckpointError
    from merge_core.convert import save_as_single_file

    from .merge import unwind_on_sigterm

    t0 = time.perf_counter()
    try:
        with unwind_on_sigterm():
            if args.input.is_dir():
                if args.output.suffix != ".safetensors":
                    raise ValueError(f"{args.output}: a diffusers folder converts to a single file; name it *.safetensors")
                save_as_single_file(args.input, args.output, dtype=args.dtype, overwrite=args.overwrite)
                what = "single file"
            else:
                if not args.input.is_file():
                    raise ValueError(f"{args.input}: no such file or folder")
                write_diffusers_folder(args.input, args.output, config=args.config, dtype=args.dtype,
                                       overwrite=args.overwrite)
                what = "diffusers folder"
    except (CheckpointError, BenchmarkError, ValueError, OSError) as exc:
        print(f"mergesearch convert: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({what}, {args.dtype}) in {time.perf_counter() - t0:.1f} s")
    return 0
