"""Targets (chip families) and profiles (deployments): YAML files validated by pydantic.

A *target* describes the silicon: conductance range, bits per cell, weight quantisation, how a
weight is spread over cells (the mapping) and the crossbar tile size. A *profile* describes one
deployment of one target: the stuck-at rates expected on the shipped chips, the rates and chip
count of sign-off, the acceptance limits a production line enforces, and training defaults.

Built-in files live in the repository's top-level ``targets/`` and ``profiles/`` folders (an
installed wheel carries them as package data); a name (``chen2015``) resolves there, anything
with a slash or a ``.yaml`` suffix is a path.

A profile may ``extends:`` another (a name or a path relative to it): a deployment on another
chip family, or with another recipe, then writes only what differs, and the fault population
and sign-off it shares cannot drift from its base's.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .choices import BatchNormMode, ProgressiveBlocks, ScaleGrad, StuckGrad
from .errors import ConfigError
from .limits import (MAX_BATCH_SIZE, MAX_CHIPS, MAX_EPOCHS, MAX_EXTENDS, MAX_IMAGES, MAX_RATES, MAX_SEED, MAX_TILE_SIDE,
                     MAX_WARMUP_EPOCHS, MAX_YAML_DEPTH, MAX_YAML_NODES, shown)
from .mapping import MAPPINGS, ScaleGranularity
from .nonideality import CHEN2015_SPLIT, NONIDEALITIES, FaultModel, FaultSpec, Rate

REPO_ROOT = Path(__file__).resolve().parent.parent


def _builtin_dir(kind: str) -> Path:
    """The folder of built-in ``targets`` or ``profiles``. The repository's top-level folders are
    their one copy: a wheel carries them as package data, ftdeploy/builtin/KIND (package-dir in
    pyproject.toml); a source checkout, or an editable install of one, has no such folder and reads
    them where they are. Located, not imported: setuptools' editable finder cannot import a
    folder mapped from outside the package that has no ``__init__.py``."""
    import importlib.resources

    installed = Path(str(importlib.resources.files(__package__) / "builtin" / kind))
    return installed if installed.is_dir() else REPO_ROOT / kind


TARGETS_DIR = _builtin_dir("targets")
PROFILES_DIR = _builtin_dir("profiles")


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt limit must never be silently ignored."""

    # NaN passes no bound (every comparison with it is false) and inf passes a lower one: neither
    # is ever a meaningful rate, count or conductance.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BatchNormPlacement(str, Enum):
    """Where a chip applies the BatchNorm that follows a conv layer (fixed statistics either way)."""

    fold = "fold"  # folded into the weights: the cells hold W·γ/σ, the bias absorbs β
    periphery = "periphery"  # per-channel digital scale and shift after the ADC: the cells hold W


