"""Rebuild the real key sets in this folder (key -> shape, dtype) from sd-mecha's model-config files.

sd-mecha ships one YAML per checkpoint layout listing every key and shape of the single-file
checkpoints A1111, Forge and ComfyUI load. SD1.5 (``sd1-ldm``) and SDXL (``sdxl-sgm``) come
straight from it. SD2.x is not shipped there, so it is derived: the SD1 UNet with linear
``proj_in``/``proj_out`` and a 1024-wide cross-attention context, the same VAE, and the
OpenCLIP ViT-H/14 text tower under ``cond_stage_model.model.`` (the ViT-bigG tower of SDXL
re-sized to width 1024, 24 layers). tests/merge_core/test_real_keysets.py checks the
UNet parameter counts of all three and the SD2 text-encoder shapes against diffusers/open_clip models built from their configs.

    pip download --no-deps sd-mecha -d /tmp/mecha && unzip /tmp/mecha/*.whl -d /tmp/mecha/whl
    python tests/data/make_keysets.py /tmp/mecha/whl/sd_mecha/extensions/builtin/model_configs
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent


def read_config(path: Path) -> dict[str, list]:
    data = yaml.safe_load(path.read_text())
    keys: dict[str, list] = {}
    for component in data["components"].values():
        for key, spec in component.items():
            keys[key] = [list(spec["shape"]), spec["dtype"], bool(spec.get("optional", False))]
    return keys


def derive_sd2(sd1: dict[str, list], sdxl: dict[str, list]) -> dict[str, list]:
    out: dict[str, list] = {}
    for key, (shape, dtype, optional) in sd1.items():
        if key.startswith("cond_stage_model.") or key.startswith("model_ema."):
            continue  # SD2 has an OpenCLIP text tower; released SD2 files are EMA-pruned
        shape = list(shape)
        if re.search(r"\.proj_(in|out)\.weight$", key):
            shape = shape[:2]  # use_linear_in_transformer: 1x1 convs become linear layers
        if re.search(r"\.attn2\.to_[kv]\.weight$", key):
            shape = [shape[0], 1024]
        out[key] = [shape, dtype, optional]
    width, layers = 1024, 24
    prefix = "conditioner.embedders.1.model."
    for key, (shape, dtype, optional) in sdxl.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        m = re.match(r"transformer\.resblocks\.(\d+)\.", rest)
        if m and int(m.group(1)) >= layers:
            continue
        new_shape = [width * (s // 1280) if s % 1280 == 0 and s >= 1280 else s for s in shape]
        out["cond_stage_model.model." + rest] = [new_shape, dtype, optional]
    return out


def write(name: str, keys: dict[str, list], source: str) -> None:
    payload = {"source": source, "keys": dict(sorted(keys.items()))}
    with gzip.open(HERE / f"keys_{name}.json.gz", "wt", compresslevel=9) as f:
        json.dump(payload, f, separators=(",", ":"))


def main(config_dir: str) -> None:
    folder = Path(config_dir)
    sd1 = read_config(folder / "sd1-ldm.yaml")
    sdxl = read_config(folder / "sdxl-sgm.yaml")
    write("sd1", sd1, "sd-mecha 1.1.8 model_configs/sd1-ldm.yaml")
    write("sdxl", sdxl, "sd-mecha 1.1.8 model_configs/sdxl-sgm.yaml")
    write("sd2", derive_sd2(sd1, sdxl), "derived from sd1-ldm + sdxl-sgm (see make_keysets.py)")


if __name__ == "__main__":
    main(sys.argv[1])
