"""An ftdeploy ONNX export, read back and cross-checked: its cell levels, mapping, target and
metadata, as both the verifier and any tool that reprograms a chip need them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .errors import VerifyError
from .files import folder_given
from .onnx_format import FORMAT, HASH_KEY, INPUT_NAME, PREFIX, TEXT_KEYS, content_hash, read_metadata
from .mapping import Mapping, make_mapping
from .nonideality import CellRange
from .profiles import Target

@dataclass
class ExportedModel:
    """An ftdeploy ONNX export, read and cross-checked."""

    path: Path
    proto: onnx.ModelProto
    meta: dict  # ftdeploy.* metadata, prefix stripped, JSON decoded
    target: Target
    mapping: Mapping
    levels: list[np.ndarray]  # programmed levels per layer, (cells, *weight shape), uint8

    @property
    def layers(self) -> list[dict]:
        return self.meta["layers"]

    @property
    def cell_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(layer["cell_shape"]) for layer in self.layers]

    @property
    def cells(self) -> CellRange:
        return CellRange.of(self.target)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the input, fixed at export."""
        return _input_shape(self.proto)


def load_export(path: str | Path) -> ExportedModel:
    """Read an ftdeploy ONNX export; VerifyError (one line) if it is not one or was altered."""
    path = Path(path)
    proto = _read_onnx(path)
    raw = read_metadata(proto)
    fmt = raw.get(PREFIX + "format")
    if fmt is None:
        raise VerifyError(f"{path}: not an ftdeploy export (no {PREFIX}format metadata); write one with `ftdeploy export`")
    if fmt != FORMAT:
        raise VerifyError(f"{path}: format {fmt!r} is not supported by ftdeploy {__version__} (expected {FORMAT!r})")
    if raw.get(HASH_KEY) != content_hash(proto):
        raise VerifyError(f"{path}: content hash mismatch: the file was modified after export")
    meta = _decode_metadata(path, raw)
    try:
        target = Target.model_validate(meta["target"])
    except ValueError as exc:
        raise VerifyError(f"{path}: metadata target is invalid: {str(exc).splitlines()[0]}") from None
    if not all(_input_shape(proto)):
        raise VerifyError(f"{path}: input {INPUT_NAME!r} must be [N, C, H, W] with fixed C, H, W")
    mapping = make_mapping(target)
    if list(mapping.coefficients) != meta["mapping"]["coefficients"] or mapping.offset != meta["mapping"]["offset"]:
        raise VerifyError(f"{path}: mapping {meta['mapping']['description']!r} differs from this version's {mapping.describe()!r}")
    return ExportedModel(path, proto, meta, target, mapping, _programmed_levels(path, proto, meta["layers"]))


def _input_shape(proto: onnx.ModelProto) -> tuple[int, ...]:
    """(C, H, W) of the graph input ``input``; zeros where a dimension is symbolic or missing."""
    for value_info in proto.graph.input:
        if value_info.name == INPUT_NAME:
            dims = value_info.type.tensor_type.shape.dim
            return tuple(int(d.dim_value) for d in dims[1:]) if len(dims) == 4 else (0, 0, 0)
    return (0, 0, 0)


def _read_onnx(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise VerifyError(folder_given(path, "the ONNX file that ftdeploy export wrote"))
    if not path.is_file():
        raise VerifyError(f"{path}: file not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors share no base class
        raise VerifyError(f"{path}: not a readable ONNX file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


_REQUIRED_META = ("target", "mapping", "layers", "normalization", "classes")


def _decode_metadata(path: Path, raw: dict[str, str]) -> dict:
    meta = {}
    for key, value in raw.items():
        if not key.startswith(PREFIX):
            continue
        try:
            meta[key.removeprefix(PREFIX)] = value if key in TEXT_KEYS else json.loads(value)
        except json.JSONDecodeError:
            raise VerifyError(f"{path}: metadata {key} is not valid JSON") from None
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise VerifyError(f"{path}: metadata lacks {', '.join(PREFIX + k for k in missing)}")
    return meta


def _programmed_levels(path: Path, proto: onnx.ModelProto, layers: list[dict]) -> list[np.ndarray]:
    inits = {init.name: init for init in proto.graph.initializer}
    levels = []
    for layer in layers:
        missing = [name for name in layer["cells"] if name not in inits]
        if missing:
            raise VerifyError(f"{path}: layer {layer['name']!r}: cell initializer {missing[0]!r} not in the graph")
        stacked = np.stack([onnx.numpy_helper.to_array(inits[name]) for name in layer["cells"]])
        if stacked.dtype != np.uint8 or list(stacked.shape) != layer["cell_shape"]:
            raise VerifyError(f"{path}: layer {layer['name']!r}: cells are {stacked.dtype}{list(stacked.shape)}, "
                              f"metadata says uint8{layer['cell_shape']}")  # fmt: skip
        levels.append(stacked)
    return levels