class Target(_Strict):
    """A chip family: what one cell can hold and how weights are laid onto cells."""

    name: str = Field(description="Identifier of the chip family.")
    description: str = Field("", description="Free text.")
    g_off_uS: float = Field(gt=0, description="Conductance of the lowest level (level 0), µS; a stuck-off cell reads it.")
    g_on_uS: float = Field(gt=0, description="Conductance of the highest level, µS; a stuck-on cell reads it.")
    bits_per_cell: int = Field(strict=True, ge=1, le=8, description="Bits one cell stores: 2**bits_per_cell linear levels between g_off and g_on.")
    weight_bits: int = Field(strict=True, ge=2, le=16, description="Signed bits of a quantised weight: integer codes in [-Q, Q], Q = 2**(weight_bits - 1) - 1.")
    mapping: str = Field(description="How a weight's code is laid onto cells: differential | differential-inverted | offset | bitsliced.")
    scale: ScaleGranularity = Field(ScaleGranularity.layer, description="Weights sharing one scale factor s = max|W|/Q (one DAC/ADC gain): layer, one per layer as the "
                                   "paper's fault model assumes; channel, one per output channel, a finer periphery.")
    batchnorm: BatchNormPlacement = Field(
        BatchNormPlacement.fold,
        description="Where the BatchNorm after a conv is applied, with fixed statistics either way. fold: folded into the "
                    "cells, which hold W·γ/σ (the bias absorbs β); periphery: applied per channel by the digital periphery "
                    "after the crossbar, so the cells hold W.",
    )
    tile_rows: int = Field(strict=True, ge=1, le=MAX_TILE_SIDE, description="Crossbar tile rows (inputs per tile); export records the tiles each layer occupies.")
    tile_cols: int = Field(strict=True, ge=1, le=MAX_TILE_SIDE, description="Crossbar tile columns (cells per row per tile).")
    row_permutation: bool = Field(
        False, strict=True,
        description="The chip family can route each of a tile's inputs to any of its physical rows: `ftdeploy program "
                    "--permute-rows` may then move a tile's rows so its weights land where stuck cells hurt least, and "
                    "records where each row went. false: every input drives its own fixed row.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> "Target":
        if self.g_on_uS <= self.g_off_uS:
            raise ValueError(f"g_on_uS ({self.g_on_uS}) must exceed g_off_uS ({self.g_off_uS})")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {sorted(MAPPINGS)}, found {self.mapping!r}")
        MAPPINGS[self.mapping].check_target(self)  # raises ValueError with the reason
        return self

    @property
    def levels_per_cell(self) -> int:
        return 2**self.bits_per_cell

    @property
    def max_code(self) -> int:
        """Largest magnitude of the signed integer weight code."""
        return 2 ** (self.weight_bits - 1) - 1

    def conductance_uS(self, level):
        """Conductance of a cell level (linear levels between g_off and g_on)."""
        return self.g_off_uS + (self.g_on_uS - self.g_off_uS) * level / (self.levels_per_cell - 1)


def _fault_list(value):
    """``faults`` as a list of kinds: one mapping is a one-kind list; an entry must name its kind."""
    entries = [value] if isinstance(value, dict) else value
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, dict) and "kind" not in entry:
                raise ValueError(f"each entry names its kind: one of {', '.join(NONIDEALITIES)} "
                                 "(e.g. `- kind: stuck-at` above `p_sa: 0.005`)")  # fmt: skip
    return entries


def _one_of_each(kinds: list) -> list:
    FaultModel(kinds)  # raises ValueError for a kind given twice
    return kinds


#: A profile's ``faults``: the non-idealities of its chips, each entry one kind.
FaultList = Annotated[list[FaultSpec], BeforeValidator(_fault_list), AfterValidator(_one_of_each)]


