"""The run folder: the one place that knows its layout, what it records and when it is finished.

A run is a diffusers pipeline folder (`model_index.json` with `[library, class]` entries, one
sub-folder per component) plus histosynth's extras:

    RUN/
      model_index.json     components; `source_checkpoint` {file, sha256} for converted runs
      histosynth.yaml      the run's resolved config
      condition.json       how the U-Net saw text (encoder, template, budget, context, bins, workspace)
      unet/  unet_ema/     UNet2DConditionModel, raw and EMA weights (EMA preferred for sampling)
      vae/  scheduler/     the first stage and the training noise schedule
      text_encoder/        optional local text-encoder weights (e.g. converted from PathLDM)
      checkpoints/step-K/  resumable training state (train.checkpoints)
      status.json          status record of the run (histosynth.status): unit "train" is done once
                           the exported weights equal the final checkpoint's
      logs/ samples/ manifest.json

Everything sampling needs is in the folder, so a run can be copied anywhere and sampled without the
workspace it came from. Runs written before condition.json existed kept the same record in
`text_encoder.json`; it is still read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import CONFIG_FILE, HistoSynthConfig, load_config, to_yaml
from .console import HistosynthError
from .fileio import read_json, write_json, write_text
from .status import STATUS_FILE, WorkLog

MODEL_INDEX = "model_index.json"
CONDITION_FILE = "condition.json"
LEGACY_CONDITION_FILE = "text_encoder.json"   # runs of histosynth 0.1
MANIFEST_FILE = "manifest.json"
SAMPLE_METADATA = "metadata.jsonl"   # one record per generated image, in samples/<tag>/
PIPELINE_CLASS = "HistoSynthPipeline"
TRAIN_UNIT = "train"
# diffusers loads the `text_encoder` component with this class's from_pretrained, which reads the
# condition record and loads the encoder it names (histosynth.sample.components explains why).
TEXT_ENCODER_COMPONENT = ("histosynth.sample.components", "HistoSynthTextEncoder")
EMA_COMPONENT = "unet_ema"   # the EMA U-Net: a component of the model index and its folder


def pipeline_components(vae_class: str, scheduler_class: str = "DDPMScheduler",
                        ema: bool = False) -> dict[str, tuple[str, str]]:
    """The `[library, class]` entries of a run's model_index.json (train and convert write the same)."""
    components = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", vae_class),
                  "scheduler": ("diffusers", scheduler_class), "text_encoder": TEXT_ENCODER_COMPONENT}
    if ema:
        components[EMA_COMPONENT] = ("diffusers", "UNet2DConditionModel")
    return components


@dataclass
class Condition:
    """How the run's U-Net saw text; sampling rebuilds the same condition from it."""

    encoder: str                              # registry name, hub id or folder of the text encoder
    context_length: int                       # tokens incl. start/end
    long_context: str = "chunked"             # PathLDM's trick above the encoder's positions
    attend_padding: bool = False              # True: the U-Net gets no mask (PathLDM)
    template: str = "{summary}"               # condition text, e.g. "{tumor} tumor; {til} til; {summary}"
    levels: tuple[str, ...] = ("low", "high")  # words of the tumour/TIL bins
    budget: int | None = None                 # summary budget in tokens (None: not from summaries)
    width: int | None = None                  # hidden size of the text states (cross-attention dim)
    descriptor_edges: dict[str, list[float]] | None = None  # bin edges of patch descriptors, when used
    descriptor_levels: tuple[str, ...] | None = None         # words of the descriptor bins
    source_workspace: str | None = None       # the workspace the run was trained on (informative)
    embeddings: str | None = None             # the embedding set it was trained with (informative)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "Condition":
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        known["extra"] = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in names}}
        for key in ("levels", "descriptor_levels"):
            if key in known:
                known[key] = tuple(known[key])
        if "encoder" not in known or "context_length" not in known:
            raise KeyError("encoder and context_length are required")
        return cls(**known)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["levels"] = list(self.levels)
        if self.descriptor_levels is not None:
            out["descriptor_levels"] = list(self.descriptor_levels)
        return out


