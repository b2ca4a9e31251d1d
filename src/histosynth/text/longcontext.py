"""Text longer than the encoder's position table: PathLDM's chunked scheme, or interpolated positions.

CLIP-family text towers have 77 learned positions. Two ways to read a 154-token condition text:

* **chunked** (PathLDM, the default): pad the ids to a multiple of 77, add position embeddings
  0-76 to every 77-token chunk, concatenate, and run the transformer once over the whole sequence
  with a single causal mask (154 tokens -> 154 x D after the final layer norm). Each token keeps a
  position the model was trained with, so the first 77 tokens give exactly what plain CLIP gives;
  tokens of the second chunk reuse positions 0-76 while attending back to the first chunk, which
  the model never saw in training (the U-Net learns to live with it).
  Equivalent to a CLIPTextModel with a 154-row position table made of the 77-row table twice.
* **interpolate**: stretch the 77-row table linearly to L rows, so positions stay monotonic and
  distinct, but every token, also in short texts, gets a position embedding the model never saw
  (a blend of two trained ones): the first 77 tokens no longer match plain CLIP.

Both change only the input embeddings; the transformer, the causal mask and the final layer norm
are the encoder's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LONG_CONTEXT_MODES = ("chunked", "interpolate")


def chunked_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """[P, D] position table -> [length, D]: positions 0..P-1 repeated for every P-token chunk."""
    n_pos = table.shape[0]
    index = torch.arange(length, device=table.device) % n_pos
    return table[index]


def interpolated_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """[P, D] position table -> [length, D], linearly resampled (end points kept)."""
    if length == table.shape[0]:
        return table
    stretched = F.interpolate(table.T[None].float(), size=length, mode="linear", align_corners=True)
    return stretched[0].T.to(table.dtype)


def long_positions(table: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """Position embeddings for `length` tokens; the table itself when it is long enough."""
    if length <= table.shape[0]:
        return table[:length]
    if mode == "chunked":
        return chunked_positions(table, length)
    if mode == "interpolate":
        return interpolated_positions(table, length)
    raise ValueError(f"long_context must be one of {LONG_CONTEXT_MODES}, got {mode!r}")


def clip_hidden_states(model, ids: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Last hidden states [B, L, D] of a Hugging Face CLIPTextModel for ids of any length L.

    Mirrors CLIPTextModel.forward (transformers 5.x: embeddings -> causal mask -> encoder ->
    final_layer_norm) with the position embeddings of `long_positions`. The padding mask is
    passed like PathLDM did: real tokens are unaffected (they never see later padding through the
    causal mask), padding tokens attend only to real ones.
    """
    from transformers.masking_utils import create_causal_mask

    table = model.embeddings.position_embedding.weight
    if ids.shape[1] <= table.shape[0]:
        return model(input_ids=ids, attention_mask=mask).last_hidden_state
    embeds = model.embeddings.token_embedding(ids) + long_positions(table, ids.shape[1], mode)[None]
    attn = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=mask, cache=None)
    hidden = model.encoder(inputs_embeds=embeds, attention_mask=attn, is_causal=True).last_hidden_state
    return model.final_layer_norm(hidden)


def open_clip_hidden_states(tower, ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Last hidden states [B, L, D] of an open_clip text tower (pre-projection), any length L.

    open_clip's causal towers attend to padding like they did in training, so only the causal
    mask is applied (real tokens are the same either way); bidirectional towers get none.
    """
    length = ids.shape[1]
    cast = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(ids).to(cast)
    x = x + long_positions(tower.positional_embedding, length, mode).to(cast)[None]
    causal = None
    if tower.causal:
        causal = torch.full((length, length), float("-inf"), device=ids.device, dtype=x.dtype).triu_(1)
    x = tower.transformer(x, attn_mask=causal)
    return tower.ln_final(x)
