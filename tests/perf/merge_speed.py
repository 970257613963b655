"""Speed and memory of `mergesearch merge` against sd-mecha and a plain safetensors loop.

Run as a script (not collected by pytest):

    .venv/bin/python tests/perf/merge_speed.py [--family sd1 sdxl] [--repeat 2]

For each family it writes two fp16 checkpoints with the real key layout (random values)
under --workdir, then times, in the same run, a weighted sum with alpha 0.3 done by
  * `mergesearch merge A B --alpha 0.3` (this project),
  * sd-mecha's `weighted_sum` (installed into its own venv, runs/perf-env, which reuses
    this venv's torch through a .pth file so nothing large is downloaded),
  * a plain loop: safetensors.torch.load_file both, (1-a)A + aB per key in fp32, save_file.
Each runs in its own process; peak anonymous memory is the highest RssAnon sampled from
/proc/<pid>/status every 10 ms (file-backed pages of memory-mapped inputs are page cache,
not process memory). Targets: >= 5x faster than sd-mecha, >= 2x faster than the plain
loop, peak anonymous memory < 1 GB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PLAIN = r"""
import sys, torch
from safetensors.torch import load_file, save_file
torch.set_num_threads({threads})
a, b, out = sys.argv[1:4]
A = load_file(a); B = load_file(b)
res = {{}}
for k, t in A.items():
    if t.is_floating_point() and k in B:
        res[k] = ((1 - 0.3) * t.float() + 0.3 * B[k].float()).to(t.dtype)
    else:
        res[k] = t
