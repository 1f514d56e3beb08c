"""Export a checkpoint to ONNX with conductance-mapped weights: what a chip is programmed with.

The quantised network (:class:`chip.DeployedNetwork`: BatchNorm folded into the weights, or
kept as BatchNormalization nodes when the target applies it in the periphery) is traced with PyTorch's
``torch.export``-based exporter (``dynamo=True``). We use it rather than the TorchScript
exporter because the latter is deprecated (PyTorch warns it "will be removed") and emits a
noisier graph (Cast/ConstantOfShape/Identity around the ResNet shortcuts); the cost is ~3 s of
tracing per export.

Then every deployed layer's float weight initializer is replaced by the cells that hold it:

    <layer>.cells.<cell>   uint8, weight shape   programmed level of each cell (0 = g_off)
    <layer>.scale          float32               weight per code step ([] or [Cout,1,..])

decoded with standard operators only, so stock ONNX Runtime runs the file:

    code   = DequantizeLinear(cells.<c0>, |k0|, zp0)  (+|-)  DequantizeLinear(cells.<c1>, |k1|, zp1) ...
    weight = Mul(code, <layer>.scale)            (then Transpose, where the graph multiplies by W^T)

Each DequantizeLinear uses the cell's integer coefficient ``|k_c|`` as its scale, so every term
and every partial sum is a small integer, exact in float32; a negative coefficient becomes a
Sub (no negative quantisation scales). The offset mapping's ``-Q`` is the zero point of its
cell. The layer scale is applied once, by a Mul, so the decoded weight is *bit-identical* to
``codes × scale`` as PyTorch computes it, for per-layer and per-channel scales alike (a
per-cell ``DequantizeLinear(level, k_c·scale)`` would round every term separately and differ
from ``codes × scale`` in the last bit for bit-sliced cells). That is what lets the ONNX
Runtime sign-off reproduce the PyTorch fast path chip by chip.

Metadata (``metadata_props``): ``ftdeploy.format`` (``ftdeploy-onnx/1``), ``ftdeploy.version``,
``ftdeploy.model``, ``ftdeploy.method`` and ``ftdeploy.content_sha256`` are plain text; every
other ``ftdeploy.*`` value is JSON: ``target``, ``profile`` (resolved, defaults filled in),
``mapping``, ``layers`` (ordered as :func:`models.deployed_layers`, the order of every
simulated chip's random stream), ``normalization``, ``classes``, ``data`` (the training split
record), ``schedule``, ``acc_pretrain``, ``acc_retrain``, ``sparsity``, ``equalization`` (the
record of ``ftdeploy equalize``, null for a model never equalised), ``training``, ``placement``
(the tile, row and column of every cell: :mod:`ftdeploy.placement`), ``digital`` (the parameters
the digital periphery holds instead: :func:`ftdeploy.models.digital_parameters`).

``ftdeploy.content_sha256`` is the SHA-256 of the model serialised deterministically with that
one property removed (:func:`content_hash`): it covers graph, initializers and all other
metadata, and the verifier recomputes it to refuse a file edited after export. It detects
corruption, not tampering: with ``--sign KEY`` the file also carries an Ed25519 signature
(``ftdeploy.signer``, ``ftdeploy.signature``: :mod:`ftdeploy.signing`), which only the key's
holder can make.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .chip import DeployedLayer, DeployedNetwork
from .errors import ExportError, FtdeployError
from .files import write_atomic
from .mapping import Mapping, crossbar_tiles
from .onnx_format import (FORMAT, HASH_KEY, INPUT_NAME, OUTPUT_NAME, PREFIX, TEXT_KEYS, cell_weight_name, content_hash,
                          read_metadata, zero_point_name)
from .placement import placement_for
from .profiles import BatchNormPlacement, ResolvedProfile, Target
from .models import digital_parameters
from .training.checkpoint import checkpoint_image_size, model_from_checkpoint

#: Parity of ONNX Runtime against PyTorch, on logits: |ort - torch| <= ATOL + RTOL * max|torch|.
#: The weights are bit-identical (see module docstring); only the float32 accumulation order of
#: convolutions differs (ONNX Runtime's MLAS vs PyTorch's kernels), a few ulp per dot product
#: compounding over the layers: measured <= 3e-7 of max|logit| on democnn for all three shipped
#: targets. 1e-4 leaves a >300x margin for other CPUs and deeper nets and still catches any
#: systematic decoding error (wrong scale, sign, offset or cell order). It would NOT catch a
#: single weight off by one code step (measured 0 to 1e-3 of max|logit|), so the tests also
#: compare the decoded weights with codes × scale bit for bit.
LOGITS_RTOL = 1e-4
LOGITS_ATOL = 1e-5

_REQUIRED_CKPT_KEYS = ("model", "num_classes", "state_dict", "normalization")


def export_onnx(ckpt: dict, resolved: ResolvedProfile, out: Path, *, image_size: int | None = None, check_parity: bool = True,
                allow_model_import: bool = False, sign_with=None) -> dict:
    """Export a loaded checkpoint (:func:`ftdeploy.training.checkpoint.load_checkpoint`) for ``resolved.target`` to ``out``.

    The file is checked (``onnx.checker`` full check and, with ``check_parity``, ONNX Runtime
    against PyTorch on a fixed random batch) and written atomically: on any failure nothing is
    left at ``out``. ``image_size``: the input's side (default: the one the checkpoint was
    trained at). Returns a summary: path, content hash, layers, cell and tile totals, the
    :class:`ftdeploy.placement.Placement` of every cell, and the parameters left digital.
    ``sign_with``: a :class:`ftdeploy.signing.SigningKey` that signs the file (``ftdeploy.signer``,
    ``ftdeploy.signature``). ``allow_model_import``: the user allowed the checkpoint's ``package.module:factory`` to be imported.
    Raises :class:`ExportError` (or ``ModelError`` for a checkpoint that does not fit)."""
    out = Path(out)
    _check_checkpoint(ckpt)
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the .onnx file to write")
    net = DeployedNetwork(model_from_checkpoint(ckpt, allow_import=allow_model_import), resolved.target)
    image_size = image_size or checkpoint_image_size(ckpt)
    digital = digital_parameters(net.model)
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    proto = _trace(net.model, example, fuse_batchnorm=resolved.target.batchnorm == BatchNormPlacement.fold)
    layer_records, decoders = [], []
    for layer in net.layers:
        record, nodes = _replace_weight(proto.graph, layer, net.mapping, resolved.target)
        layer_records.append(record)
        decoders.extend(nodes)
    _add_cell_constants(proto.graph, net.mapping)
    _prepend_nodes(proto.graph, decoders)
    _set_metadata(proto, _metadata(ckpt, resolved, net.mapping, layer_records, digital))
    if sign_with is not None:
        from .signing import sign_proto

        sign_proto(proto, sign_with)
    _run_checker(proto)
    if check_parity:
        _check_parity(proto, net.model, image_size)
    save_atomic(proto, out)
    cells = sum(r["tiles"]["cells"] for r in layer_records)
    return {"path": str(out), "content_sha256": read_metadata(proto)[HASH_KEY], "layers": layer_records,
            "mapping": net.mapping.describe(), "cell_names": list(net.mapping.cell_names), "cells": cells,
            "tiles": sum(r["tiles"]["tiles"] for r in layer_records),
            "placement": placement_for(layer_records, resolved.target, net.mapping.cells_per_weight),
            "signer": sign_with.fingerprint if sign_with is not None else None, "digital": digital,
            "weights_on_cells": sum(math.prod(r["weight_shape"]) for r in layer_records)}  # fmt: skip


# --- checkpoint and tracing ---------------------------------------------------------------------


def _check_checkpoint(ckpt: dict) -> None:
    if not isinstance(ckpt, dict):
        raise ExportError(f"checkpoint: expected a dict from ftdeploy train, found {type(ckpt).__name__}")
    missing = [k for k in _REQUIRED_CKPT_KEYS if k not in ckpt]
    if missing:
        raise ExportError(f"checkpoint: missing {', '.join(missing)} (was it written by ftdeploy train?)")


def _trace(model: torch.nn.Module, example: torch.Tensor, fuse_batchnorm: bool = True) -> onnx.ModelProto:
    """ONNX of ``model`` with input ``input`` [N,3,H,W] (dynamic N) and output ``logits``.

    The exporter's optimiser also fuses BatchNormalization into the preceding Conv/Gemm weights.
    When BN stays in the periphery (``fuse_batchnorm=False``) the cells must hold the unfused
    weights, so the graph is traced unoptimised and only its constants are folded (onnxscript's
    constant folding and dead-node removal, none of its rewrite rules): that removes the
    Shape/Expand/CastLike chains the tracer leaves and keeps every BatchNormalization node."""
    batch = torch.export.Dim("N")
    chatter = io.StringIO()  # the exporter prints progress lines even with verbose=False on some versions
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter):
            program = torch.onnx.export(
                model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamo=True, dynamic_shapes=({0: batch},), verbose=False, optimize=fuse_batchnorm,
            )  # fmt: skip
            proto = program.model_proto
            if not fuse_batchnorm:
                onnxscript.optimizer.fold_constants(proto)
                onnxscript.optimizer.remove_unused_nodes(proto)
    except FtdeployError:
        raise
    except Exception as exc:  # the exporter raises many types; the user needs the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"torch.onnx.export failed: {first}") from None
    return proto


# --- weights -> cells ---------------------------------------------------------------------------


def _offset_host(mapping: Mapping) -> tuple[int | None, int]:
    """(cell index whose DequantizeLinear zero point carries the mapping's offset, zero point),
    or (None, 0) when there is no offset or it fits no uint8 zero point (then an Add does it).

    A cell with coefficient k and zero point z contributes k·(level − z), i.e. offset −k·z."""
    if not mapping.offset:
        return None, 0
    for c, k in enumerate(mapping.coefficients):
        zp, rem = divmod(-mapping.offset, k)
        if rem == 0 and 0 <= zp <= 255:
            return c, zp
    return None, 0


def _add_cell_constants(graph: onnx.GraphProto, mapping: Mapping) -> None:
    """Shared scalars: each cell's |coefficient| (a DequantizeLinear scale) and zero point."""
    host, host_zp = _offset_host(mapping)
    for c, (cell, k) in enumerate(zip(mapping.cell_names, mapping.coefficients)):
        graph.initializer.append(numpy_helper.from_array(np.array(abs(k), np.float32), cell_weight_name(cell)))
        zp = host_zp if c == host else 0
        graph.initializer.append(numpy_helper.from_array(np.array(zp, np.uint8), zero_point_name(cell)))
    if host is None and mapping.offset:
        graph.initializer.append(numpy_helper.from_array(np.array(mapping.offset, np.float32), f"{PREFIX}offset"))


def _find_weight(graph: onnx.GraphProto, layer: DeployedLayer, expected: np.ndarray) -> tuple[onnx.TensorProto, bool]:
    """The initializer holding ``layer``'s weight, and whether it holds it transposed: by the
    exporter's usual name, else by exact value (exporters rename initializers between versions;
    the values are ours). A Linear layer applied to a sequence (a transformer's tokens) becomes a
    MatMul whose constant is the weight transposed. Layers already replaced are no longer
    initializers, so no weight is matched twice."""
    by_name = {init.name: init for init in graph.initializer}
    for name in (f"{layer.name}.weight", f"{layer.name.replace('.', '_')}_weight"):
        init = by_name.get(name)
        if init is not None and np.array_equal(numpy_helper.to_array(init), expected):
            return init, False
    candidates = [(expected, False)] + ([(expected.T, True)] if expected.ndim == 2 else [])
    for value, transposed in candidates:
        for init in graph.initializer:
            if tuple(init.dims) != value.shape or init.data_type != TensorProto.FLOAT:
                continue
            if np.array_equal(numpy_helper.to_array(init), value):
                return init, transposed
    raise ExportError(
        f"layer {layer.name!r}: its weight {list(expected.shape)} is not an initializer of the exported graph "
        "(transposed, reshaped, or shared with an identical layer: not supported)"
    )


def _replace_weight(graph: onnx.GraphProto, layer: DeployedLayer, mapping: Mapping, target: Target) -> tuple[dict, list]:
    """Swap one layer's float weight initializer for its cells; return its metadata record and
    the decoder nodes that rebuild the weight under the initializer's old name."""
    expected = (layer.codes.to(torch.float32) * layer.scale).numpy()  # as DeployedNetwork.clear()
    weight, transposed = _find_weight(graph, layer, expected)
    weight_name = weight.name
    graph.initializer.remove(weight)
    for i, value_info in enumerate(graph.input):  # old IR versions list initializers as inputs too
        if value_info.name == weight_name:
            del graph.input[i]
            break

    levels = layer.levels.cpu().numpy()
    if levels.min() < 0 or levels.max() > 255:
        raise ExportError(f"layer {layer.name!r}: cell levels outside 0..255 do not fit uint8 cells")
    cell_inits = [f"{layer.name}.cells.{cell}" for cell in mapping.cell_names]
    for c, name in enumerate(cell_inits):
        graph.initializer.append(numpy_helper.from_array(levels[c].astype(np.uint8), name))
    scale_name = f"{layer.name}.scale"
    graph.initializer.append(numpy_helper.from_array(layer.scale.cpu().numpy().astype(np.float32), scale_name))
    record = {
        "name": layer.name,
        "type": type(layer.module).__name__,
        "onnx_weight": weight_name,
        "cells": cell_inits,
        "scale": scale_name,
        "weight_shape": list(expected.shape),
        "cell_shape": list(levels.shape),
        "tiles": crossbar_tiles(tuple(expected.shape), target, mapping),
        "onnx_transposed": transposed,
    }
    return record, _decoder_nodes(layer.name, cell_inits, scale_name, weight_name, mapping, transposed)


def _decoder_nodes(layer: str, cell_inits: list[str], scale_name: str, weight_name: str, mapping: Mapping,
                   transposed: bool = False) -> list:  # fmt: skip
    """code = Σ ±DequantizeLinear(cell, |k|, zp) [+ offset]; weight = code · scale (then
    transposed, where the graph multiplies by the weight transposed: the cells keep the layer's
    own layout)."""
    nodes = []
    terms = []
    for cell, init in zip(mapping.cell_names, cell_inits):
        out = f"{layer}.decode.{cell}"
        nodes.append(helper.make_node("DequantizeLinear", [init, cell_weight_name(cell), zero_point_name(cell)], [out],
                                      name=f"{layer}/decode/{cell}"))  # fmt: skip
        terms.append(out)
    code = terms[0]
    if mapping.coefficients[0] < 0:
        nodes.append(helper.make_node("Neg", [code], [f"{layer}.code.0"], name=f"{layer}/code/0"))
        code = f"{layer}.code.0"
    for c in range(1, len(terms)):
        op = "Add" if mapping.coefficients[c] > 0 else "Sub"
        nodes.append(helper.make_node(op, [code, terms[c]], [f"{layer}.code.{c}"], name=f"{layer}/code/{c}"))
        code = f"{layer}.code.{c}"
    if mapping.offset and _offset_host(mapping)[0] is None:
        nodes.append(helper.make_node("Add", [code, f"{PREFIX}offset"], [f"{layer}.code"], name=f"{layer}/code/offset"))
        code = f"{layer}.code"
    if transposed:
        nodes.append(helper.make_node("Mul", [code, scale_name], [f"{layer}.decoded"], name=f"{layer}/weight"))
        nodes.append(helper.make_node("Transpose", [f"{layer}.decoded"], [weight_name], perm=[1, 0], name=f"{layer}/transpose"))
    else:
        nodes.append(helper.make_node("Mul", [code, scale_name], [weight_name], name=f"{layer}/weight"))
    return nodes


def _prepend_nodes(graph: onnx.GraphProto, nodes: list) -> None:
    """ONNX wants nodes in topological order; the decoders read only initializers, so they go first."""
    rest = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node]  # detached copies
    del graph.node[:]
    graph.node.extend(nodes + rest)


