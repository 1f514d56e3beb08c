"""Initial weights from a file: a pretraining that starts from published weights (a torchvision
``.pth`` file, as ``torchvision.models`` downloads them) instead of random ones.

The file is read with ``torch.load(weights_only=True)``, so it runs no code. Its weights must be
the model's, name by name, with two adaptations that fine-tuning to a new dataset needs:

* the classifier (the model's last crossbar layer) is started afresh when the file's has
  another number of classes (ImageNet's 1,000 against the data's 10);
* a vision transformer's position embedding is resampled to the training's image size
  (torchvision's own ``interpolate_embeddings``), as its length is one entry per patch.

Any other difference is one error line naming the file and the weight.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .errors import ModelError
from .files import reason_line, sha256_file
from .models import deployed_layers, with_layer_names
from .training.checkpoint import check_state_dict

#: Buffers a weights file may leave out: the model keeps its own (BatchNorm's step counter is
#: not a weight, and older torchvision files do not store it).
OPTIONAL_BUFFERS = ("num_batches_tracked",)

#: The vision transformer's position embedding, resampled when the image size differs.
POSITION_EMBEDDING = "encoder.pos_embedding"


def load_initial_weights(model: nn.Module, path: Path) -> dict:
    """Load the weights file ``path`` into ``model`` (see the module docstring); return what was
    done, for the checkpoint's lineage: the file, its SHA-256, and the weights started afresh
    or resampled."""
    path = Path(path)
    state = with_layer_names(_read(path), model)
    own = model.state_dict()
    _check_names(path, state, own)
    state, resized = _resample_position_embedding(path, model, state, own)
    fresh = _mismatched_head(path, model, state, own)
    merged = {key: (own[key] if key in fresh or key not in state else state[key]) for key in own}
    model.load_state_dict(merged)
    return {"file": str(path), "sha256": sha256_file(path), "reinitialised": fresh, "resampled": resized}


def describe(record: dict) -> str:
    """One line on what :func:`load_initial_weights` did."""
    parts = [f"initial weights {record['file']} (sha256 {record['sha256'][:16]})"]
    if record["reinitialised"]:
        parts.append(f"started afresh for this data's classes: {', '.join(record['reinitialised'])}")
    if record["resampled"]:
        parts.append(f"resampled to this image size: {', '.join(record['resampled'])}")
    return "; ".join(parts)


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise ModelError(f"{path}: a folder; expected a weights file (a torchvision .pth state dict)")
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise ModelError(f"{path}: not a loadable weights file: torch.load raised {type(exc).__name__}: "
                         f"{reason_line(exc)}") from None  # fmt: skip
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # an ftdeploy or Lightning checkpoint
        obj = obj["state_dict"]
    check_state_dict(path, obj, field="", cause="")
    return {key.replace("parametrizations.weight.original", "weight"): value for key, value in obj.items()}


def _check_names(path: Path, state: dict, own: dict) -> None:
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_BUFFERS)]
    if missing:
        raise ModelError(f"{path}: {missing[0]}: missing; the model has it ({len(missing)} missing in all): "
                         "is this file for another model?")  # fmt: skip
    extra = [k for k in state if k not in own]
    if extra:
        raise ModelError(f"{path}: {extra[0]}: not a weight of the model ({len(extra)} such in all): is this file for another model?")


def _resample_position_embedding(path: Path, model: nn.Module, state: dict, own: dict) -> tuple[dict, list[str]]:
    """A vision transformer's position embedding resampled to the model's patch grid."""
    if POSITION_EMBEDDING not in own or state[POSITION_EMBEDDING].shape == own[POSITION_EMBEDDING].shape:
        return state, []
    from torchvision.models.vision_transformer import interpolate_embeddings

    try:
        resampled = interpolate_embeddings(model.image_size, model.patch_size, dict(state))
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise ModelError(f"{path}: {POSITION_EMBEDDING}: cannot resample to {model.image_size}x{model.image_size} "
                         f"images: {reason_line(exc)}") from None  # fmt: skip
    return dict(resampled), [POSITION_EMBEDDING]


def _mismatched_head(path: Path, model: nn.Module, state: dict, own: dict) -> list[str]:
    """Keys of the classifier whose shape differs from the file's (another class count); any
    other weight of another shape is an error."""
    head, _ = deployed_layers(model)[-1]
    head_keys = {f"{head}.weight", f"{head}.bias"}
    fresh = []
    for key, value in own.items():
        if key not in state or state[key].shape == value.shape:
            continue
        if key not in head_keys:
            raise ModelError(f"{path}: {key}: shape {list(state[key].shape)}; the model expects {list(value.shape)}")
        fresh.append(key)
    return sorted(fresh)

