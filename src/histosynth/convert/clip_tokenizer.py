"""OpenAI CLIP's tokenizer as a transformers `CLIPTokenizer`, built offline from open_clip's BPE file.

CLIP, PLIP and QuiltNet share OpenAI's byte-level BPE (49408 ids). open_clip ships its merge list;
the vocabulary is derived from it the way both open_clip's `SimpleTokenizer` and the released
`vocab.json` were: the 256 byte symbols, the same with the end-of-word mark `</w>`, one entry per
merge, then the start and end tokens (ids 49406 and 49407).
"""

from __future__ import annotations

import gzip
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # merges OpenAI kept: vocab 49408 = 2 * 256 bytes + merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(bpe_path or default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]  # line 0 is a version header
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(vocab)}, merges


def clip_tokenizer(model_max_length: int = 77):
    """A transformers CLIPTokenizer equal to openai/clip-vit-base-patch32's (pads with the end token)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, unk_token=EOS,
                         pad_token=EOS, model_max_length=model_max_length)
