"""What determines a training run (:class:`TrainConfig`, saved as config.yaml next to the run),
its fault-rate schedule, and the command-line option of each field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, model_validator

from ..choices import FaultDraw, TrainMethod
from ..errors import ConfigError
from ..limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_EVAL_CHIPS, MAX_IMAGE_SIDE, MAX_RATES, MAX_SEED, MAX_WARMUP_EPOCHS
from ..nonideality import FaultModel, StuckAt
from ..profiles import FaultList, RetrainingRecipe, TrainingDefaults, read_yaml, recipe_last, validated

#: Config fields a resumed run may change: where it runs and how closely each epoch is checked.
RESUME_MAY_DIFFER = frozenset({"device", "eval_chips"})
#: Config fields a resumed run takes from its checkpoint, whatever the new run's config says,
#: each with the value a checkpoint written before the field existed ran with: what the field
#: records is how the interrupted run drew, and a resumed run must continue that.
RESUME_KEEPS = {"fault_draw": "dense"}


class TrainConfig(RetrainingRecipe):
    """Everything that determines a training run; saved as config.yaml next to the run. The
    retraining recipe's fields are :class:`~ftdeploy.profiles.RetrainingRecipe`'s."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("resnet20", description="Model registry name, tv:NAME or package.module:factory.")
    image_size: int = Field(
        32, ge=8, le=MAX_IMAGE_SIDE,
        description="Side in pixels every image is resized (shorter side) and centre-cropped to: the model's input, "
                    "recorded in its checkpoint and export. A retraining keeps its checkpoint's.",
    )  # fmt: skip
    weights: str | None = Field(
        None,
        description="Weights file a pretraining starts from instead of random weights (a torchvision .pth state dict; "
                    "the classifier starts afresh for another class count). None: random initialisation.",
    )  # fmt: skip
    method: TrainMethod = Field(
        "progressive", description="pretrain: no faults; one-shot: fixed rate; progressive: ascending rates."
    )
    target_rate: float = Field(0.05, ge=0, le=1, description="P_sa^T: the (last) training stuck-at rate per cell.")
    progressive_rates: list[float] = Field(
        default_factory=lambda: [0.01, 0.02, 0.05], max_length=MAX_RATES, description="Ascending rates of progressive blocks."
    )
    faults: FaultList = Field(
        default_factory=lambda: [StuckAt.from_total(0.0)],
        description="Non-idealities injected while retraining (the profile's faults); the stuck-at entry gives the "
                    "stuck-off : stuck-on ratio, its rate is the schedule's.",
    )  # fmt: skip
    epochs: int = Field(
        20, ge=1, le=MAX_EPOCHS,
        description="Epochs of this run (all progressive blocks together), or of each block with progressive_blocks each.",
    )  # fmt: skip
    lr: float = Field(0.02, gt=0, description="Peak learning rate (linear warm-up, then cosine to 0).")
    warmup_epochs: float = Field(1.0, ge=0, le=MAX_WARMUP_EPOCHS, description="Epochs of linear learning-rate warm-up.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH_SIZE, description="Images per step.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD (Nesterov) momentum.")
    grad_clip: float | None = Field(5.0, gt=0, description="Gradient-norm clipping of retraining (None: off).")
    distill_temperature: float = Field(4.0, gt=0, description="Softmax temperature of distillation (distill).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of initialisation, data order and fault draws.")
    fault_draw: FaultDraw = Field(
        "sparse",
        description="How a retraining draws each step's stuck-at chip. sparse: only the stuck cells, in work "
                    "proportional to the rate; dense: a uniform draw per cell, as every run did before this field "
                    "existed. Both draw the same distribution of chips, but the same seed gives other chips, so a run "
                    "resumed from a checkpoint that does not record the field goes on dense. With kinds other than "
                    "stuck-at in the faults (variation, drift, read noise), which change every cell, the draw is "
                    "dense either way.",
    )  # fmt: skip
    eval_chips: int = Field(3, ge=0, le=MAX_EVAL_CHIPS, description="Chips at the target rate for the per-epoch fault check.")
    device: str = Field("auto", description="auto (CUDA if present), cpu or cuda[:N].")

    @model_validator(mode="before")
    @classmethod
    def _faults_from_split(cls, data):
        """Configs written before ``faults`` existed record only the stuck-at ``split``."""
        if isinstance(data, dict) and "split" in data and "faults" not in data:
            data = dict(data)
            data["faults"] = [{"kind": "stuck-at", "p_sa": 0.0, "split": list(data.pop("split"))}]
        return data

    @property
    def fault_model(self) -> FaultModel:
        """The training population at stuck-at rate 0 (:meth:`FaultModel.at_rate` sets the step's rate)."""
        return FaultModel(self.faults).at_rate(0.0)

    @property
    def blocks_each(self) -> bool:
        return self.method == "progressive" and self.progressive_blocks == "each"

    @property
    def run_epochs(self) -> int:
        """Epochs the whole run takes."""
        return self.epochs * len(self.progressive_rates) if self.blocks_each else self.epochs

    def rate_at(self, epoch: int) -> float:
        """Training stuck-at rate of an epoch (0-based)."""
        if self.method == "pretrain":
            return 0.0
        if self.method == "one-shot":
            return self.target_rate
        if self.blocks_each:
            return self.progressive_rates[epoch // self.epochs]
        # Equal blocks, any remainder going to the later (higher) rates, and the last epoch
        # always at the target, even when there are fewer epochs than rates.
        n = len(self.progressive_rates)
        block = -(-(epoch + 1) * n // self.epochs) - 1  # ceil((epoch + 1) · n / epochs) − 1
        return self.progressive_rates[max(0, min(block, n - 1))]

    def step_rate(self, epoch_rate: float, step: int, rate_warmup_steps: int) -> float:
        """Training stuck-at rate of a step (0-based, counted over the whole run): 0 on the
        clean steps, else the epoch's rate, ramped in over the first ``rate_warmup_steps``."""
        if math.floor((step + 1) * self.clean_steps) > math.floor(step * self.clean_steps):
            return 0.0
        if step < rate_warmup_steps:
            return epoch_rate * (step + 1) / rate_warmup_steps
        return epoch_rate

    def schedule(self) -> list[float]:
        return [self.rate_at(e) for e in range(self.run_epochs)]


#: Ladder from which progressive training picks its ascending rates.
PROGRESSIVE_LADDER = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def default_progressive_rates(target_rate: float, steps: int = 3) -> list[float]:
    """The last ``steps`` ladder rates below ``target_rate``, then the target itself:
    0.05 -> [0.01, 0.02, 0.05], 0.1 -> [0.02, 0.05, 0.1]."""
    below = [r for r in PROGRESSIVE_LADDER if r < target_rate]
    return below[-(steps - 1):] + [target_rate] if steps > 1 else [target_rate]


def progressive_rates_for(target_rate: float, defaults: TrainingDefaults) -> list[float]:
    """The progressive list of a retraining to ``target_rate``: the profile's own list where it
    ends there (a deployment may name its ladder), else :func:`default_progressive_rates`.
    ``train``, ``sweep`` and ``demo`` all use this one rule."""
    own = list(defaults.progressive_rates)
    return own if own and own[-1] == target_rate else default_progressive_rates(target_rate)


#: The ``ftdeploy train`` option of each TrainConfig field it sets (a flag pair for a bool), in
#: one place: a bad value's message names the option the user typed. The other fields follow the
#: profile (faults, weight decay), a ``--config`` file or TrainConfig's defaults.
TRAIN_OPTIONS = {
    "model": "--model", "image_size": "--image-size", "weights": "--weights", "method": "--method", "target_rate": "--target-rate", "progressive_rates": "--rates",
    "epochs": "--epochs", "progressive_blocks": "--progressive-blocks", "lr": "--lr", "batch_size": "--batch-size",
    "bn": "--bn", "stuck_grad": "--stuck-grad", "scale_grad": "--scale-grad", "unbias_faults": "--unbias-faults/--raw-faults", "clean_steps": "--clean-steps",
    "weight_clip": "--weight-clip",
    "rate_warmup_epochs": "--rate-warmup", "distill": "--distill", "eval_chips": "--eval-chips", "seed": "--train-seed",
    "device": "--device",
}  # fmt: skip


def option_name(field: str) -> str:
    """The command-line option a user sets ``field`` with (its on-flag for a bool)."""
    return TRAIN_OPTIONS.get(field, "--" + field.replace("_", "-")).split("/")[0]


def make_train_config(**fields) -> TrainConfig:
    """TrainConfig from command-line values; a bad value becomes one ConfigError line per field,
    naming its option."""
    from pydantic import ValidationError

    try:
        return TrainConfig(**fields)
    except ValidationError as err:
        lines = [f"{option_name(str(e['loc'][0]))}: {e['msg']} (found {e.get('input')!r})" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None


def config_yaml(config: TrainConfig) -> str:
    """``config`` as the YAML of a run's config.yaml (the model and method first, the recipe last)."""
    return yaml.safe_dump(recipe_last(config.model_dump(mode="json")), sort_keys=False)


@dataclass(frozen=True)
class ConfigFile:
    """The fields a TrainConfig YAML file sets (``train --config``), validated; the fields it
    leaves out come from the profile and the defaults."""

    path: Path | None
    fields: dict[str, Any]


def read_config_file(path: Path) -> ConfigFile:
    """A TrainConfig YAML (a run's config.yaml, or the one a sweep starts each training with),
    read with yaml.safe_load and validated; ConfigError naming the file and each bad field."""
    config = validated(TrainConfig, read_yaml(path), path)
    return ConfigFile(path, {field: getattr(config, field) for field in config.model_fields_set})