#: A sign-off rate as a chip family states it: a total stuck-at rate, split with the ratio of the
#: profile's stuck-at entry, or a measured [stuck_off, stuck_on] pair, simulated as given.
def _probability(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a probability per cell between 0 and 1, found {value!r}")
    return float(value)


def _signoff_rate(value):
    """A total rate or a [stuck_off, stuck_on] pair, checked here so a bad one is one error line."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected a total rate or a [stuck_off, stuck_on] pair, found a list of {len(value)}")
        pair = tuple(_probability(v) for v in value)
        if sum(pair) > 1.0:
            raise ValueError(f"stuck_off + stuck_on must be at most 1, found {sum(pair)}")
        return pair
    return _probability(value)


StuckPair = tuple[Rate, Rate]
SignOffRate = Annotated[Union[Rate, StuckPair], BeforeValidator(_signoff_rate)]  # noqa: UP007


def rate_total(rate: float | tuple[float, float]) -> float:
    """The total stuck-at probability of a sign-off rate: the rate, or stuck_off + stuck_on."""
    return float(sum(rate)) if isinstance(rate, (tuple, list)) else float(rate)


def rate_label(rate: float | tuple[float, float]) -> str:
    """A sign-off rate as written: ``0.01`` or ``[0.0005, 0.002]``."""
    return f"[{rate[0]:g}, {rate[1]:g}]" if isinstance(rate, (tuple, list)) else f"{rate:g}"


def _same_rate(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


class ChipSpec(_Strict):
    """What one shipped chip must achieve: the spec a yield counts chips against, and each
    measured chip is judged by. Give one or both; a chip meets the spec when it meets every one
    given."""

    min_acc_pct: float | None = Field(None, ge=0, le=100, description="A chip meets the spec when its accuracy is at least this, %.")
    max_drop_pct: float | None = Field(
        None, ge=0, le=100,
        description="A chip meets the spec when Acc_pretrain − its accuracy is at most this, percentage points "
                    "(Acc_pretrain measured on the same images: from verify --reference, or the file's own figure "
                    "when its image set is the one measured).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> "ChipSpec":
        if self.min_acc_pct is None and self.max_drop_pct is None:
            raise ValueError("set min_acc_pct, max_drop_pct or both")
        return self

    def threshold(self, acc_pretrain: float | None) -> float:
        """The lowest accuracy (%) a chip may have and meet the spec."""
        bounds = [b for b in (self.min_acc_pct, None if self.max_drop_pct is None else acc_pretrain - self.max_drop_pct) if b is not None]
        return max(bounds)

    def describe(self) -> str:
        parts = [f"accuracy >= {self.min_acc_pct:.2f} %" if self.min_acc_pct is not None else None,
                 f"Acc_pretrain − accuracy <= {self.max_drop_pct:.2f} pts" if self.max_drop_pct is not None else None]  # fmt: skip
        return " and ".join(p for p in parts if p)


#: Limits that compare against Acc_pretrain, so need it measured on the images signed off.
NEEDS_PRETRAIN = ("max_acc_drop_pct", "min_stability")


class AcceptanceLimit(_Strict):
    """One criterion of sign-off, at one failure rate. At least one limit must be set."""

    rate: SignOffRate = Field(description="The sign-off rate this limit applies to: one of signoff.rates, as a total or as its [stuck_off, stuck_on] pair.")
    min_acc_defect_pct: float | None = Field(None, ge=0, le=100, description="Minimum mean Acc_defect, %.")
    min_acc_defect_lower_ci_pct: float | None = Field(
        None, ge=0, le=100, description="Minimum lower bound of the 95 % CI of Acc_defect, %."
    )
    max_acc_drop_pct: float | None = Field(
        None, ge=0, le=100, description="Maximum Acc_pretrain − mean Acc_defect, percentage points."
    )
    min_stability: float | None = Field(None, ge=0, description="Minimum Stability Score, SS = Acc_retrain / (Acc_pretrain − mean Acc_defect); met when the chips lose nothing (SS is +inf).")
    min_yield_pct: float | None = Field(
        None, ge=0, le=100,
        description="Minimum yield, %: the share of chips meeting signoff.chip_spec, judged on its exact one-sided "
                    "lower confidence bound (Clopper-Pearson) at signoff.confidence.",
    )  # fmt: skip
    min_percentile_acc_pct: float | None = Field(
        None, ge=0, le=100, description="Minimum accuracy of the `percentile`-th percentile chip, % (the chip that only `percentile` % of chips fall below)."
    )
    percentile: float = Field(5.0, gt=0, lt=100, description="Which percentile min_percentile_acc_pct applies to, %.")

    def limits(self) -> dict[str, float]:
        """The limits set on this rate, by field name."""
        names = ("min_acc_defect_pct", "min_acc_defect_lower_ci_pct", "max_acc_drop_pct", "min_stability", "min_yield_pct",
                 "min_percentile_acc_pct")  # fmt: skip
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def total(self) -> float:
        return rate_total(self.rate)

    @model_validator(mode="after")
    def _check(self) -> "AcceptanceLimit":
        if not self.limits():
            raise ValueError(
                "set at least one of min_acc_defect_pct, min_acc_defect_lower_ci_pct, max_acc_drop_pct, min_stability, "
                "min_yield_pct, min_percentile_acc_pct"
            )
        return self


class SignOff(_Strict):
    """How a model is verified before shipping."""

    rates: list[SignOffRate] = Field(
        min_length=1, max_length=MAX_RATES,
        description="Stuck-at rates tested at sign-off: a total (probability per cell), split with the ratio of the "
                    "profile's stuck-at entry, or a measured [stuck_off, stuck_on] pair, simulated as given. Every "
                    "other kind in faults applies at each of them as stated.",
    )  # fmt: skip
    chips: int = Field(
        30, strict=True, ge=1, le=MAX_CHIPS,
        description="Monte-Carlo chips simulated per rate, each with its own random faults: the most a rate draws when "
                    "sequential, exactly this many when not.",
    )  # fmt: skip
    sequential: bool = Field(
        True,
        description="Draw a rate's chips batch_chips at a time and stop as soon as every limit at that rate is decided "
                    "(pass or fail) at `confidence`, its bounds corrected for the repeated looks; at most `chips` chips, "
                    "judged as a fixed count where still undecided. A rate without limits draws one batch. false: "
                    "always `chips` chips per rate (verify --fixed-chips). The verdict is judged on the chips drawn either way.",
    )  # fmt: skip
    batch_chips: int = Field(
        10, strict=True, ge=1, le=MAX_CHIPS,
        description="Chips per batch of a sequential sign-off: a rate's limits are examined after every batch "
                    "(each look costs confidence, so smaller batches stop sooner but decide at stricter bounds).",
    )  # fmt: skip
    chip_batch: int = Field(
        1, strict=True, ge=1, le=4096,
        description="Chips the PyTorch backend (the sweep's evaluation) runs in one forward pass, their weights "
                    "stacked along a chip dimension: more keeps a GPU busy. A pass holds as many (chip, image) pairs "
                    "as half the GPU's free memory allows (on the CPU, one chip's batch of images), so memory stays "
                    "bounded. Chip k is the same chip either way; ONNX Runtime (verify) runs one chip at a time.",
    )  # fmt: skip
    seed: int = Field(0, strict=True, ge=0, le=MAX_SEED, description="Seed of the chip population: the same seed gives the same chips and the same report.")
    max_images: int | None = Field(None, strict=True, ge=1, le=MAX_IMAGES, description="Evaluate on a class-stratified subset of at most this many validation images (none: all).")
    min_acc_retrain_pct: float | None = Field(None, ge=0, le=100, description="Minimum fault-free accuracy (Acc_retrain) of the exported model, %.")
    chance_margin_pct: float = Field(
        10.0, ge=0, le=100,
        description="Acc_retrain must exceed chance (100 / number of classes, %) by at least this many percentage "
                    "points, or sign-off fails whatever the other limits say: a model that guesses loses nothing to "
                    "faults and would otherwise pass. 0: off.",
    )  # fmt: skip
    confidence: float = Field(
        0.95, gt=0.5, lt=1,
        description="Confidence of the yield's lower bound (one-sided, Clopper-Pearson), and of a sequential sign-off's "
                    "decisions: each is wrong with a chance of at most 1 − confidence over all its looks.",
    )  # fmt: skip
    chip_spec: ChipSpec | None = Field(None, description="What one shipped chip must achieve; needed by min_yield_pct.")
    acceptance: list[AcceptanceLimit] = Field(default_factory=list, description="Limits that decide PASS/FAIL, each at one of the sign-off rates.")
    field_rate: Rate = Field(
        0.0,
        description="Field faults: total stuck-at probability per cell of the faults that appear after programming, "
                    "split stuck-off : stuck-on with the ratio of the profile's stuck-at entry. Signing off measured "
                    "chips (verify --fault-maps) adds them on top of each chip's map, drawn per chip from a stream "
                    "seeded by the map file's SHA-256 and `seed`, on cells the map does not list; programming sees "
                    "only the map. 0: none.",
    )  # fmt: skip

    @property
    def totals(self) -> list[float]:
        """The total stuck-at probability of each sign-off rate, in order."""
        return [rate_total(r) for r in self.rates]

    def rate_for(self, limit: AcceptanceLimit) -> float | tuple[float, float] | None:
        """The sign-off rate an acceptance entry names (by its total, and its pair where it gives one)."""
        for rate in self.rates:
            if _same_rate(rate_total(rate), limit.total) and (
                not isinstance(limit.rate, tuple) or not isinstance(rate, tuple) or all(map(_same_rate, rate, limit.rate))
            ):
                return rate
        return None

    @model_validator(mode="after")
    def _check(self) -> "SignOff":
        totals = self.totals
        repeated = sorted({rate_label(r) for r, t in zip(self.rates, totals) if sum(_same_rate(t, u) for u in totals) > 1})
        if repeated:
            raise ValueError(f"rates: each total stuck-at rate may appear once (its chips are keyed by it), found {', '.join(repeated)} sharing one")
        missing = [rate_label(lim.rate) for lim in self.acceptance if self.rate_for(lim) is None]
        if missing:
            raise ValueError(f"acceptance rates [{', '.join(missing)}] are not in rates [{', '.join(map(rate_label, self.rates))}]")
        if self.chip_spec is None and any(lim.min_yield_pct is not None for lim in self.acceptance):
            raise ValueError("min_yield_pct counts chips meeting signoff.chip_spec: set chip_spec (min_acc_pct and/or max_drop_pct)")
        return self

    def chip_threshold(self, acc_pretrain: float | None) -> float | None:
        """The lowest accuracy (%) a chip may have and meet ``chip_spec``; None without a spec, or
        when the spec is a drop and there is no Acc_pretrain to drop from."""
        spec = self.chip_spec
        if spec is None or (spec.max_drop_pct is not None and acc_pretrain is None):
            return None
        return spec.threshold(acc_pretrain)

    @property
    def needs_pretrain(self) -> list[str]:
        """The limits set here that compare against Acc_pretrain."""
        names = [f"rate={rate_label(lim.rate)} {n}" for lim in self.acceptance for n in lim.limits() if n in NEEDS_PRETRAIN]
        if self.chip_spec is not None and self.chip_spec.max_drop_pct is not None:
            names.append("chip_spec.max_drop_pct")
        return names


class Method(str, Enum):
    one_shot = "one-shot"
    progressive = "progressive"


class RetrainingRecipe(BaseModel):
    """How fault-tolerant retraining trains, beyond its method, rates, length and learning rate:
    the options ``ftdeploy.training`` explains. Written once here, shared by a profile's
    training defaults and by every run's :class:`ftdeploy.training.config.TrainConfig`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as _Strict

    progressive_blocks: ProgressiveBlocks = Field(
        "split",
        description="How progressive retraining spends its epochs. split: the run's epochs divided among the rates, "
                    "under one learning-rate schedule. each: every rate gets the full epochs with its own warm-up and "
                    "cosine, as in the paper's Algorithm 1 (M_epoch per rate): each block is a one-shot retraining "
                    "from the block before, and the run is len(progressive_rates) × epochs long.",
    )  # fmt: skip
    rate_warmup_epochs: float = Field(
        2.0, ge=0, le=MAX_WARMUP_EPOCHS, description="Epochs over which the fault rate ramps linearly from 0 to the first scheduled rate."
    )
    bn: BatchNormMode = Field(
        "frozen",
        description="Retraining BatchNorm. frozen: statistics stay at their pretrained values (γ and β train) and faults hit "
                    "exactly the weights the cells hold, as on the deployed chip. train: training mode, which renormalises each "
                    "batch and so absorbs the shift a stuck cell causes, as the chip never does.",
    )
    stuck_grad: StuckGrad = Field(
        "block",
        description="Gradient of a weight with a stuck cell. block: none (on that chip the cell ignores programming, so "
                    "its gradient is noise); pass: as if the cell were healthy. Healthy weights train through a "
                    "straight-through quantiser at the target's weight bits either way.",
    )  # fmt: skip
    scale_grad: ScaleGrad = Field(
        "learn",
        description="Gradient through the full scale a stuck-on cell injects (max|W| of its layer or channel): "
                    "learn lets training shrink the layer's largest weights; detach holds it constant in each step.",
    )  # fmt: skip
    unbias_faults: bool = Field(
        False,
        description="Divide each training chip's weights by their expected shrink under faults (1 - P_sa on a "
                    "differential pair), as inverted dropout does, so the fault-free chip gets the gain training fitted.",
    )  # fmt: skip
    clean_steps: float = Field(
        0.0, ge=0, lt=1,
        description="Fraction of retraining steps run on a fault-free chip, spread evenly (every other step at 0.5); "
                    "the rest at the scheduled rate. 0: every step faulty.",
    )  # fmt: skip
    weight_clip: float = Field(
        0.0, ge=0,
        description="After every retraining step, clip each deployed weight, as its cells hold it (W·γ/σ where BN "
                    "folds), to ± this many standard deviations of its scale group (layer or channel), as analog "
                    "hardware-aware training does (Rasch et al. 2023). A stuck-on cell adds its group's peak, so a "
                    "lower peak costs less. 0: off (training alone flattens the weights).",
    )  # fmt: skip
    distill: float = Field(
        0.0, ge=0, le=1,
        description="Weight of distillation from the starting checkpoint's clean outputs in the retraining loss "
                    "(0: off; the rest is cross-entropy on the labels).",
    )  # fmt: skip

    def recipe(self) -> dict:
        """This model's recipe fields alone (a subclass's other fields left out)."""
        return {field: getattr(self, field) for field in RetrainingRecipe.model_fields}


def recipe_last(fields: dict) -> dict:
    """``fields`` (a dumped TrainingDefaults or TrainConfig) with the recipe fields after the
    others: pydantic lists inherited fields first, and a reader looks for the model and method first."""
    return dict(sorted(fields.items(), key=lambda item: item[0] in RetrainingRecipe.model_fields))


class TrainingDefaults(RetrainingRecipe):
    """Defaults of ``ftdeploy train`` and ``sweep``, the retraining recipe included; every one can be
    overridden on the command line."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # as _Strict: a misspelt option is an error

    model: str = Field("resnet20", description="Model: a registered name (ftdeploy models), tv:NAME for a torchvision model, or package.module:factory for your own.")
    method: Method = Field(Method.progressive, description="one-shot: fixed rate; progressive: ascending rates.")
    target_rate: Rate = Field(0.05, description="P_sa^T, the (last) training stuck-at rate.")
    progressive_rates: list[Rate] = Field(
        default_factory=lambda: [0.01, 0.02, 0.05], max_length=MAX_RATES,
        description="Ascending rates of progressive training, the last equal to target_rate. Every progressive retraining to "
                    "target_rate (train, sweep, demo) steps through them; one to another rate takes the two ladder rates "
                    "below it (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, ...) and the rate itself.",
    )
    pretrain_epochs: int = Field(30, strict=True, ge=0, le=MAX_EPOCHS, description="Epochs of fault-free pretraining.")
    epochs: int = Field(
        20, strict=True, ge=1, le=MAX_EPOCHS, description="Epochs of fault-tolerant retraining (all progressive blocks together; per rate with progressive_blocks each)."
    )
    lr: float = Field(0.1, gt=0, description="Peak learning rate of pretraining (linear warm-up, cosine decay).")
    retrain_lr: float = Field(0.02, gt=0, description="Peak learning rate of fault-tolerant retraining (linear warm-up, cosine decay).")
    batch_size: int = Field(128, strict=True, ge=1, le=MAX_BATCH_SIZE, description="Images per SGD step.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay.")
    seed: int = Field(0, strict=True, ge=0, le=MAX_SEED, description="Seed of initialisation, data order and fault draws.")

    @model_validator(mode="after")
    def _check(self) -> "TrainingDefaults":
        rates = self.progressive_rates
        if rates != sorted(rates):
            raise ValueError(f"progressive_rates must ascend, found {rates}")
        if self.method is Method.progressive and (not rates or rates[-1] != self.target_rate):
            raise ValueError(f"progressive_rates must end at target_rate {self.target_rate}, found {rates}")
        return self


class Profile(_Strict):
    """A deployment: one target, its fault population, sign-off and training defaults."""

    name: str = Field(description="Identifier of the deployment.")
    description: str = Field("", description="Free text.")
    target: str = Field(description="Target name (targets/NAME.yaml) or a path relative to this file.")
    faults: FaultList = Field(
        description="Non-idealities of the shipped chips, each entry one kind (stuck-at, programming-variation, "
                    "read-noise, drift) with its own fields; kinds compose on every chip. Training injects them, "
                    "sign-off simulates them.",
    )  # fmt: skip
    signoff: SignOff = Field(description="How the model is verified before shipping.")
    training: TrainingDefaults = Field(default_factory=TrainingDefaults, description="Training defaults.")

    @property
    def fault_model(self) -> FaultModel:
        """The chips' non-idealities composed (:class:`ftdeploy.nonideality.FaultModel`)."""
        return FaultModel(self.faults)

    def signoff_faults(self, rate: float | tuple[float, float]) -> FaultModel:
        """The chips simulated at one sign-off rate: a [stuck_off, stuck_on] pair as given, a total
        split with the ratio of the stuck-at entry."""
        if isinstance(rate, (tuple, list)):
            return self.fault_model.at_pair(*rate)
        return self.fault_model.at_rate(rate)

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        if self.fault_model.stuck is None:
            totals = [rate_label(r) for r in self.signoff.rates if not isinstance(r, tuple) and r > 0]
            if totals:
                raise ValueError(f"signoff.rates {', '.join(totals)}: a total stuck-at rate is split with the stuck-off : "
                                 "stuck-on ratio of the stuck-at entry in faults, and faults has none; add one, or give "
                                 "each rate as a measured [stuck_off, stuck_on] pair")  # fmt: skip
            if self.signoff.field_rate > 0:
                raise ValueError(f"signoff.field_rate {self.signoff.field_rate:g}: field faults are split with the stuck-off : "
                                 "stuck-on ratio of the stuck-at entry in faults, and faults has none; add one")  # fmt: skip
        return self

    @property
    def field_faults(self):
        """The stuck-at kind of field faults (:attr:`SignOff.field_rate`, split with the stuck-at
        entry's ratio), or None when the profile states none."""
        if self.signoff.field_rate <= 0:
            return None
        return self.fault_model.stuck.at_total(self.signoff.field_rate)

    @property
    def training_faults(self) -> list:
        """The kinds training injects: these faults with the stuck-at rate left to the schedule (0)."""
        return list(self.fault_model.at_rate(0.0).kinds)


class ResolvedProfile(BaseModel):
    """A profile with its target loaded, and where both came from."""

    model_config = ConfigDict(frozen=True)

    profile: Profile
    target: Target
    profile_path: Path
    target_path: Path
    base_paths: tuple[Path, ...] = Field((), description="The profiles it extends, nearest first.")

    def to_dict(self) -> dict:
        profile = self.profile.model_dump(mode="json")
        profile["training"] = recipe_last(profile["training"])
        return {"profile": profile, "target": self.target.model_dump(mode="json")}


def _format_loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _validation_lines(path: Path, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        found = e.get("input")
        # a message of our own validators already says what it found
        said = e["type"] in ("missing",) or isinstance(found, dict) or "found" in msg
        found_txt = "" if said else f" (found {shown(found)})"
        lines.append(f"{path}: {_format_loc(e['loc'])}: {msg[:300]}{found_txt}")
    return lines


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: no tag constructs an object or runs code), made
    strict where the safe loader is lenient:

    * a key given twice in one mapping is an error: the safe loader keeps the last, so a second
      ``chips:`` lower in a file would silently replace the first;
    * nesting deeper than MAX_YAML_DEPTH is an error before PyYAML's recursive composer runs
      out of stack;
    * aliases may not expand past MAX_YAML_NODES values ("billion laughs": a few lines of
      ``&a [*b, *b, ...]`` expand to billions of values once validated or printed).
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)  # fmt: skip
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:  # as written: a key a merge (<<) brings in may be overridden
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (list, dict)):
                    continue  # unhashable: the base class reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)} (each key once per mapping)",
                                                            key_node.start_mark)  # fmt: skip
                seen.add(key)
        return super().construct_mapping(node, deep)


