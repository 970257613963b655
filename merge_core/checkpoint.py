"""Opening single-file checkpoints lazily: safetensors by memory map, .ckpt/.pt weights-only."""

from __future__ import annotations

import mmap
import os
import pickle
import warnings
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import torch

from .errors import CheckpointError, CheckpointWarning
from .family import Family, detect_family
from .hashing import file_sha256, short_hash
from .keys import is_ema, normalise_key
from .safetensors_file import TensorInfo, read_header, tensor_bytes

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# modelspec.prediction_type spellings seen in the wild -> our two names.
PREDICTION_SPELLINGS = {"v": "v", "v_prediction": "v", "v-prediction": "v", "epsilon": "epsilon", "eps": "epsilon"}


class Checkpoint:
    """A checkpoint file whose tensors are read only when asked for.

    ``keys()`` are normalised (``state_dict`` wrapper removed, old SD1 text-encoder keys
    given ``text_model.``) and exclude the EMA copies, which ``ema_keys()`` lists.
    Tensors of a safetensors file are zero-copy views of a private memory map: reading
    them costs page cache, not process memory.
    """

    def __init__(
        self,
        path: Path,
        raw_keys: dict[str, str],
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, torch.dtype],
        metadata: dict[str, str],
        reader,
        *,
        format: str,
        byte_ranges: dict[str, TensorInfo] | None = None,
        mapped: mmap.mmap | None = None,
    ):
        self.path = path
        self._raw = raw_keys  # normalised -> key in the file
        self._shapes = shapes
        self._dtypes = dtypes
        self.metadata = metadata
        self._reader = reader
        self.format = format  # "safetensors" | "pickle"
        self.byte_ranges = byte_ranges  # safetensors only: where each tensor's bytes lie in the file
        self._mapped = mapped

    # -- keys -----------------------------------------------------------------
    def keys(self) -> list[str]:
        return [k for k in self._raw if not is_ema(k)]

    def ema_keys(self) -> list[str]:
        return [k for k in self._raw if is_ema(k)]

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[self._check(key)]

    def dtype(self, key: str) -> torch.dtype:
        return self._dtypes[self._check(key)]

    def numel(self, key: str) -> int:
        n = 1
        for s in self.shape(key):
            n *= s
        return n

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor stored under ``key`` in its stored dtype (a read-only-by-convention view)."""
        return self._reader(self._raw[self._check(key)])

    def raw_bytes(self, key: str) -> memoryview:
        """The stored bytes of ``key`` (a view of the memory map for safetensors: no copy)."""
        if self._mapped is not None and self.byte_ranges is not None:
            info = self.byte_ranges[self._check(key)]
            return memoryview(self._mapped)[info.start : info.end]
        return tensor_bytes(self.tensor(key))

    def file_order(self, keys: list[str]) -> list[str]:
        """``keys`` sorted by where their bytes lie in the file, so reading them streams forwards."""
        if self.byte_ranges is None:
            return list(keys)
        return sorted(keys, key=lambda k: self.byte_ranges[k].start)

    def _check(self, key: str) -> str:
        if key not in self._raw:
            raise CheckpointError(f"{self.path}: has no key {key!r}; is it a checkpoint of the same family?")
        return key

    # -- identity -------------------------------------------------------------
    @cached_property
    def family(self) -> Family:
        fam = detect_family(self._raw, lambda k: self._shapes[k])
        if fam is None:
            sample = ", ".join(list(self._raw)[:3])
            keys = list(self._raw)
            if keys and all(k.startswith(("first_stage_model.", "encoder.", "decoder.", "quant_conv.",
                                          "post_quant_conv.")) for k in keys):
                raise CheckpointError(
                    f"{self.path}: holds only a VAE (first keys: {sample}), which has no family of its own; "
                    "give it to `merge --vae` to bake it into a merge, and merge full checkpoints"
                )
            if any(k.startswith(("lora_unet_", "lora_te", "lora_te1_", "lora_te2_")) for k in keys):
                raise CheckpointError(
                    f"{self.path}: is a LoRA (first keys: {sample}), not a checkpoint; bake it into one with "
                    "`mergesearch lora apply`"
                )
            raise CheckpointError(
                f"{self.path}: not an SD1, SD2, SDXL or SDXL-refiner single-file checkpoint (first keys: {sample}); "
                "convert diffusers folders or LoRA files to a full checkpoint first"
            )
        return fam

    @cached_property
    def variant(self) -> str:
        """"standard", "inpainting" (9-channel input conv) or "instruct-pix2pix" (8-channel), from the layout's data."""
        from .layout import layout_for  # layout imports family only; avoid a cycle at import time

        layout = layout_for(self.family)
        conv = layout.input_conv
        return layout.variant_of(self._shapes[conv] if conv in self._raw else None)

    @property
    def prediction(self) -> str | None:
        """Prediction type "v" or "epsilon" when the file says so, else ``None`` (see ``prediction_source``)."""
        return self.prediction_info[0]

    @property
    def prediction_source(self) -> str | None:
        """Where ``prediction`` comes from: "keys" (ComfyUI's ``v_pred`` marker), "metadata" or ``None``."""
        return self.prediction_info[1]

    @cached_property
    def prediction_info(self) -> tuple[str | None, str | None]:
        if "v_pred" in self._raw:
            return "v", "keys"
        kind = self.metadata.get("modelspec.prediction_type", "").strip().lower()
        pred = PREDICTION_SPELLINGS.get(kind)
        return (pred, "metadata") if pred else (None, None)

    @cached_property
    def sha256(self) -> str:
        return file_sha256(self.path)

    @property
    def short_hash(self) -> str:
        return short_hash(self.sha256)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self._raw)} keys)"