# --- metadata -----------------------------------------------------------------------------------


def _metadata(ckpt: dict, resolved: ResolvedProfile, mapping: Mapping, layers: list[dict],
              digital: list[dict]) -> dict[str, object]:  # fmt: skip
    norm = ckpt["normalization"]
    return {
        "format": FORMAT,
        "version": __version__,
        "target": resolved.target.model_dump(mode="json"),
        "profile": resolved.to_dict(),
        "mapping": {"name": mapping.name, "description": mapping.describe(), "cell_names": list(mapping.cell_names),
                    "coefficients": list(mapping.coefficients), "offset": int(mapping.offset),
                    "max_level": int(mapping.max_level)},  # fmt: skip
        "layers": layers,
        "digital": digital,
        "normalization": {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]},
        "classes": list(ckpt.get("classes") or [str(i) for i in range(int(ckpt["num_classes"]))]),
        "data": ckpt.get("data"),
        "model": str(ckpt["model"]),
        "method": str(ckpt.get("method", "unknown")),
        "schedule": list(ckpt.get("schedule") or []),
        "acc_pretrain": ckpt.get("acc_pretrain"),
        "acc_pretrain_images": ckpt.get("acc_pretrain_images"),
        "acc_retrain": ckpt.get("acc_retrain"),
        "sparsity": ckpt.get("sparsity"),
        "equalization": ckpt.get("equalization"),
        "training": {"profile": ckpt.get("profile"), "target": (ckpt.get("target") or {}).get("name"),
                     "epochs": ckpt.get("epochs"), "epochs_done": ckpt.get("epochs_done"), "seed": ckpt.get("seed"),
                     "split": ckpt.get("split")},  # fmt: skip
        "placement": placement_for(layers, resolved.target, mapping.cells_per_weight).to_record(),
    }


