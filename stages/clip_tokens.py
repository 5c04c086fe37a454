"""Where the class word sits in SDXL's CLIP tokenization (where PhotoMaker puts its trigger word).

SDXL's two tokenizers (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14) share one BPE vocabulary and merge
list and differ only in their padding token, so a word's token positions are the same in both.
The vocabulary ships inside the `open_clip_torch` package (`bpe_simple_vocab_16e6.txt.gz`); it is
found without importing open_clip (which imports torch) and turned into a transformers
`CLIPTokenizer` exactly as open_clip's SimpleTokenizer builds its own.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import ModelNotFound

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges CLIP uses, after the file's header line
MAX_LENGTH = 77  # CLIP's context, start and end tokens included


def bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.origin).parent / BPE_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ModelNotFound(f"CLIP BPE vocabulary {BPE_FILE!r}", [str(path or "open_clip (not installed)")],
                            "pip install open_clip_torch")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (the vocabulary's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer  # here, not at import: the CLI stays fast

    with gzip.open(bpe_path()) as stream:
        lines = stream.read().decode("utf-8").split("\n")[1 : MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def token_positions(caption: str, span: tuple[int, int]) -> list[int]:
    """Indices, in the caption's CLIP `input_ids` (start token at 0), of the tokens inside `span`."""
    encoded = clip_tokenizer()(caption, return_offsets_mapping=True)
    start, end = span
    return [k for k, (s, e) in enumerate(encoded["offset_mapping"]) if e > s and s < end and e > start]
