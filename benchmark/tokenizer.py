"""The CLIP BPE tokenizer built offline from open_clip's shipped merges file.

Hugging Face's CLIP `vocab.json`/`merges.txt` were produced from the same
`bpe_simple_vocab_16e6.txt.gz` that open_clip ships, so we rebuild them in memory instead of
downloading: 256 byte symbols, the same with `</w>`, one token per merge, then the two
special tokens (49408 entries). A config folder may still ship its own vocab files; those win.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

_N_MERGES = 49152 - 256 - 2


def _bpe_path() -> Path:
    # find_spec, not import: importing open_clip costs seconds and only its data file is needed here.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is needed for the CLIP tokenizer files: pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """(vocab, merges) exactly as in openai/clip-vit-large-patch14's tokenizer files."""
    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    merges = tuple(tuple(line.split()) for line in lines)
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


@lru_cache(maxsize=8)
def _tokenizer(folder: str) -> CLIPTokenizer:
    path = Path(folder)
    if ((path / "vocab.json").exists() and (path / "merges.txt").exists()) or (path / "tokenizer.json").exists():
        return CLIPTokenizer.from_pretrained(path)  # own files (save_pretrained writes tokenizer.json)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    vocab, merges = clip_bpe()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token=cfg.get("pad_token", "<|endoftext|>"),
        model_max_length=int(cfg.get("model_max_length", 77)),
    )


def load_clip_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """A config folder's `tokenizer/` (or `tokenizer_2/`): its own files, else the rebuilt CLIP BPE."""
    return _tokenizer(str(Path(folder).resolve()))