save_file(res, out, metadata={{"format": "pt"}})
"""

MECHA = r"""
import sys, torch, sd_mecha
torch.set_num_threads({threads})
a, b, out = sys.argv[1:4]
recipe = sd_mecha.weighted_sum(sd_mecha.model(a), sd_mecha.model(b), alpha=0.3)
sd_mecha.merge(recipe, output=out, merge_dtype=torch.float32, output_dtype=torch.float16, threads={workers})
"""


def make_checkpoint(family: str, path: Path, seed: int) -> None:
    import torch

    from merge_core.safetensors_file import StreamingWriter, atomic_output, tensor_bytes

    with gzip.open(ROOT / "tests" / "data" / f"keys_{family}.json.gz", "rt") as f:
        keys = json.load(f)["keys"]
    keys = {
        k: tuple(s)
        for k, (s, _d, opt) in keys.items()
        if not k.startswith("model_ema.") and (not opt or k.endswith("position_ids"))
    }
    g = torch.Generator().manual_seed(seed)
    entries = {k: (torch.int64 if k.endswith("position_ids") else torch.float16, s) for k, s in keys.items()}
    with atomic_output(path, overwrite=True) as (fd, _):
        w = StreamingWriter(fd, path, entries, {"format": "pt"})
        for k, (dt, shape) in entries.items():
            if dt == torch.int64:
                t = torch.arange(shape[-1]).reshape(shape)
            else:
                t = (torch.randn(shape, generator=g) * 0.02).half()
            w.put(k, tensor_bytes(t))
        w.finish({"format": "pt"})


def perf_env() -> Path:
    env = ROOT / "runs" / "perf-env"
    py = env / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ours = [p for p in sys.path if p.endswith("site-packages")][0]
        Path(site, "main_venv.pth").write_text(ours + "\n")  # reuse torch, numpy, scipy, safetensors
    if subprocess.run([str(py), "-c", "import sd_mecha"], capture_output=True).returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "sd-mecha"], check=True)
    return py


def measure(cmd: list[str], out: Path, env: dict | None = None) -> dict:
    """Wall time until ``out`` is on disk, and peak RssAnon / VmHWM of the process that wrote it.

    `mergesearch merge` fsyncs its output before renaming it; the other tools leave dirty pages
    for the kernel to write later. To compare like with like, every output is fsynced after its
    process exits and that flush counts in ``seconds`` (``process_seconds`` is without it).
    """
    peak = {"anon": 0, "hwm": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def poll() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak["anon"] = max(peak["anon"], int(line.split()[1]) * 1024)
                    elif line.startswith("VmHWM:"):
                        peak["hwm"] = max(peak["hwm"], int(line.split()[1]) * 1024)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    process_s = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{err.decode()[-2000:]}")
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {
        "seconds": time.perf_counter() - t0,
        "process_seconds": process_s,
        "peak_anon_gb": peak["anon"] / 1e9,
        "vm_hwm_gb": peak["hwm"] / 1e9,
    }


def run_family(
    family: str, work: Path, repeat: int, threads: int, mecha_py: Path | None, tools: list[str]
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    a, b = work / f"{family}_a.safetensors", work / f"{family}_b.safetensors"
    for p, seed in ((a, 1), (b, 2)):
        if not p.exists():
            t = time.perf_counter()
            make_checkpoint(family, p, seed)
            print(
                f"  wrote {p.name} ({p.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
    # Read both sources once, untimed, so no tool pays for pulling them from disk into the page cache.
    for p in (a, b):
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cli = [sys.executable, "-m", "search.cli", "merge", str(a), str(b), "--alpha", "0.3", "-o"]
    cmds = {
        "mergesearch": lambda out: [*cli, str(out), "--overwrite", "--quiet"],
        "plain-loop": lambda out: [
            sys.executable,
            "-c",
            PLAIN.format(threads=threads),
            str(a),
            str(b),
            str(out),
        ],
    }
    if mecha_py is not None:
        cmds["sd-mecha"] = lambda out: [
            str(mecha_py),
            "-c",
            MECHA.format(threads=threads, workers=os.cpu_count()),
            str(a),
            str(b),
            str(out),
        ]
    cmds = {k: v for k, v in cmds.items() if k in tools}
    results: dict[str, dict] = {}

    def once(name: str, cache: Path) -> dict:
        out = work / f"{family}_out_{name}.safetensors"
        r = measure(cmds[name](out), out, {**env, "MERGESEARCH_CACHE_DIR": str(cache)})
        out.unlink(missing_ok=True)
        print(
            f"  {name:22s} {r['seconds']:7.2f} s on disk ({r['process_seconds']:7.2f} s process)"
            f"  peak anon {r['peak_anon_gb']:.2f} GB",
            flush=True,
        )
        if name not in results or r["seconds"] < results[name]["seconds"]:
            results[name] = r
        return r

    warm_cache = work / "hash-cache-warm"
    for i in range(repeat):
        for name in cmds:
            # a fresh hash cache: the merge hashes both sources (sha256 for the metadata) as a first merge does
            once(name, work / f"hash-cache-cold-{family}-{i}-{time.time_ns()}")
    # merging the same sources again (another alpha, say): their hashes come from the cache
    cmds["mergesearch-warm-cache"] = cmds["mergesearch"]
    once("mergesearch", warm_cache)
    once("mergesearch-warm-cache", warm_cache)
    ours = results["mergesearch"]["seconds"]
    summary = {
        "family": family,
        "file_gb": a.stat().st_size / 1e9,
        "results": results,
        "speedup_vs_plain": results["plain-loop"]["seconds"] / ours,
        "speedup_vs_plain_warm_cache": results["plain-loop"]["seconds"]
        / results["mergesearch-warm-cache"]["seconds"],
    }
    if "sd-mecha" in results:
        summary["speedup_vs_sd_mecha"] = results["sd-mecha"]["seconds"] / ours
        summary["speedup_vs_sd_mecha_warm_cache"] = (
            results["sd-mecha"]["seconds"] / results["mergesearch-warm-cache"]["seconds"]
        )
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", nargs="+", default=["sd1", "sdxl"], choices=["sd1", "sd2", "sdxl"])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "perf")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool; the fastest counts")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for the plain loop and sd-mecha (sd-mecha also gets one worker per core); "
        "1 by default because OpenMP barriers stall badly on a shared, busy host",
    )
    ap.add_argument(
        "--tools",
        nargs="+",
        default=["mergesearch", "plain-loop", "sd-mecha"],
        choices=["mergesearch", "plain-loop", "sd-mecha"],
        help="which merges to time (mergesearch always runs)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = ap.parse_args()
    args.tools = sorted(
        set(args.tools) | {"mergesearch"}, key=["mergesearch", "plain-loop", "sd-mecha"].index
    )
    mecha = perf_env() if "sd-mecha" in args.tools else None
    report = []
    for family in args.family:
        print(f"{family}:", flush=True)
        s = run_family(family, args.workdir, args.repeat, args.threads, mecha, args.tools)
        report.append(s)
        line = f"{family}: mergesearch {s['results']['mergesearch']['seconds']:.1f} s, "
        if "speedup_vs_plain" in s:
            line += f"{s['speedup_vs_plain']:.2f}x the plain loop"
        if "speedup_vs_sd_mecha" in s:
            line += f", {s['speedup_vs_sd_mecha']:.2f}x sd-mecha"
        line += f", peak anon {s['results']['mergesearch']['peak_anon_gb']:.2f} GB"
        line += f"; with source hashes cached {s['results']['mergesearch-warm-cache']['seconds']:.1f} s"
        print(line, flush=True)
        if not args.keep:
            for p in args.workdir.glob(f"{family}_*.safetensors"):
                p.unlink()
    for cache in args.workdir.glob("hash-cache-*"):
        for f in cache.iterdir():
            f.unlink()
        cache.rmdir()
    out = args.workdir / f"merge_speed_{'_'.join(args.family)}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
