"""The contract of an ftdeploy ONNX file: names, metadata keys, the content hash, and the
derived graphs the verifier runs. Light on purpose (onnx and numpy only): reading a file's
metadata never imports torch.

An exported file holds every crossbar layer's weight as its cells::

    <layer>.cells.<cell>   uint8 initializer, weight shape   programmed level of each cell
    <layer>.scale          float32 initializer               weight per code step

decoded by ``DequantizeLinear(cells, ftdeploy.cell_weight.<cell>, ftdeploy.zero_point.<cell>)``
terms summed into the code, times the scale (see :mod:`ftdeploy.export`).

Two derived graphs, both made in memory from the file (the file itself is never changed):

* :func:`with_cell_inputs` — the cell initializers are also declared as graph inputs (uint8),
  so feeding ``<layer>.cells.<cell>`` overrides them: one session serves every chip whose cells
  hold integer levels (stuck-at faults).
* :func:`with_analog_cell_inputs` — the cell inputs are float32 levels (level 0 = g_off, level L
  = g_on, fractions in between), and every ``DequantizeLinear`` is replaced by
  ``Mul(Sub(cells, zero_point), cell_weight)``, which is what DequantizeLinear computes, so an
  integer level decodes exactly as before. This is the graph to feed conductances that are no
  longer integer levels (programming variation, drift, read noise): level = (G − g_off) / Δ with
  Δ = (g_on − g_off) / L.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FORMAT = "ftdeploy-onnx/1"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PREFIX = "ftdeploy."
HASH_KEY = PREFIX + "content_sha256"
#: A signed file's Ed25519 signature (base64) and its signer's key fingerprint (hex): see
#: :mod:`ftdeploy.signing`. The content hash covers the signer, not the signature.
SIGNATURE_KEY = PREFIX + "signature"
SIGNER_KEY = PREFIX + "signer"
#: Metadata values stored as plain text; every other ftdeploy.* value is JSON.
TEXT_KEYS = frozenset(PREFIX + k for k in ("format", "version", "model", "method", "content_sha256", "signature", "signer"))


def cell_weight_name(cell: str) -> str:
    """Initializer of one cell's |coefficient|: the DequantizeLinear scale of its term."""
    return f"{PREFIX}cell_weight.{cell}"


def zero_point_name(cell: str) -> str:
    """Initializer of one cell's uint8 zero point (the offset mapping's −Q rides on one)."""
    return f"{PREFIX}zero_point.{cell}"


def read_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """All metadata_props as a dict of raw strings."""
    return {p.key: p.value for p in proto.metadata_props}


def content_hash(proto: onnx.ModelProto) -> str:
    """SHA-256 of the model serialised deterministically without its ftdeploy.content_sha256 and
    ftdeploy.signature (the signature is made over this hash, so cannot be part of it)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    kept = [p for p in copy.metadata_props if p.key not in (HASH_KEY, SIGNATURE_KEY)]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def with_cell_inputs(proto: onnx.ModelProto, layers: list[dict]) -> onnx.ModelProto:
    """A copy whose cell initializers are also uint8 graph inputs, so feeds override them."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for layer in layers:
        for name in layer["cells"]:
            out.graph.input.append(helper.make_tensor_value_info(name, TensorProto.UINT8, layer["weight_shape"]))
    return out


def with_analog_cell_inputs(proto: onnx.ModelProto, layers: list[dict]) -> onnx.ModelProto:
    """A copy that takes every cell as a float32 level input (see the module docstring)."""
    out = with_cell_inputs(proto, layers)
    cells = {name for layer in layers for name in layer["cells"]}
    for value_info in out.graph.input:
        if value_info.name in cells:
            value_info.type.tensor_type.elem_type = TensorProto.FLOAT
    inits = {init.name: init for init in out.graph.initializer}
    for name in cells:  # the initializers stay as defaults; they must match the input's type
        init = inits[name]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), name))
    float_zero_points = {}
    nodes = []
    for node in out.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in cells:
            nodes.append(node)
            continue
        levels, weight, zero_point = node.input
        if zero_point not in float_zero_points:
            float_zero_points[zero_point] = f"{zero_point}.float"
            value = numpy_helper.to_array(inits[zero_point]).astype(np.float32)
            out.graph.initializer.append(numpy_helper.from_array(value, float_zero_points[zero_point]))
        shifted = f"{node.output[0]}.shifted"
        nodes.append(helper.make_node("Sub", [levels, float_zero_points[zero_point]], [shifted], name=f"{node.name}/sub"))
        nodes.append(helper.make_node("Mul", [shifted, weight], list(node.output), name=f"{node.name}/mul"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
