"""`mergesearch benchmark MODEL... --prompts SET --tagger NAME`: score checkpoints on a prompt set."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "benchmark",
        help="render a prompt set with each model, tag the images and compare tag recall",
        description=(
            "Build the family's pipeline once, load each checkpoint into it in memory, render the split's "
            "prompts with their fixed seeds, tag the images and score the recall of the prompted tags "
            "(per prompt, per category, overall with a 95%% bootstrap interval; precision beside it). "
            "Writes OUT/<model>/score.json and OUT/<model>/contact_sheet.jpg, OUT/scores.json for all "
            "models, and prints a per-category table."
        ),
    )
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="checkpoint file, folder of checkpoints, or toyworld:<name> from the toy zoo")
    parser.add_argument("--prompts", required=True, metavar="SET", help="prompt-set JSON (mergesearch prompts)")
    parser.add_argument("--tagger", default="clip", help="tagger: clip, wd or toyworld (default clip)")
    parser.add_argument("--tagger-option", action="append", default=[], metavar="KEY=VALUE",
                        help="tagger option, repeatable: e.g. model=ViT-L-14 pretrained=openai (clip), "
                             "model=PATH_OR_HUB_ID (wd)")
    parser.add_argument("--split", default="search", choices=("search", "holdout"), help="split to score")
    parser.add_argument("--vocab", default=None, help="vocabulary file, when the set's is not shipped")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--config", default=None,
                        help="pipeline config: sd1, sd2, sdxl, toyworld, a diffusers folder or hub id "
                             "(default: detected from the first model)")
    g = parser.add_argument_group("rendering")
    g.add_argument("--scheduler", default="euler-a",
                   help="euler-a, euler, dpmpp-2m-karras, dpmpp-2m, ddim, unipc, native (default euler-a)")
    g.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    g.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    g.add_argument("--width", type=int, default=None, help="image width (default: the family's native size)")
    g.add_argument("--height", type=int, default=None, help="image height (default: native)")
    g.add_argument("--clip-skip", type=int, default=1, help="A1111 clip skip: 1 = last layer, 2 = penultimate")
    g.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                   help="override the config's prediction type (SD 2.x 768-v vs 512 base)")
    g.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    g.add_argument("--fp32", action="store_true", help="render in fp32 on GPU (default fp16 there)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared CPU)")
    parser.set_defaults(handler=run)
    return parser


def resolve_models(specs: list[str]) -> list[tuple[str, Path]]:
    """(name, path) per model; a folder expands to its checkpoints; toyworld:<name> uses the toy zoo."""
    from benchmark import BenchmarkError

    out: list[tuple[str, Path]] = []
    for spec in specs:
        if spec.startswith("toyworld:"):
            from benchmark.toyworld import zoo

            models = zoo()
            name = spec.split(":", 1)[1]
            if name not in models:
                raise BenchmarkError(f"model {spec!r}: the toy zoo has {sorted(models)}")
            out.append((name, Path(models[name])))
            continue
        p = Path(spec)
        if (p / "model_index.json").is_file():  # a diffusers folder is one model
            out.append((p.name, p))
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in CHECKPOINT_SUFFIXES)
            if not found:
                raise BenchmarkError(f"model folder {p}: holds no {'/'.join(CHECKPOINT_SUFFIXES)} files")
            out.extend((q.stem, q) for q in found)
        elif p.is_file():
            out.append((p.stem, p))
        else:
            raise BenchmarkError(f"model {spec!r}: no such file or folder (or toyworld:<name>)")
    names = [n for n, _ in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        out = [(f"{n}-{i}" if n in dupes else n, p) for i, (n, p) in enumerate(out)]
    return out


def _parse_options(items: list[str]) -> dict[str, object]:
    from benchmark import BenchmarkError

    opts: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise BenchmarkError(f"--tagger-option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            opts[k] = float(v) if "." in v else int(v)
        except ValueError:
            opts[k] = v
    return opts


def _default_config(models: list[tuple[str, Path]], specs: list[str], tagger: str) -> str:
    if tagger == "toyworld" or any(s.startswith("toyworld:") for s in specs):
        return "toyworld"
    from benchmark.renderer import guess_config

    return guess_config(models[0][1])


def format_table(results: dict[str, dict]) -> str:
    """Categories as rows, models as columns; overall (95% CI) and precision at the bottom."""
    names = list(results)
    cats: list[str] = []
    for r in results.values():
        cats += [c for c in r["score"]["categories"] if c not in cats]
    w0 = max([len(c) for c in cats] + [len("overall (95% CI)"), 8])
    widths = [max(len(n), 19) for n in names]
    lines = [f"{'':<{w0}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))]
    for c in cats:
        cells = []
        for n, w in zip(names, widths, strict=True):
            s = results[n]["score"]["categories"].get(c)
            cells.append(f"{s['recall']:>{w}.3f}" if s else f"{'-':>{w}}")
        lines.append(f"{c:<{w0}}  " + "  ".join(cells))
    overall = [f"{r['score']['overall']:.3f} [{r['score']['ci_low']:.2f},{r['score']['ci_high']:.2f}]"
               for r in results.values()]
    lines.append(f"{'overall (95% CI)':<{w0}}  " + "  ".join(f"{o:>{w}}" for o, w in zip(overall, widths, strict=True)))
    prec = [r["score"]["precision"] for r in results.values()]
    lines.append(f"{'precision':<{w0}}  " + "  ".join(
        f"{p:>{w}.3f}" if p is not None else f"{'-':>{w}}" for p, w in zip(prec, widths, strict=True)))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch
    from pydantic import ValidationError
    from tqdm import tqdm

    from benchmark import (
        Benchmark,
        BenchmarkError,
        Renderer,
        RenderSettings,
        contact_sheet,
        get_tagger,
        load_prompt_set,
        load_vocabulary,
        read_checkpoint,
    )
    from benchmark.score import write_json_atomic

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        prompt_set = load_prompt_set(args.prompts)
        models = resolve_models(args.models)
        settings = RenderSettings(scheduler=args.scheduler, steps=args.steps, cfg=args.cfg, width=args.width,
                                  height=args.height, clip_skip=args.clip_skip,
                                  prediction_type=args.prediction_type)
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") and not args.fp32 else torch.float32
        options = _parse_options(args.tagger_option)
        if args.tagger in ("clip", "wd"):
            options.setdefault("device", device)
        tagger = get_tagger(args.tagger, **options)
        vocab = load_vocabulary(args.vocab) if args.vocab else None
        bench = Benchmark(prompt_set, args.split, tagger, settings, vocabulary=vocab, batch_size=args.batch_size)
        config = args.config or _default_config(models, args.models, args.tagger)
        renderer = Renderer(config, device=device, dtype=dtype)
    except BenchmarkError as exc:
        print(f"mergesearch benchmark: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a bad rendering option
        err = exc.errors()[0]
        print(f"mergesearch benchmark: {err['loc'][0] if err['loc'] else 'settings'}: {err['msg']}", file=sys.stderr)
        return 2
    except (ImportError, ModuleNotFoundError) as exc:
        print(f"mergesearch benchmark: tagger {args.tagger!r} is not available ({exc})", file=sys.stderr)
        return 2

    from merge_core.hashing import file_sha256

    out = Path(args.out)
    n_img = len(bench.prompts)
    results: dict[str, dict] = {}
    bar = tqdm(total=n_img * len(models), unit="img", desc="benchmark", file=sys.stderr)
    for name, path in models:
        bar.set_postfix_str(name)
        try:
            renderer.load_state_dict(read_checkpoint(path), source=str(path))
        except BenchmarkError as exc:
            bar.close()
            print(f"mergesearch benchmark: {exc}", file=sys.stderr)
            return 2
        t0, done, score, images = time.perf_counter(), 0, None, []
        for score, images in bench.evaluate_batches(renderer):  # noqa: B007 - the last one is complete
            bar.update(len(images) - done)
            done = len(images)
        seconds = time.perf_counter() - t0
        record = {
            "model": {"name": name, "path": str(path), "sha256": file_sha256(path)},
            "prompt_set": {"path": str(args.prompts), "hash": prompt_set.hash, "split": args.split,
                           "vocabulary": prompt_set.vocabulary.model_dump()},
            "tagger": {"name": args.tagger, "options": {k: str(v) for k, v in options.items()}},
            "config": str(renderer.config_dir), "family": renderer.family, "device": device,
            "dtype": str(dtype).removeprefix("torch."),
            "settings": settings.model_dump(),
            "seconds": round(seconds, 3), "images_per_second": round(n_img / seconds, 3),
            "score": score.to_json(),
        }
        write_json_atomic(record, out / name / "score.json")
        sheet = contact_sheet(images, score, title=f"{name}  recall {score.overall:.3f}  ({args.split})")
        tmp = out / name / ".contact_sheet.tmp.jpg"
        sheet.save(tmp, quality=88)
        tmp.replace(out / name / "contact_sheet.jpg")
        results[name] = record
    bar.close()
    write_json_atomic({n: {"overall": r["score"]["overall"], "ci": [r["score"]["ci_low"], r["score"]["ci_high"]],
                           "precision": r["score"]["precision"],
                           "categories": {c: s["recall"] for c, s in r["score"]["categories"].items()},
                           "sha256": r["model"]["sha256"]} for n, r in results.items()},
                      out / "scores.json")
    print(f"prompt set {prompt_set.hash}, split {args.split} ({n_img} prompts), tagger {args.tagger}")
    print(format_table(results))
    print(f"wrote {out}/<model>/score.json, contact_sheet.jpg and {out}/scores.json")
    return 0