def _check_expansion(root) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES values. Each node's expanded
    size is counted once (memoised), so the check itself costs one pass over the nodes as written."""
    sizes: dict[int, int] = {}
    order, stack = [], [root]
    while stack:  # post-order without recursion: the document may be deep
        node = stack.pop()
        if id(node) in sizes:
            continue
        sizes[id(node)] = 0
        order.append(node)
        stack.extend(_children(node))
    for node in reversed(order):
        size = 1 + sum(sizes[id(child)] for child in _children(node))
        if size > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"expands to more than {MAX_YAML_NODES:,} values (aliases "
                                              "repeated within aliases)", node.start_mark)  # fmt: skip
        sizes[id(node)] = size


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def read_yaml(path: Path) -> dict:
    """The mapping a YAML file holds; ConfigError (one line naming the file) when it is missing,
    a folder, unreadable, not YAML (or YAML that :class:`_StrictLoader` refuses) or not a mapping."""
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem[:200]}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        found = "an empty file (or only comments)" if data is None else type(data).__name__
        raise ConfigError(f"{path}: (top level): expected a mapping of fields, found {found}")
    return data


def validated(model: type[BaseModel], data: dict, path: Path):
    """``data`` read from ``path`` as ``model``; ConfigError with one line per bad field, each
    naming the file and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError("\n".join(_validation_lines(path, err))) from None