class RunFolder:
    """Paths and records of one run folder; no model code (models are loaded by the stages)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- layout ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_index_path(self) -> Path:
        return self.path / MODEL_INDEX

    @property
    def condition_path(self) -> Path:
        return self.path / CONDITION_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def unet_dir(self) -> Path:
        return self.path / "unet"

    @property
    def unet_ema_dir(self) -> Path:
        return self.path / EMA_COMPONENT

    @property
    def vae_dir(self) -> Path:
        return self.path / "vae"

    @property
    def scheduler_dir(self) -> Path:
        return self.path / "scheduler"

    @property
    def text_encoder_dir(self) -> Path:
        return self.path / "text_encoder"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def loss_log(self) -> Path:
        return self.logs_dir / "loss.csv"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    def samples_path(self, tag: str) -> Path:
        return self.samples_dir / tag

    @property
    def validation_dir(self) -> Path:
        return self.samples_dir / "validation"

    @property
    def model_card_path(self) -> Path:
        return self.path / "README.md"

    # ---- records --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.exists() and (self.model_index_path.exists() or self.unet_dir.exists())

    def require(self) -> "RunFolder":
        """Fail in one line when this is not a run folder."""
        if not self.path.is_dir():
            raise HistosynthError(f"{self.path}: run folder not found")
        if not self.config_path.exists():
            raise HistosynthError(f"{self.config_path}: not found; is {self.path} a run folder made by "
                                  f"`histosynth train` or `histosynth convert-pathldm`?")
        return self

    def read_config(self) -> HistoSynthConfig:
        import yaml

        self.require()
        return load_config(base=yaml.safe_load(self.config_path.read_text()) or {})

    def write_config(self, config: HistoSynthConfig) -> None:
        write_text(self.config_path, to_yaml(config))

    def read_condition(self) -> Condition:
        path = self.condition_path if self.condition_path.exists() else self.path / LEGACY_CONDITION_FILE
        if not path.exists():
            raise HistosynthError(f"{self.condition_path}: not found; {self.path} records no text condition "
                                  f"(an unfinished run? rerun `histosynth train`)")
        try:
            return Condition.from_dict(read_json(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise HistosynthError(f"{path}: not a valid condition record ({exc})") from None

    def write_condition(self, condition: Condition) -> None:
        write_json(self.condition_path, condition.to_dict())

    def read_model_index(self) -> dict:
        return read_json(self.model_index_path) if self.model_index_path.exists() else {}

    def write_model_index(self, components: dict[str, tuple[str, str]], diffusers_version: str,
                          **extras: Any) -> None:
        """diffusers' model_index.json: `[library, class]` per component folder, plus extras."""
        index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers_version}
        index.update({name: list(entry) for name, entry in components.items()})
        index.update({k: v for k, v in extras.items() if v is not None})
        write_json(self.model_index_path, index)

    def source_checkpoint(self) -> dict | None:
        """{file, sha256, ...} of the checkpoint a converted run came from; None for trained runs."""
        return self.read_model_index().get("source_checkpoint")

    def sampling_unet_dir(self, use_ema: bool = True) -> Path:
        folder = self.unet_ema_dir if use_ema and (self.unet_ema_dir / "config.json").exists() else self.unet_dir
        if not (folder / "config.json").exists():
            raise HistosynthError(f"{folder}: no U-Net here; is {self.path} a finished run?")
        return folder

    # ---- life cycle ------------------------------------------------------------------------------
    def status(self) -> WorkLog:
        return WorkLog(self.status_path)

    def mark_finished(self, inputs: str, step: int, weights: dict[str, str]) -> None:
        """Record that training finished at `step` with exported weights of these hashes."""
        self.status().mark(TRAIN_UNIT, inputs, "done", output={"step": step, "weights": weights})

    def mark_unfinished(self, inputs: str, step: int) -> None:
        self.status().mark(TRAIN_UNIT, inputs, "running", output={"step": step})

    def finished(self, inputs: str | None = None) -> dict | None:
        """The finished record ({step, weights}) when the run is finished (from `inputs`, if given)."""
        unit = self.status().get(TRAIN_UNIT)
        if unit is None or unit.state != "done" or (inputs is not None and unit.inputs != inputs):
            return None
        return unit.output

def weights_hash(folder: Path) -> str:
    """Identity of a model folder's weights (config + safetensors), for 'exported == checkpoint'."""
    from .fileio import hash_input

    return hash_input(folder)
