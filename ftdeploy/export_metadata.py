"""The schema of an export's ``ftdeploy.*`` metadata, and the checks that run on a file's graph
before anything uses it.

An ONNX file is input like any other: it may be damaged, written by another tool, or crafted.
Its content hash finds corruption, not a crafted file (whoever crafts it stamps a matching hash;
a signature is what a crafted file cannot carry). So every metadata value is decoded and
type-checked against :class:`ExportMetadata` before any field is used, every size it declares is
bounded before anything is allocated, and the graph is checked before ONNX Runtime sees it: a
bad file is one line naming the file and the field, never a ``KeyError`` or a 12 TiB allocation
in the middle of a sign-off.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import VerifyError
from .limits import MAX_CLASSES, MAX_IMAGE_SIDE, MAX_JSON_DEPTH, MAX_METADATA_BYTES, MAX_TENSOR_ELEMENTS, shown
from .onnx_format import INPUT_NAME, OUTPUT_NAME, PREFIX, TEXT_KEYS

#: Channels of a model's input: images are grey, RGB or RGBA.
MAX_CHANNELS = 4


class _Checked(BaseModel):
    """Strict types (a string is never read as a number), no NaN or inf; fields this version does
    not know are kept, unread."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow", frozen=True)


Dim = Annotated[int, Field(ge=1, le=MAX_TENSOR_ELEMENTS)]
Name = Annotated[str, Field(min_length=1, max_length=1000)]


