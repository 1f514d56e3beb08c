"""The ONNX Runtime backend of the chip-population evaluator: stock ONNX Runtime runs the
exported file, and any chip's levels are fed in place of the programmed cells.

One InferenceSession serves every chip: the ``<layer>.cells.<cell>`` initializers are also
declared as graph inputs in an in-memory copy, so a feed overrides them (ONNX's rule for
initializers listed as inputs) and a chip costs one feed of its levels, not a new session.
Chips whose levels stay integer (stuck-at faults) are fed as uint8 to the file's own decoding;
chips with continuous conductances (variation, drift, read noise) as float32 levels to the
analog copy of the graph (:func:`ftdeploy.onnx_format.with_analog_cell_inputs`), made on first
use.

It runs on the CPU unless asked for a GPU (``device``, verify's ``--device``): ONNX Runtime's CUDA
execution provider, from the ``onnxruntime-gpu`` package (``pip install 'ftdeploy[gpu]'``).
:func:`execution_providers` says which providers a device name means, and refuses in one line a
GPU that this ONNX Runtime cannot use.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, VerifyError
from .exported import ExportedModel
from .onnx_format import INPUT_NAME, OUTPUT_NAME, with_analog_cell_inputs, with_cell_inputs
from .population import Backend, available_cores

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
#: What ``--device`` takes on the ONNX Runtime backend.
DEVICES = "auto, cpu or cuda[:N]"

#: Images per ONNX Runtime call for 32x32 inputs: large batches keep both cores busy inside each
#: convolution and amortise the per-call decode of the cells (ResNet-20, 5,000 images, 2 loaded
#: cores: 8.2 / 7.5 / 6.7 s per chip at 250 / 500 / 1000). Larger images get proportionally
#: fewer, so activation memory stays near ResNet-20's ~0.5 GB at 1000.
DEFAULT_BATCH = 1000
_DEFAULT_BATCH_PIXELS = DEFAULT_BATCH * 32 * 32


def default_batch_size(image_shape: tuple[int, int, int]) -> int:
    """Images per run for inputs of (channels, height, width)."""
    _, height, width = image_shape
    return max(1, min(DEFAULT_BATCH, _DEFAULT_BATCH_PIXELS // (height * width)))


class OnnxBackend(Backend):
    """An export on normalised float32 images ``x`` (N, C, H, W) with int64 labels ``y``."""

    def __init__(self, export: ExportedModel, x: np.ndarray, y: np.ndarray, threads: int | None = None,
                 batch_size: int | None = None, device: str | None = None):  # fmt: skip
        self.export = export
        self.device = device
        self.providers, _ = execution_providers(device)
        self.x, self.y = x, y
        self.threads = threads or available_cores()
        self.batch_size = batch_size or default_batch_size(export.image_shape)
        self.programmed = export.levels
        self.cells = export.cells
        self._sessions: dict[bool, object] = {}
        self._session = self._session_for(analog=False)
        self._feeds: dict[str, np.ndarray] = {}

    @property
    def n_images(self) -> int:
        return len(self.y)

    def _session_for(self, analog: bool):
        if analog not in self._sessions:
            import onnxruntime as ort

            derive = with_analog_cell_inputs if analog else with_cell_inputs
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1  # a chain of convolutions: parallelism lives inside each op
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.log_severity_level = 3  # ORT warns that overridable initializers block constant folding: intended
            proto = derive(self.export.proto, self.export.layers)
            session = _session(self.export, proto, opts, self.providers)
            # ONNX Runtime falls back to the CPU, with a log line only, when the CUDA provider is
            # installed but cannot start (no driver, mismatched CUDA libraries): refuse instead of
            # signing off on another device than the one asked for.
            if on_gpu(self.providers) and session.get_providers()[0] != CUDA:
                raise VerifyError(f"--device {self.device}: ONNX Runtime could not start its CUDA execution provider "
                                  "(its CUDA or cuDNN libraries do not load on this machine); use --device cpu")  # fmt: skip
            self._sessions[analog] = session
        return self._sessions[analog]

    def _load(self, levels: list[np.ndarray] | None) -> None:
        if levels is None:
            self._session, self._feeds = self._session_for(analog=False), {}
            return
        analog = not all(np.issubdtype(lv.dtype, np.integer) for lv in levels)
        dtype = np.float32 if analog else np.uint8
        self._session = self._session_for(analog)
        self._feeds = {name: np.ascontiguousarray(lv[c], dtype=dtype)
                       for layer, lv in zip(self.export.layers, levels) for c, name in enumerate(layer["cells"])}  # fmt: skip

    def _correct(self, start: int, stop: int) -> int:
        logits = self._session.run([OUTPUT_NAME], {INPUT_NAME: self.x[start:stop], **self._feeds})[0]
        return int((logits.argmax(1) == self.y[start:stop]).sum())


def _session(export: ExportedModel, proto, opts, providers: list):
    """An ONNX Runtime session of ``proto``; a graph the checks at load passed but ONNX Runtime
    still refuses (an operator it lacks, types that do not fit) is one line naming the file."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=providers)
    except Exception as exc:  # ORT's pybind errors (Fail, InvalidGraph, NotImplemented, ...) share no public base
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise VerifyError(f"{export.path}: graph: ONNX Runtime cannot run it: {reason[:300]}") from None



def execution_providers(device: str | None) -> tuple[list, str | None]:
    """ONNX Runtime's execution providers for ``device`` (None or cpu: the CPU; cuda or cuda:N:
    that GPU; auto: CUDA where ONNX Runtime has it, else the CPU), and for auto on a machine
    without it, a note saying it ran on the CPU. A CUDA device this ONNX Runtime cannot use is
    one line (ConfigError, exit 2), before any data loads."""
    name = "cpu" if device is None else device.strip().lower()
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"--device: expected {DEVICES}, found {device!r}")
    if kind == "cpu":
        return [CPU], None
    import onnxruntime as ort

    has_cuda = CUDA in ort.get_available_providers()
    if kind == "auto":
        if has_cuda:
            return [(CUDA, {"device_id": 0}), CPU], None
        return [CPU], "--device auto: ONNX Runtime here has no CUDA execution provider; running on the CPU"
    if not has_cuda:
        raise ConfigError(f"--device: {device} asked for, but ONNX Runtime here has no CUDA execution provider (it needs "
                          "onnxruntime-gpu, pip install 'ftdeploy[gpu]', and a CUDA GPU); use cpu or auto")  # fmt: skip
    return [(CUDA, {"device_id": int(index or 0)}), CPU], None


def on_gpu(providers: list) -> bool:
    """True when ``providers`` put the network on a GPU."""
    return providers[0] != CPU
