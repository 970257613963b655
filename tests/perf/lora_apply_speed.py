"""Speed and memory of `mergesearch lora apply` against a plain load-add-save loop, in the same run.

Run as a script (not collected by pytest):

    .venv/bin/python tests/perf/lora_apply_speed.py [--family sd1] [--rank 64] [--repeat 2]

Writes an fp16 checkpoint with the real key layout of --family (random values; SD1.5-sized for
sd1) and a kohya LoRA of --rank on every module kohya trains by default without LoCon (text
encoder attention/MLP and the UNet's transformer blocks), then times, each in its own process:
  * `mergesearch lora apply MODEL LORA:0.8 -o OUT` (streamed key by key, this project),
  * a plain loop: safetensors.torch.load_file the model and the LoRA, W += 0.8*alpha/r*up@down in
    fp32 per module, save_file.
Both outputs are checked equal (max |difference| printed). Peak anonymous memory is sampled as
in merge_speed.py. Targets: no slower than the plain loop, peak anonymous memory < 1 GB for SD1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from merge_speed import make_checkpoint, measure  # noqa: E402

PLAIN = r"""
import sys, torch
from safetensors.torch import load_file, save_file
torch.set_num_threads({threads})
model, lora, targets, out = sys.argv[1:5]
import json
targets = json.load(open(targets))
sd = load_file(model)
lo = load_file(lora)
for name, key in targets.items():
    down, up = lo[name + ".lora_down.weight"].float(), lo[name + ".lora_up.weight"].float()
    scale = 0.8 * float(lo[name + ".alpha"]) / down.shape[0]
    w = sd[key]
    sd[key] = (w.float() + scale * (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(w.shape)).to(w.dtype)
save_file(sd, out, metadata={{"format": "pt"}})
"""


def make_lora(model: Path, path: Path, rank: int, seed: int) -> dict[str, str]:
    """A random kohya LoRA on the default (non-LoCon) modules; returns {module name: model key}."""
    import torch

    from merge_core import open_checkpoint
    from merge_core.lora import lora_targets, write_lora

    ckpt = open_checkpoint(model)
    g = torch.Generator().manual_seed(seed)
    modules, names = {}, {}
    for name, t in lora_targets(ckpt).items():
        if not (t.canonical and t.default) or t.rows is not None:
            continue
        if len(t.shape) == 4 and (t.shape[2] > 1 or t.shape[3] > 1):
            continue  # 3x3 convs: LoCon only
        n_in = 1
        for s in t.shape[1:]:
            n_in *= s
        r = min(rank, t.shape[0], n_in)
        down = torch.randn(r, n_in, generator=g) * 0.01
        up = torch.randn(t.shape[0], r, generator=g) * 0.01
        if len(t.shape) == 4:
            down, up = down.reshape(r, *t.shape[1:]), up.reshape(t.shape[0], r, 1, 1)
        modules[name] = (down, up, float(r) / 2)
        names[name] = t.key
    write_lora(modules, path, {"ss_network_module": "networks.lora"}, overwrite=True)
    return names


def max_difference(a: Path, b: Path) -> float:
    from merge_core import open_checkpoint

    ca, cb = open_checkpoint(a), open_checkpoint(b)
    worst = 0.0
    for k in ca.keys():
        ta, tb = ca.tensor(k), cb.tensor(k)
        if ta.is_floating_point():
            worst = max(worst, float((ta.float() - tb.float()).abs().max()))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "perf-lora")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "perf" / "lora_apply_speed.json")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model, lora = work / f"{args.family}.safetensors", work / f"{args.family}_r{args.rank}.safetensors"
    if not model.exists():
        t = time.perf_counter()
        make_checkpoint(args.family, model, 1)
        print(f"wrote {model.name} ({model.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    names = make_lora(model, lora, args.rank, 3)
    (work / "targets.json").write_text(json.dumps(names))
    print(f"LoRA: {len(names)} modules at rank {args.rank} ({lora.stat().st_size / 1e6:.0f} MB)")
    for p in (model, lora):  # page cache warm for both tools
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MERGESEARCH_CACHE_DIR": str(work / "cache")}
    outs = {"mergesearch": work / "out_mergesearch.safetensors", "plain-loop": work / "out_plain.safetensors"}
    cmds = {
        "mergesearch": [sys.executable, "-m", "search.cli", "lora", "apply", str(model), f"{lora}:0.8", "-o",
                        str(outs["mergesearch"]), "--overwrite", "--quiet"],
        "plain-loop": [sys.executable, "-c", PLAIN.format(threads=args.threads), str(model), str(lora),
                       str(work / "targets.json"), str(outs["plain-loop"])],
    }
    best: dict[str, dict] = {}
    for i in range(args.repeat):
        for name, cmd in cmds.items():
            r = measure(cmd, outs[name], {**env, "MERGESEARCH_HISTORY": "0"})
            print(f"  run {i + 1} {name:12s} {r['seconds']:7.2f} s on disk  peak anon {r['peak_anon_gb']:.2f} GB",
                  flush=True)
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    diff = max_difference(outs["mergesearch"], outs["plain-loop"])
    ratio = best["plain-loop"]["seconds"] / best["mergesearch"]["seconds"]
    mem = best["plain-loop"]["peak_anon_gb"] / max(best["mergesearch"]["peak_anon_gb"], 1e-9)
    result = {"family": args.family, "rank": args.rank, "modules": len(names), "model_gb": model.stat().st_size / 1e9,
              "best": best, "speedup_vs_plain": ratio, "memory_ratio_plain_over_ours": mem,
              "max_abs_difference": diff}
    print(f"mergesearch {best['mergesearch']['seconds']:.1f} s vs plain loop {best['plain-loop']['seconds']:.1f} s: "
          f"{ratio:.2f}x; peak anon {best['mergesearch']['peak_anon_gb']:.2f} vs "
          f"{best['plain-loop']['peak_anon_gb']:.2f} GB; outputs differ by at most {diff:.3g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for p in outs.values():
        p.unlink(missing_ok=True)
    return 0 if ratio >= 1.0 and best["mergesearch"]["peak_anon_gb"] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
