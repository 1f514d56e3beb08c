"""Where each setting's value comes from, in one place: built-in defaults, then the profile's
section (``training`` for a run, ``signoff`` for the chips it is judged on), then a config file
where one is given (``train --config``), then the command line. A later layer wins; ``None`` in
a layer means "not given there", never "off" (a typed 0 stays 0 and reaches the checks that
refuse it).

``train``, ``sweep``, ``demo``, ``prune`` and ``verify`` all take their settings from here, so
each default has one source and an option means the same on every command. Each function below
says which fields the profile's section supplies to what it builds; :func:`layered` is the rule
they all apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ModelError
from .profiles import Profile, RetrainingRecipe, SignOff
from .training.config import TRAIN_OPTIONS, ConfigFile, TrainConfig, make_train_config, progressive_rates_for

NO_FILE = ConfigFile(None, {})


def layered(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The layers merged key by key, each over the ones before it; a ``None`` value is no value."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({key: value for key, value in layer.items() if value is not None})
    return merged


# --- a training run ---------------------------------------------------------------------------


def _profile_training(profile: Profile, method: str) -> dict[str, Any]:
    """The profile's training section as the TrainConfig fields of a run of ``method``: a
    pretraining takes its ``pretrain_epochs`` and ``lr``, a retraining its ``epochs``,
    ``retrain_lr`` and retraining recipe. Fields it has no say in keep TrainConfig's defaults."""
    d = profile.training
    common = dict(model=d.model, batch_size=d.batch_size, weight_decay=d.weight_decay, seed=d.seed,
                  faults=profile.training_faults)  # fmt: skip
    if method == "pretrain":
        return common | dict(epochs=d.pretrain_epochs, lr=d.lr)
    return common | dict(epochs=d.epochs, lr=d.retrain_lr) | d.recipe()


def train_config(profile: Profile, typed: Mapping[str, Any], file: ConfigFile = NO_FILE, *,
                 defaults: Mapping[str, Any] | None = None, start_model: str | None = None,
                 start_image_size: int | None = None) -> TrainConfig:  # fmt: skip
    """The run asked for. ``typed``: TrainConfig fields as given on the command line (None: not
    given); ``file``: the fields a ``--config`` file sets; ``defaults``: values that stand in for
    the profile's (the sweep's trainings default to its chip seed); ``start_model``: the model of
    the checkpoint a retraining starts from, which stands in for the profile's and which a given
    model must be (``start_image_size`` likewise: the image size it was trained at). The method,
    then the target rate, then the progressive rates (the profile's list where it ends at that
    rate) are resolved first, as each decides the next. A weights file (``weights``) starts only
    a pretraining. A bad value is one error line naming its option (or the file's field), before
    any work."""
    given = layered(file.fields, typed)
    if start_model is not None and given.get("model", start_model) != start_model:
        raise ModelError(f"{_source('model', typed, file)} {given['model']!r} does not match the checkpoint's model {start_model!r}")
    if start_image_size is not None and given.get("image_size", start_image_size) != start_image_size:
        raise ConfigError(f"{_source('image_size', typed, file)}: {given['image_size']}; the checkpoint's model was trained "
                          f"at {start_image_size} (a retraining keeps its checkpoint's image size)")  # fmt: skip
    d = profile.training
    method = given.get("method", d.method.value)
    if given.get("weights") is not None and (start_model is not None or method != "pretrain"):
        given.pop("weights")  # starts the pretraining that runs first, if any (pretraining_config)
        if start_model is not None:
            raise ConfigError(f"{_source('weights', typed, file)}: starts a pretraining from a weights file; a retraining "
                              "starts from its --from checkpoint")  # fmt: skip
    if method == "pretrain":
        _refuse_recipe_on_pretraining(typed, file)
    target_rate = given.get("target_rate", d.target_rate)
    rates = given.get("progressive_rates") or progressive_rates_for(target_rate, d)
    if method == "progressive" and rates[-1] != target_rate:
        found = ",".join(f"{r:g}" for r in rates)
        raise ConfigError(f"{_source('progressive_rates', typed, file)}: progressive rates must end at "
                          f"{_source('target_rate', typed, file, bare=True)} {target_rate:g}, found {found}")  # fmt: skip
    schedule = dict(method=method, target_rate=target_rate, progressive_rates=rates)
    start = {"model": start_model, "image_size": start_image_size}
    return make_train_config(**layered(_profile_training(profile, method), start, defaults or {}, given, schedule))


def pretraining_config(profile: Profile, typed: Mapping[str, Any], file: ConfigFile = NO_FILE) -> TrainConfig:
    """The pretraining a retraining without a starting checkpoint runs first (``train`` without
    ``--from``, ``demo``): the profile's pretraining, with the model, image size, initial weights,
    batch size, training seed, device and learning rate given for the run; its length and
    everything else are the profile's (the given epochs are the retraining's)."""
    shared = {k: v for k, v in layered(file.fields, typed).items()
              if k in ("model", "image_size", "weights", "batch_size", "seed", "device", "lr")}  # fmt: skip
    return make_train_config(**layered(_profile_training(profile, "pretrain"), shared, {"method": "pretrain"}))


