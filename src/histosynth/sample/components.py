"""The run's text side as one diffusers component: encoder, tokenizer and the condition record.

diffusers builds a pipeline from `model_index.json`: one `[library, class]` per component folder,
each loaded with the class's `from_pretrained(folder)`. histosynth's text encoders are not one
transformers class (MiniLM, CLIP, PLIP, open_clip towers, PathLDM's chunked long context) and the
way a run turned text into a condition (template, levels, context length, whether the U-Net
attends to padding) lives in the run's condition record. So the `text_encoder` entry names this
class, and its `from_pretrained` reads the condition record of the run folder it is in (the
`text_encoder/` folder's parent, or the run itself when the encoder is named rather than stored)
and loads the encoder it names: the local `text_encoder/` weights when the run has them.

It also carries the run's sampling defaults (`sample` section of the run's config), because
diffusers hands the pipeline its components, never the folder they came from.

The model index lists it as ["histosynth.sample.components", "HistoSynthTextEncoder"]; diffusers
resolves such a library only once it has been imported, which the pipeline module does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401 - ModelMixin: diffusers' loadable base

from histosynth.config import HistoSynthConfig
from histosynth.runfolder import Condition, RunFolder


WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


class HistoSynthTextEncoder(ModelMixin):
    """A frozen histosynth TextEncoder (`.encoder`) with the run's condition record and config."""

    def __init__(self, encoder, condition: Condition, run_config: HistoSynthConfig, source: Path | None = None):
        super().__init__()
        self.encoder = encoder                     # histosynth.text.encoders.TextEncoder
        self.model = encoder.model                 # registered: .to(), offload hooks and dtype see it
        self.condition = condition
        self.run_config = run_config
        self.source = source                       # folder the weights came from, or None (named)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "HistoSynthTextEncoder":
        """`RUN/text_encoder` (local weights) or `RUN` itself (named encoder); diffusers' kwargs ignored."""
        folder = Path(folder)
        run = RunFolder(folder.parent)
        if run.text_encoder_dir != folder:  # diffusers passes the run itself when the folder is absent
            run = RunFolder(folder)
        return cls.from_run(run, dtype=kwargs.get("torch_dtype") or kwargs.get("dtype"))

    @classmethod
    def from_run(cls, run: RunFolder, dtype: torch.dtype | None = None) -> "HistoSynthTextEncoder":
        from histosynth.text.encoders import load_encoder

        condition = run.read_condition()
        local = run.text_encoder_dir
        stored = (local / "config.json").exists()
        encoder = load_encoder(str(local) if stored else condition.encoder, device="cpu", dtype=dtype)
        named = Path(condition.encoder)
        source = local if stored else (named.resolve() if named.is_dir() else None)
        return cls(encoder, condition, run.read_config(), source)

    @property
    def stores_weights(self) -> bool:
        """Whether the run keeps the encoder's weights (a local transformers folder) rather than its name."""
        return self.source is not None and hasattr(self.model, "save_pretrained")

    @torch.no_grad()
    def forward(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [B, L, D] and mask [B, L] (None when the run attends to padding).

        A forward, so that diffusers' CPU-offload hook moves the encoder to the device first."""
        c = self.condition
        enc = self.encoder.encode(list(prompts), context_length=c.context_length, long_context=c.long_context)
        mask = None if c.attend_padding else enc.mask.to(device)
        return enc.hidden.to(device), mask

    def save_pretrained(self, folder: str | Path, **kwargs) -> None:
        """Local weights and tokenizer (CLIP-family encoders); a named encoder is recorded by name."""
        if not self.stores_weights:
            return
        import shutil

        self.model.save_pretrained(folder, safe_serialization=True)
        if self.source is not None:  # the tokenizer files beside the weights travel with them
            for file in self.source.iterdir():
                if file.is_file() and file.name not in WEIGHT_FILES and not (Path(folder) / file.name).exists():
                    shutil.copy2(file, Path(folder) / file.name)