def _parse(model: type[BaseModel], path: Path):
    return validated(model, read_yaml(path), path)


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def _resolve(ref: str | Path, folder: Path, relative_to: Path | None = None) -> Path:
    ref_s = str(ref)
    if _is_path(ref_s):
        path = Path(ref_s)
        if not path.is_absolute() and relative_to is not None:
            beside = relative_to / path  # documented meaning; the working directory is a fallback
            if beside.exists() or not path.exists():
                path = beside
        return path
    return folder / f"{ref_s}.yaml"


class _UnknownName(ConfigError):
    """A name (not a path) that no built-in file has."""


def _unknown_name(kind: str, name: str, builtins: list[Path]) -> _UnknownName:
    """No built-in ``kind`` called ``name``: the line lists the built-in ones and suggests the
    closest, so a typo is fixed from the message alone."""
    import difflib

    names = sorted(p.stem for p in builtins)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return _UnknownName(f"no built-in {kind} {name!r}{hint}; built-in {kind}s: {', '.join(names)}; or give the path "
                        f"of a {kind} .yaml file")  # fmt: skip


def load_target(ref: str | Path, relative_to: Path | None = None) -> tuple[Target, Path]:
    path = _resolve(ref, TARGETS_DIR, relative_to)
    if not _is_path(str(ref)) and not path.is_file():
        raise _unknown_name("target", str(ref), builtin_targets())
    return _parse(Target, path), path