def _source(field: str, typed: Mapping[str, Any], file: ConfigFile, bare: bool = False) -> str:
    """``field`` as a message names it: the file's field (after the file's path unless ``bare``)
    where the value came from the ``--config`` file, else its option."""
    if typed.get(field) is None and field in file.fields:
        return field if bare else f"{file.path}: {field}"
    return TRAIN_OPTIONS[field].split("/")[0]


def _refuse_recipe_on_pretraining(typed: Mapping[str, Any], file: ConfigFile) -> None:
    """A pretraining injects no faults, so every retraining-recipe option would change nothing
    there: typed with --method pretrain it is a mistake (say, meant for the retraining that
    follows), and one line says so rather than a run that silently ignores it. A config file
    may carry the recipe's defaults (a pretraining's own config.yaml does), not other values."""
    recipe = RetrainingRecipe()
    for field in RetrainingRecipe.model_fields:
        value = typed.get(field)
        if value is None:
            continue
        if isinstance(value, bool):  # a flag pair: name the one typed
            option, shown = TRAIN_OPTIONS[field].split("/")[0 if value else 1], ""
        else:
            option, shown = TRAIN_OPTIONS[field], f" (found {value:g})" if isinstance(value, float) else f" (found {value})"
        raise ConfigError(f"{option}: a fault-tolerant retraining option; --method pretrain injects no faults and takes none{shown}")
    for field, value in file.fields.items():
        if field in RetrainingRecipe.model_fields and value != getattr(recipe, field):
            raise ConfigError(f"{file.path}: {field}: a fault-tolerant retraining field; method pretrain injects no faults "
                              f"and takes none (found {value!r})")  # fmt: skip


# --- pruning ----------------------------------------------------------------------------------


def prune_settings(profile: Profile, typed: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`ftdeploy.prune.PruneConfig` fields of ``ftdeploy prune`` besides its method
    and sparsity: fine-tuning as long and at the learning rate of the profile's retraining,
    ADMM (where asked) as long as the fine-tuning, the profile's batch size, weight decay and
    training seed. Fields left out keep PruneConfig's defaults."""
    d = profile.training
    fields = layered(dict(epochs=d.epochs, lr=d.retrain_lr, batch_size=d.batch_size, weight_decay=d.weight_decay, seed=d.seed),
                     typed)  # fmt: skip
    return layered({"admm_epochs": fields["epochs"]}, fields)


# --- the chips a model is judged on -----------------------------------------------------------


@dataclass(frozen=True)
class SignOffSettings:
    """How many chips per rate (the most, when sequential), which chips (the population's seed),
    how many images, and whether chips are drawn in batches until the limits are decided."""

    chips: int
    seed: int
    max_images: int | None
    sequential: bool = True
    batch_chips: int = 10
    chip_batch: int = 1  # chips per forward pass of the PyTorch backend


def signoff_settings(signoff: SignOff, typed: Mapping[str, Any]) -> SignOffSettings:
    """The profile's sign-off (``chips``, ``seed``, ``max_images``, ``sequential``,
    ``batch_chips``, ``chip_batch``; SignOff's defaults where it sets none) under what is typed.
    A typed ``chip_batch`` below 1 is refused here, naming its option."""
    fields = layered(dict(chips=signoff.chips, seed=signoff.seed, max_images=signoff.max_images, sequential=signoff.sequential,
                          batch_chips=signoff.batch_chips, chip_batch=signoff.chip_batch), typed)  # fmt: skip
    if fields["chip_batch"] < 1:
        raise ConfigError(f"--chip-batch: expected at least 1 chip per forward pass, found {fields['chip_batch']}")
    return SignOffSettings(fields["chips"], fields["seed"], fields.get("max_images"), fields["sequential"], fields["batch_chips"],
                           fields["chip_batch"])  # fmt: skip


def with_field_rate(resolved, field_rate: float | None):
    """``resolved`` (a ResolvedProfile) with ``signoff.field_rate`` as typed (``--field-rate``)
    over the profile's; validated as the profile's own field is (a rate above 0 needs a stuck-at
    entry to take its stuck-off : stuck-on ratio from)."""
    if field_rate is None:
        return resolved
    if field_rate > 0 and resolved.profile.fault_model.stuck is None:
        raise ConfigError(f"--field-rate {field_rate:g}: field faults are split with the stuck-off : stuck-on ratio of the "
                          f"profile's stuck-at entry, and {resolved.profile_path} has none")  # fmt: skip
    signoff = resolved.profile.signoff.model_copy(update={"field_rate": field_rate})
    return resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"signoff": signoff})})
