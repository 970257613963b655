"""`mergesearch grid`: an XYZ plot of merges built in memory (SuperMerger's XYZ plot)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """\
Render a grid of merges of A, B [and C]: up to three axes (--x, --y, --z), each KIND=VALUES.
The sources are loaded once; each cell's merge is written into the live pipeline in place (no
file per cell) and rendered by the benchmark's renderer. Writes OUT/grid.png (OUT/grid-zN.png per
Z value), every cell's image in OUT/cells/ and OUT/grid.json (each cell's recipe, prompt, seed,
image and tag recall). Running the same grid again reuses the cells already rendered.

axis kinds (numbers comma-separated or LO..HIxN; '|' between values that contain commas/spaces):
  alpha=0..1x5  beta=0,0.5  alpha-beta=0.2 0.3,0.5 0.5  seed=1,2,3  method=weighted-sum,slerp,cosine-a
  mbw=0,0,...(25)|IN00-IN11   (a block set = 1 there, 0 elsewhere)
  pinpoint=IN01|OUT03-OUT06|NOT M00 OUT03-OUT06   (the alpha axis's value goes into those blocks)
  model-a=a.safetensors,b.safetensors  model-b=...  model-c=...  prompt=red circle|blue square
  elemental=OUT03-OUT06:attn2:0.9|M00::0  adjust=0,0,0,0,5,0,0,0|0,0,0,0,-5,0,0,0  random=5

examples:
  mergesearch grid toyworld:base toyworld:colorist --x alpha=0..1x5 --y seed=1,2,3 --prompt "magenta, circle" -o runs/grid
  mergesearch grid a.safetensors b.safetensors --x alpha=0,0.5,1 --y "pinpoint=ALL|IN00-IN11|M00|OUT00-OUT11" \\
      --prompt "1girl, red hair" --config sd1 -o runs/grid-pinpoint
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("grid", help="XYZ plot: render merges over alpha, blocks, methods, seeds, prompts",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="A B [C]: checkpoint files or toyworld:<name>")
    p.add_argument("--x", metavar="KIND=VALUES", help="columns")
    p.add_argument("--y", metavar="KIND=VALUES", help="rows")
    p.add_argument("--z", metavar="KIND=VALUES", help="one grid image per value")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--mode", default="weighted-sum", help="merge method or calc mode (default weighted-sum)")
    p.add_argument("--alpha", type=float, default=0.5, help="alpha where no axis sets it (default 0.5)")
    p.add_argument("--beta", type=float, default=0.25, help="beta where no axis sets it (default 0.25)")
    p.add_argument("--prompt", default="", help="prompt where no prompt axis sets it")
    p.add_argument("--seed", type=int, default=0, help="seed where no seed axis sets it (default 0)")
    p.add_argument("--elemental", default="", metavar="RULES", help="Elemental rules for every cell")
    p.add_argument("--adjust", default="", metavar="8 VALUES", help="Adjust for every cell")
    p.add_argument("--dice-seed", type=int, default=0, help="seed of the random axis's weights (default 0)")
    p.add_argument("--tagger", default=None, help="score each cell's tag recall with this tagger (e.g. toyworld)")
    p.add_argument("--vocab", default=None, help="vocabulary of the tags (default: the toy world's for toyworld)")
    p.add_argument("--config", default=None, help="renderer config (default: guessed from model A)")
    g = p.add_argument_group("rendering")
    g.add_argument("--scheduler", default="ddim", help="scheduler (default ddim)")
    g.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    g.add_argument("--cfg", type=float, default=4.0, help="guidance scale (default 4)")
    g.add_argument("--cell", type=int, default=96, help="pixels per cell in the grid image (default 96)")
    p.add_argument("--no-reuse", action="store_true", help="render every cell again")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def plan(args: argparse.Namespace):
    """Axes and cells, all validated; nothing is loaded or rendered (errors: GridError / ValueError)."""
    from merge_core import open_checkpoint
    from merge_core.layout import layout_for
    from search.commands.benchmark import resolve_models
    from search.grid.axes import GridBase, GridError, build_cells, parse_axis

    if not 1 <= len(args.models) <= 3:
        raise GridError("give models A, B [and C]")
    resolved = {}

    def resolve(spec: str) -> Path:
        if spec not in resolved:
            (_, path), = resolve_models([spec])
            resolved[spec] = path
        return resolved[spec]

    family = open_checkpoint(resolve(args.models[0])).family
    layout = layout_for(family)
    axes = [parse_axis(s, layout) for s in (args.x, args.y, args.z) if s is not None]
    if not axes:
        raise GridError("give at least one axis: --x KIND=VALUES (e.g. --x alpha=0..1x5)")
    base = GridBase(models=tuple(args.models), method=args.mode, alpha=args.alpha, beta=args.beta,
                    prompt=args.prompt, seed=args.seed, elemental=args.elemental, adjust=args.adjust,
                    dice_seed=args.dice_seed)
    if args.elemental:
        from merge_core.elemental import parse_elemental

        parse_elemental(args.elemental, layout)
    if args.adjust:
        from merge_core.adjust import parse_adjust

        parse_adjust(args.adjust)
    return axes, build_cells(base, axes, layout, family.value, resolve)


def run(args: argparse.Namespace) -> int:
    from benchmark import BenchmarkError, RenderSettings
    from merge_core import CheckpointError
    from search.grid.render import render_grid

    try:
        axes, cells = plan(args)
        settings = RenderSettings(scheduler=args.scheduler, steps=args.steps, cfg=args.cfg)
        tagger = vocabulary = None
        if args.tagger:
            from benchmark import get_tagger, load_vocabulary

            tagger = get_tagger(args.tagger)
            if args.vocab is None and args.tagger != "toyworld":
                raise ValueError(f"--tagger {args.tagger} needs --vocab (a vocabulary YAML)")
            from benchmark.toyworld import VOCAB_PATH

            vocabulary = load_vocabulary(args.vocab or VOCAB_PATH)
        names = " ".join(Path(m.split(":", 1)[1] if m.startswith("toyworld:") else m).stem for m in args.models)
        title = f"{args.mode} of {names}" + ("" if any(a.kind == "prompt" for a in axes) else f": {cells[0].prompt}")
        data = render_grid(cells, axes, args.out, settings=settings, config=args.config, tagger=tagger,
                           vocabulary=vocabulary, progress=not args.quiet, reuse=not args.no_reuse, title=title,
                           cell_px=args.cell)
    except (BenchmarkError, CheckpointError, ValueError, OSError) as exc:
        from search.commands.merge import error_text

        print(f"mergesearch grid: error: {error_text(exc)}", file=sys.stderr)
        return 1
    t = data["timings"]
    print(f"{len(cells)} cells ({t['rendered']} rendered, {t['reused']} reused; merge {t['apply_s']:.2f} s, "
          f"render {t['render_s']:.1f} s) -> {', '.join(str(args.out / g) for g in data['grids'])}")
    return 0