def _sniff(path: Path) -> str:
    """"safetensors", "pickle" or "unknown" from the first bytes (a header length, then "{"; or zip/pickle magic)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a .safetensors (memory-mapped) or .ckpt/.pt (weights-only unpickling) checkpoint, or a
    diffusers pipeline folder (read under single-file keys, merge_core.diffusers_folder).

    This is the one place that decides how a model path is read. The format is taken from the
    file's first bytes; a suffix that says otherwise gives a ``CheckpointWarning`` (the file still
    opens). Other folders, missing files and files of no known format raise ``CheckpointError``
    naming the path and the fix.
    """
    p = Path(path)
    if p.is_dir():
        from .diffusers_folder import is_diffusers_folder, open_diffusers_folder

        if is_diffusers_folder(p):
            return open_diffusers_folder(p)
        raise CheckpointError(_folder_message(p))
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file; check the path")
    suffix = p.suffix.lower()
    named = "safetensors" if suffix in SAFETENSORS_SUFFIXES else "pickle" if suffix in PICKLE_SUFFIXES else None
    sniffed = _sniff(p)
    kind = sniffed if sniffed != "unknown" else named
    if named is not None and sniffed != "unknown" and sniffed != named:
        right = ".safetensors" if sniffed == "safetensors" else ".ckpt"
        warnings.warn(
            f"{p}: is a {sniffed} file although its name ends in {p.suffix}; read as {sniffed} "
            f"(rename it to {p.stem}{right})",
            CheckpointWarning,
            stacklevel=2,
        )
    if kind == "safetensors":
        return _open_safetensors(p)
    if kind == "pickle":
        return _open_pickle(p)
    raise CheckpointError(f"{p}: not a checkpoint (expected .safetensors, .ckpt or .pt); check the path")


def _folder_message(p: Path) -> str:
    from .diffusers_folder import is_vae_folder

    if is_vae_folder(p):
        return f"{p}: is a diffusers VAE folder, not a model; bake it into a merge with --vae"
    if (p / "unet").is_dir():
        return (
            f"{p}: looks like a diffusers folder but has no model_index.json; copy the whole folder "
            "(or re-save it with save_pretrained)"
        )
    return f"{p}: is a folder, not a checkpoint file; give the .safetensors or .ckpt file inside it"


def _normalised(path: Path, raw_keys) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in raw_keys:
        norm = normalise_key(raw)
        if norm in out:
            raise CheckpointError(
                f"{path}: keys {out[norm]!r} and {raw!r} are the same weight; re-save the file"
            )
        out[norm] = raw
    return out


def _open_safetensors(path: Path) -> Checkpoint:
    infos, metadata = read_header(path)
    size = path.stat().st_size
    if infos and size:
        with open(path, "rb") as f:
            # ACCESS_COPY: a private mapping, so tensors are writable views and the file is never changed.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    else:
        mm = None

    def read(raw: str) -> torch.Tensor:
        info: TensorInfo = infos[raw]
        n = info.nbytes // info.dtype.itemsize
        if n == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        return torch.frombuffer(mm, dtype=info.dtype, count=n, offset=info.start).view(info.shape)

    raw_keys = _normalised(path, infos)
    return Checkpoint(
        path,
        raw_keys,
        {k: infos[r].shape for k, r in raw_keys.items()},
        {k: infos[r].dtype for k, r in raw_keys.items()},
        metadata,
        read,
        format="safetensors",
        byte_ranges={k: infos[r] for k, r in raw_keys.items()},
        mapped=mm,
    )


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    # Lightning/ldm checkpoints nest the weights under "state_dict" next to counters.
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a state dict; save the model's state_dict()"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors; is it a checkpoint?")
    return tensors


def _torch_load(path: Path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pickle protocol.*")
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:  # torch.load would dispatch on the (wrong) suffix
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format: no mmap


def _open_pickle(path: Path) -> Checkpoint:
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "GLOBAL" in detail or "global" in detail:
            raise CheckpointError(
                f"{path}: refused: this pickle needs more than tensors to load and could run code "
                f"({detail}); get a .safetensors version, or convert it only if you trust its source"
            ) from None
        raise CheckpointError(f"{path}: not a checkpoint or truncated ({detail}); re-download it") from None
    except Exception as exc:  # zip, EOF and unpickler errors all mean the same thing to the user
        raise CheckpointError(
            f"{path}: not a checkpoint or truncated ({_first_line(exc)}); re-download it"
        ) from None
    tensors = _unwrap(obj, path)
    raw_keys = _normalised(path, tensors)
    return Checkpoint(
        path,
        raw_keys,
        {k: tuple(tensors[r].shape) for k, r in raw_keys.items()},
        {k: tensors[r].dtype for k, r in raw_keys.items()},
        {},
        lambda raw: tensors[raw],
        format="pickle",
    )


def _unpickler_detail(exc: BaseException) -> str:
    """The useful line of torch's weights-only refusal ("... unsupported GLOBAL posix.system ...")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for marker in ("GLOBAL", "global", "Unsupported"):
        for ln in lines:
            if marker in ln and not ln.startswith("Weights only load failed"):
                return ln[:200]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_state_dict(path: str | os.PathLike, *, include_ema: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint under normalised keys, in their stored dtypes."""
    ckpt = open_checkpoint(path)
    keys = ckpt.keys() + (ckpt.ema_keys() if include_ema else [])
    return {k: ckpt.tensor(k) for k in keys}
