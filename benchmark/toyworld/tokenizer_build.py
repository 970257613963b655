"""Build the toy world's CLIP tokenizer files (vocab.json, merges.txt) from its vocabulary.

The full CLIP BPE vocabulary has 49,408 tokens, which would make a tiny text encoder's
embedding bigger than the rest of the model. This learns a byte-level BPE in CLIP's format
(same byte alphabet, `</w>` end-of-word suffix, same special tokens) over the world's words
only, so every tag word is one token and any other word still tokenizes byte by byte.

Run `python -m benchmark.toyworld.tokenizer_build [DIR]` to regenerate the shipped files.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from benchmark.tokenizer import bytes_to_unicode
from benchmark.toyworld.world import all_tags

# Words a prompt template or a zero-shot tagger may wrap tags in.
EXTRA_WORDS = ("a", "an", "the", "of", "photo", "picture", "image", "drawing", "with", "on", "and",
               "shape", "colour", "color", "background", ",")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 32


def words() -> list[str]:
    ws = {w for tag in all_tags() for w in tag.split()} | set(EXTRA_WORDS)
    return sorted(ws)


def learn_merges(word_list: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE until every word is one symbol; ties broken alphabetically for determinism."""
    segs = {w: [*w[:-1], w[-1] + "</w>"] for w in word_list}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for s in segs.values():
            pairs.update(zip(s, s[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out


def build_files() -> dict[str, str]:
    """File name -> text of the tokenizer folder (diffusers' `tokenizer/` layout)."""
    alphabet = list(bytes_to_unicode().values())
    merges = learn_merges(words())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    for a, b in merges:
        if a + b not in vocab_list:
            vocab_list.append(a + b)
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH, "do_lower_case": True,
              **special}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False, indent=0) + "\n",
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
    }


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in build_files().items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)


if __name__ == "__main__":
    from benchmark.toyworld.family import CONFIG_DIR

    write(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG_DIR / "tokenizer")