def _set_metadata(proto: onnx.ModelProto, meta: dict[str, object]) -> None:
    """Replace any ftdeploy.* properties by ``meta``, sorted by key, then add the content hash."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    entries = {PREFIX + k: v if PREFIX + k in TEXT_KEYS else json.dumps(v, ensure_ascii=False) for k, v in meta.items()}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, dict(keep) | dict(sorted(entries.items())))
    onnx.helper.set_model_props(proto, {**read_metadata(proto), HASH_KEY: content_hash(proto)})


# --- checks and writing -------------------------------------------------------------------------


def _run_checker(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise ExportError(f"exported graph fails the ONNX checker: {first}") from None


def _check_parity(proto: onnx.ModelProto, model: torch.nn.Module, image_size: int) -> None:
    """Refuse to write a file whose ONNX Runtime logits disagree with PyTorch's."""
    import onnxruntime as ort

    x = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    worst = float(np.abs(got - expected).max())
    allowed = LOGITS_ATOL + LOGITS_RTOL * float(np.abs(expected).max())
    if not worst <= allowed:
        raise ExportError(f"ONNX Runtime logits differ from PyTorch by {worst:.3g} (allowed {allowed:.3g})")


def save_atomic(proto: onnx.ModelProto, out: Path) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    write_atomic(out, proto.SerializeToString(), ExportError)
