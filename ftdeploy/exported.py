"""An ftdeploy ONNX export, read back and cross-checked: its cell levels, mapping, target and
metadata, as both the verifier and any tool that reprograms a chip need them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .errors import VerifyError
from .export_metadata import check_graph, check_initializers, checked_input_shape, decode_metadata
from .files import folder_given
from .onnx_format import FORMAT, HASH_KEY, INPUT_NAME, PREFIX, content_hash, read_metadata
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
    meta = decode_metadata(path, raw)  # every field type-checked (export_metadata.ExportMetadata) before use
    try:
        target = Target.model_validate(meta["target"])
    except ValueError as exc:
        raise VerifyError(f"{path}: metadata {PREFIX}target is invalid: {_first_error(exc)}") from None
    checked_input_shape(path, _input_shape(proto), meta)
    check_graph(path, proto)
    check_initializers(path, proto)
    mapping = make_mapping(target)
    if list(mapping.coefficients) != meta["mapping"]["coefficients"] or mapping.offset != meta["mapping"]["offset"]:
        raise VerifyError(f"{path}: mapping {meta['mapping']['description']!r} differs from this version's {mapping.describe()!r}")
    return ExportedModel(path, proto, meta, target, mapping, _programmed_levels(path, proto, meta["layers"], target.levels_per_cell - 1))


def _first_error(exc: ValueError) -> str:
    """The first field and message of a pydantic error, on one line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        return f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')[:200]}"
    return str(exc).splitlines()[0][:200]


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
        # External data would make the loader read whatever file the graph names: refused
        # (check_initializers), never followed.
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors share no base class
        raise VerifyError(f"{path}: not a readable ONNX file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _programmed_levels(path: Path, proto: onnx.ModelProto, layers: list[dict], max_level: int) -> list[np.ndarray]:
    """Each layer's cells, (cells, *weight shape) uint8, every cell initializer checked on its
    own (present, uint8, the weight's shape, levels the target's cells can hold) before stacking."""
    inits = {init.name: init for init in proto.graph.initializer}
    levels = []
    for layer in layers:
        cells = [_cell_levels(path, layer, name, inits.get(name), max_level) for name in layer["cells"]]
        levels.append(np.stack(cells))
    return levels


def _cell_levels(path: Path, layer: dict, name: str, init, max_level: int) -> np.ndarray:
    if init is None:
        raise VerifyError(f"{path}: layer {layer['name']!r}: cell initializer {name!r} not in the graph")
    levels = onnx.numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.UINT8 else None
    if levels is None or list(levels.shape) != layer["weight_shape"]:
        found = f"{onnx.helper.tensor_dtype_to_np_dtype(init.data_type)}{list(init.dims)}" if init.data_type else f"untyped{list(init.dims)}"
        raise VerifyError(f"{path}: layer {layer['name']!r}: cell initializer {name!r} is {found}, "
                          f"metadata says uint8{layer['weight_shape']}")  # fmt: skip
    if levels.size and int(levels.max()) > max_level:  # a level no cell can be programmed to
        raise VerifyError(f"{path}: layer {layer['name']!r}: cell initializer {name!r} holds level {int(levels.max())}; "
                          f"expected levels 0..{max_level} (the target's cells)")  # fmt: skip
    return levels