#: Fields a profile never takes from the one it extends: they say which deployment it is.
NOT_INHERITED = ("name", "description")


def _merged(base: dict, own: dict) -> dict:
    """``own`` laid over ``base``: sections (mappings) merged key by key, any other value (a
    number, a list such as ``signoff.rates`` or ``acceptance``) replaced whole."""
    merged = dict(base)
    for key, value in own.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _profile_fields(path: Path, extended_by: tuple[Path, ...] = ()) -> tuple[dict, tuple[Path, ...]]:
    """The fields of the profile at ``path`` over those of the profiles it extends, and those
    profiles' files, nearest first. Each base must be a valid profile on its own, so a bad field
    there is reported in its own file."""
    data = read_yaml(path)
    if "extends" not in data:
        return data, ()
    ref = data.pop("extends")
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{path}: extends: expected the name of a profile in {PROFILES_DIR} or a path to one (found {shown(ref)})")
    base_path = _resolve(ref, PROFILES_DIR, relative_to=path.parent)
    chain = (*extended_by, path)
    if len(chain) > MAX_EXTENDS:  # a chain this long is a generated mistake; each level costs a stack frame
        raise ConfigError(f"{chain[0]}: extends: a chain of more than {MAX_EXTENDS} profiles (at {path}); expected at most {MAX_EXTENDS}")
    if base_path.resolve() in {p.resolve() for p in chain}:
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise ConfigError(f"{path}: extends: {ref} leads back to a profile already on the way ({cycle})")
    if not _is_path(ref) and not base_path.is_file():
        raise ConfigError(f"{path}: extends: {_unknown_name('profile', ref, builtin_profiles())}")
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends: no profile file {base_path} (expected a name in {PROFILES_DIR} or a path)")
    base, further = _profile_fields(base_path, chain)
    validated(Profile, base, base_path)
    if "target" in base and _is_path(str(base["target"])):  # relative to the base, not to this file
        base["target"] = str((base_path.parent / base["target"]).resolve())
    inherited = {k: v for k, v in base.items() if k not in NOT_INHERITED}
    return _merged(inherited, data), (base_path, *further)