def _elements(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


class MappingRecord(_Checked):
    """How a weight's code is spread over cells, as the exporting version did it."""

    description: str
    coefficients: list[int] = Field(min_length=1, max_length=64)
    offset: int


class LayerRecord(_Checked):
    """One crossbar layer: the initializers that hold its cells and scale, and their shapes."""

    name: Name
    cells: list[Name] = Field(min_length=1, max_length=64)
    scale: Name
    weight_shape: list[Dim] = Field(min_length=1, max_length=8)
    cell_shape: list[Dim] = Field(min_length=2, max_length=9)

    @model_validator(mode="after")
    def _sizes(self) -> "LayerRecord":
        # bounded before np.stack or ONNX Runtime allocates them
        for field in ("weight_shape", "cell_shape"):
            if _elements(getattr(self, field)) > MAX_TENSOR_ELEMENTS:
                raise ValueError(f"{field} {getattr(self, field)} has more than {MAX_TENSOR_ELEMENTS:,} elements")
        if self.cell_shape != [len(self.cells), *self.weight_shape]:
            raise ValueError(f"cell_shape {self.cell_shape}: expected [{len(self.cells)} cells, *weight_shape {self.weight_shape}]")
        return self


Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Normalization(_Checked):
    """Per-channel mean and std the model's inputs are normalised with."""

    mean: list[Finite] = Field(min_length=1, max_length=MAX_CHANNELS)
    std: list[Positive] = Field(min_length=1, max_length=MAX_CHANNELS)

    @model_validator(mode="after")
    def _same_length(self) -> "Normalization":
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels, std {len(self.std)}")
        return self


Pct = Annotated[float, Field(ge=0, le=100)]


class ExportMetadata(_Checked):
    """Every ``ftdeploy.*`` metadata field an ftdeploy version reads, with its type. A field
    another module reads is declared here too, so that nothing reads an unchecked value."""

    format: str
    version: str | None = None
    model: str | None = None
    method: str | None = None
    content_sha256: str | None = None
    signer: str | None = None
    signature: str | None = None
    target: dict[str, Any]  # validated as a profiles.Target by the loader
    mapping: MappingRecord
    layers: list[LayerRecord] = Field(min_length=1, max_length=10_000)
    digital: list[dict[str, Any]] | None = Field(None, max_length=100_000)  # absent in files from before it was recorded
    normalization: Normalization
    classes: list[Annotated[str, Field(max_length=1000)]] = Field(min_length=1, max_length=MAX_CLASSES)
    data: dict[str, Any] | None = None
    acc_pretrain: Pct | None = None
    acc_retrain: Pct | None = None
    acc_pretrain_images: str | None = None
    sparsity: Annotated[float, Field(ge=0, le=1)] | None = None
    schedule: list[Annotated[float, Field(ge=0, le=1)]] | None = None
    equalization: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    placement: dict[str, Any] | None = None
    pruning: dict[str, Any] | None = None
    programmed_for: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _programmed_for(self) -> "ExportMetadata":
        if self.programmed_for is not None and not isinstance(self.programmed_for.get("chip"), str):
            raise ValueError("programmed_for: expected a record naming its chip (a string)")
        return self


def _json_depth_ok(text: str) -> bool:
    """Whether ``text`` nests brackets at most MAX_JSON_DEPTH deep (json.loads recurses once per
    level: 100,000 brackets would be a RecursionError). Counted over the raw text, so a bracket
    inside a string counts too: a false alarm needs 32 of them in a row, which no field has."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _decoded(path: Path, key: str, value: str):
    if len(value) > MAX_METADATA_BYTES:
        raise VerifyError(f"{path}: metadata {key}: {len(value):,} characters; expected at most {MAX_METADATA_BYTES:,}")
    if key in TEXT_KEYS:
        return value
    if not _json_depth_ok(value):
        raise VerifyError(f"{path}: metadata {key}: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(value)
    except ValueError:  # json.JSONDecodeError
        raise VerifyError(f"{path}: metadata {key} is not valid JSON") from None


def decode_metadata(path: Path, raw: dict[str, str]) -> dict:
    """The ``ftdeploy.*`` metadata, prefix stripped and JSON decoded, after :class:`ExportMetadata`
    accepted it; VerifyError naming the file and the first bad field otherwise."""
    meta = {key.removeprefix(PREFIX): _decoded(path, key, value) for key, value in raw.items() if key.startswith(PREFIX)}
    try:
        ExportMetadata.model_validate(meta)
    except ValidationError as err:
        e = err.errors()[0]
        field = PREFIX + ".".join(str(part) for part in e["loc"])
        if e["type"] == "missing":
            raise VerifyError(f"{path}: metadata lacks {field}") from None
        found = "" if isinstance(e.get("input"), dict) else f" (found {shown(e.get('input'))})"
        raise VerifyError(f"{path}: metadata {field}: {e['msg'].removeprefix('Value error, ')[:200]}{found}") from None
    return meta


def checked_input_shape(path: Path, shape: tuple[int, ...], meta: dict) -> None:
    """The graph input's (C, H, W), fixed and bounded: the verifier allocates its images at this
    size (a declared 2,000,000 x 2,000,000 input would ask for terabytes)."""
    channels, height, width = shape
    if not all(shape):
        raise VerifyError(f"{path}: input {INPUT_NAME!r} must be [N, C, H, W] with fixed C, H, W")
    if channels > MAX_CHANNELS or height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise VerifyError(f"{path}: input {INPUT_NAME!r} is [N, {channels}, {height}, {width}]; expected at most "
                          f"{MAX_CHANNELS} channels of at most {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE} pixels")  # fmt: skip
    if len(meta["normalization"]["mean"]) != channels:
        raise VerifyError(f"{path}: metadata {PREFIX}normalization: {len(meta['normalization']['mean'])} channels; "
                          f"input {INPUT_NAME!r} has {channels}")  # fmt: skip


def check_graph(path: Path, proto: onnx.ModelProto) -> None:
    """The graph is well formed: every node's inputs produced before it, every operator known to
    its opset, the output there. ONNX Runtime's own refusal comes as an exception from deep in a
    sign-off; the checker's is a sentence."""
    if not any(out.name == OUTPUT_NAME for out in proto.graph.output):
        raise VerifyError(f"{path}: graph output {OUTPUT_NAME!r} missing; not a graph ftdeploy export wrote")
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise VerifyError(f"{path}: graph: not a valid ONNX graph: {reason[:300]}") from None


def check_initializers(path: Path, proto: onnx.ModelProto) -> None:
    """Every weight is stored in the file (external data would read whatever file the graph
    names) and every float weight is finite (a NaN weight measures as a broken chip, not as a
    bad file)."""
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or len(init.external_data):
            raise VerifyError(f"{path}: initializer {init.name!r}: stored outside the file (external data); "
                              "expected every weight inside it, as ftdeploy export writes them")  # fmt: skip
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            if _elements(list(init.dims)) > MAX_TENSOR_ELEMENTS:
                raise VerifyError(f"{path}: initializer {init.name!r}: dims {list(init.dims)}; expected at most "
                                  f"{MAX_TENSOR_ELEMENTS:,} elements")  # fmt: skip
            try:
                values = onnx.numpy_helper.to_array(init)
            except Exception as exc:  # onnx raises ValueError or its own errors for data that does not fit its dims
                raise VerifyError(f"{path}: initializer {init.name!r}: unreadable ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
            if not np.isfinite(values).all():
                raise VerifyError(f"{path}: initializer {init.name!r}: holds NaN or infinite values; expected finite weights")
