"""LoRA extraction round trip on the toy world: relative error per rank against the optimum.

Run as a script (not collected by pytest):

    .venv/bin/python tests/perf/lora_roundtrip.py [--a base] [--b colorist] [--ranks 1 2 4 8 16 32 64]

For each rank R: `lora extract A B --rank R` (fp32), then `lora apply A LORA:1`, and over every weight
the LoRA covers, the relative error ||applied - B|| / ||B - A|| next to the Eckart-Young optimum
sqrt(sum_k ||D_k - D_k,R||^2 / sum_k ||D_k||^2) from the singular values (torch.linalg.svdvals) —
equal when the extraction's truncation is the optimal one. Also the share of ||B - A|| that lies in
weights a LoRA cannot carry (norms, biases, the VAE, conv_in/conv_out, embeddings).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    from benchmark.toyworld import zoo
    from merge_core import layout_for, open_checkpoint
    from merge_core.lora import LoraSpec, apply_loras_to_file, extract_lora, lora_targets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", default="base")
    ap.add_argument("--b", default="colorist")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "perf" / "lora_roundtrip.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    z = zoo()
    ca, cb = open_checkpoint(z[args.a]), open_checkpoint(z[args.b])
    targets = {n: t for n, t in lora_targets(ca).items() if t.canonical and t.default}
    keys = sorted({t.key for t in targets.values()})
    layout = layout_for(ca.family)
    total = sum(float(((cb.tensor(k).float() - ca.tensor(k).float()) ** 2).sum())
                for k in ca.keys() if layout.block_of(k) is not None and ca.dtype(k).is_floating_point)
    covered = sum(float(((cb.tensor(k).float() - ca.tensor(k).float()) ** 2).sum()) for k in keys)
    svals = {k: torch.linalg.svdvals((cb.tensor(k).float() - ca.tensor(k).float()).reshape(ca.shape(k)[0], -1))
             for k in keys}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in args.ranks:
            lora, out = Path(tmp) / f"r{r}.safetensors", Path(tmp) / f"a{r}.safetensors"
            extract_lora(z[args.a], z[args.b], lora, rank=r, dtype="fp32", progress=False, overwrite=True)
            apply_loras_to_file(z[args.a], [LoraSpec(str(lora))], out, dtype="fp32", progress=False, overwrite=True)
            co = open_checkpoint(out)
            err = sum(float(((co.tensor(k).float() - cb.tensor(k).float()) ** 2).sum()) for k in keys)
            best = sum(float((s[r:] ** 2).sum()) for s in svals.values())
            rows.append({"rank": r, "relative_error": (err / covered) ** 0.5, "optimal": (best / covered) ** 0.5,
                         "lora_mb": lora.stat().st_size / 1e6})
            print(f"rank {r:3d}: relative error {rows[-1]['relative_error']:.4f} (optimal {rows[-1]['optimal']:.4f}), "
                  f"LoRA {rows[-1]['lora_mb']:.2f} MB", flush=True)
    share = 1 - covered / total
    print(f"{len(keys)} weights covered; {share:.1%} of ||{args.b} - {args.a}||^2 lies in weights a LoRA cannot carry")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"a": args.a, "b": args.b, "rows": rows, "uncovered_share": share}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