def load_profile(ref: str | Path) -> ResolvedProfile:
    """Load and validate a profile (over the profiles it extends) and its target; raise
    ConfigError naming file and field."""
    path = _resolve(ref, PROFILES_DIR)
    if not _is_path(str(ref)) and not path.is_file():
        raise _unknown_name("profile", str(ref), builtin_profiles())
    fields, base_paths = _profile_fields(path)
    profile: Profile = validated(Profile, fields, path)
    try:
        target, target_path = load_target(profile.target, relative_to=path.parent)
    except _UnknownName as exc:
        raise ConfigError(f"{path}: target: {exc}") from None
    except ConfigError as exc:
        if "file not found" in str(exc):
            raise ConfigError(
                f"{path}: target: no target file {exc.args[0].split(':')[0]} (expected a name in {TARGETS_DIR} or a path)"
            ) from None
        raise
    return ResolvedProfile(profile=profile, target=target, profile_path=path, target_path=target_path, base_paths=base_paths)


def is_target_file(path: Path) -> bool:
    """Whether a YAML file reads as a target (a chip family) rather than a profile: it names a
    mapping and no target of its own. Unreadable files count as profiles, whose loader says why."""
    try:
        data = read_yaml(path)
    except ConfigError:
        return False
    return "mapping" in data and "target" not in data


def builtin_profiles() -> list[Path]:
    return sorted(PROFILES_DIR.glob("*.yaml"))


def builtin_targets() -> list[Path]:
    return sorted(TARGETS_DIR.glob("*.yaml"))


__all__ = [
    "AcceptanceLimit",
    "CHEN2015_SPLIT",
    "ChipSpec",
    "SignOffRate",
    "FaultList",
    "Method",
    "Profile",
    "ResolvedProfile",
    "RetrainingRecipe",
    "SignOff",
    "Target",
    "TrainingDefaults",
    "builtin_profiles",
    "builtin_targets",
    "is_target_file",
    "load_profile",
    "load_target",
]
