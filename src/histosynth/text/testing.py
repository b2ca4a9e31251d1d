"""Randomly initialised text encoders saved like real ones, for tests and smoke runs only.

They load through exactly the code path of a downloaded model (`load_encoder(<folder>)`), with
CLIP's real BPE vocabulary (open_clip ships it), but their weights are random: never report
results from them as a trained encoder's.
"""

from __future__ import annotations

import json
from pathlib import Path

# open_clip spells CLIP's special tokens differently from Hugging Face's vocabulary files.
HF_SPECIAL_TOKENS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def save_clip_tokenizer(folder: str | Path, max_length: int = 77) -> None:
    """Write a Hugging Face CLIPTokenizer built from open_clip's copy of CLIP's BPE files."""
    import tempfile

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()
    vocab = {HF_SPECIAL_TOKENS.get(token, token): i for token, i in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length)
        tokenizer.save_pretrained(folder)


def save_random_clip(folder: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 4,
                     positions: int = 77, seed: int = 0) -> Path:
    """A random CLIPTextModel (CLIP's 49408-token vocabulary) + CLIPTokenizer, saved with save_pretrained."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=positions,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    folder = Path(folder)
    CLIPTextModel(config).save_pretrained(folder)
    save_clip_tokenizer(folder, max_length=positions)
    return folder


def save_random_open_clip(folder: str | Path, *, context_length: int = 128, width: int = 32, layers: int = 2,
                          heads: int = 4, seed: int = 0) -> Path:
    """A random open_clip CLIP (tiny image tower) in open_clip's local-dir format, e.g. CONCH-style context 128."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": heads, "layers": layers},
    }
    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}, indent=2))
    state = {k: v.contiguous() for k, v in CLIP(**model_cfg).state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")
    return folder
