"""Sign-off: an exported ONNX file, run by stock ONNX Runtime on simulated faulty chips, judged
against a profile's acceptance limits.

Only the ONNX file is needed: the cell levels, the mapping, the normalisation and the layer
order all come from its metadata (see :mod:`ftdeploy.export`). One InferenceSession serves every
chip: the ``<layer>.cells.<cell>`` initializers are also declared as graph inputs in an
in-memory copy, so a feed overrides them (ONNX's rule for initializers listed as inputs) and a
chip costs one feed of faulty levels, not a new session.

Chip k at rate P and seed S draws its cell states from ``faults.chip_rng(S, P, k)`` over the
layers in metadata order, exactly as :meth:`chip.DeployedNetwork.chip_accuracies` does, and the
decoded weights are bit-identical to PyTorch's (export docstring), so the ONNX Runtime sign-off
and the PyTorch fast path see the same chips and agree chip by chip.

Figures (accuracy in %):
  Acc_pretrain  from the file's metadata (measured at training time); when absent, Acc_retrain
  Acc_retrain   fault-free accuracy of the file, measured here on the evaluation images
  Acc_defect    mean over chips at each rate, with sample std and a 95 % Student-t CI
  SS            Acc_retrain / (Acc_pretrain − Acc_defect); +inf when Acc_defect >= Acc_pretrain
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from . import __version__
from .errors import ConfigError, VerifyError
from .export import FORMAT, HASH_KEY, INPUT_NAME, OUTPUT_NAME, PREFIX, TEXT_KEYS, content_hash, read_metadata
from .faults import StuckAt, chip_rng, draw_chip_states
from .files import sha256_file
from .mapping import Mapping, make_mapping
from .profiles import ResolvedProfile, Target

REPORT_SCHEMA = "ftdeploy-report/1"

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

#: Two-sided 95 % Student-t quantiles t(0.975, df). Exact for df <= 30; between table rows the
#: quantile is interpolated linearly in 1/df (error < 1e-4 against scipy); df -> inf: normal.
_T975 = {
    1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912, 7: 2.364624,
    8: 2.306004, 9: 2.262157, 10: 2.228139, 11: 2.200985, 12: 2.178813, 13: 2.160369, 14: 2.144787,
    15: 2.131450, 16: 2.119905, 17: 2.109816, 18: 2.100922, 19: 2.093024, 20: 2.085963, 21: 2.079614,
    22: 2.073873, 23: 2.068658, 24: 2.063899, 25: 2.059539, 26: 2.055529, 27: 2.051831, 28: 2.048407,
    29: 2.045230, 30: 2.042272, 40: 2.021075, 50: 2.008559, 60: 2.000298, 80: 1.990063, 100: 1.983972,
    120: 1.979930, 200: 1.971896, 500: 1.964720, 1000: 1.962339,
}  # fmt: skip
_Z975 = 1.959964

NO_DEGRADATION = "no degradation: Acc_defect >= Acc_pretrain"


def t_quantile_975(df: int) -> float:
    """t(0.975, df) of Student's t distribution, for a two-sided 95 % confidence interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, found {df}")
    if df in _T975:
        return _T975[df]
    rows = sorted(_T975)
    below = max(r for r in rows if r < df)
    above = next((r for r in rows if r > df), None)
    # Interpolate linearly in 1/df, where t is nearly linear; past the table, towards the normal.
    x0, t0 = 1.0 / below, _T975[below]
    x1, t1 = (1.0 / above, _T975[above]) if above else (0.0, _Z975)
    return t0 + (x0 - 1.0 / df) / (x0 - x1) * (t1 - t0)


# --- the exported file --------------------------------------------------------------------------


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


# --- running chips ------------------------------------------------------------------------------


class ChipRunner:
    """One ONNX Runtime session over an export; any chip's cell levels can be fed per call."""

    def __init__(self, export: ExportedModel, threads: int | None = None, batch_size: int | None = None):
        import onnxruntime as ort

        self.export = export
        self.batch_size = batch_size or default_batch_size(export.image_shape)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or _available_cores()
        opts.inter_op_num_threads = 1  # a chain of convolutions: parallelism lives inside each op
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # ORT warns that overridable initializers block constant folding: intended
        self.session = ort.InferenceSession(_with_cell_inputs(export).SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])  # fmt: skip
        self.cell_names = [name for layer in export.layers for name in layer["cells"]]

    def feeds_for(self, levels: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds that load one chip: per-layer levels (cells, ...) -> one array per cell input."""
        feeds = {}
        for layer, lv in zip(self.export.layers, levels):
            for c, name in enumerate(layer["cells"]):
                feeds[name] = np.ascontiguousarray(lv[c], dtype=np.uint8)
        return feeds

    def accuracy(self, x: np.ndarray, y: np.ndarray, chip_feeds: dict[str, np.ndarray] | None = None) -> float:
        """Top-1 accuracy in percent of normalised images ``x``; without feeds, the programmed chip."""
        correct = 0
        for start in range(0, len(y), self.batch_size):
            feeds = {INPUT_NAME: x[start : start + self.batch_size], **(chip_feeds or {})}
            logits = self.session.run([OUTPUT_NAME], feeds)[0]
            correct += int((logits.argmax(1) == y[start : start + self.batch_size]).sum())
        return 100.0 * correct / len(y)  # the same expression as chip.DeployedNetwork.accuracy

    def chip_accuracies(self, nonideality: StuckAt, rate: float, chips: int, seed: int, x, y,
                        on_chip: Callable[[], None] | None = None) -> list[float]:  # fmt: skip
        """Accuracy of chips 0..chips-1 at one rate (the chips of chip.DeployedNetwork.chip_accuracies)."""
        if nonideality.is_identity:  # rate 0: every chip is the programmed one, exactly
            clean = self.accuracy(x, y)
            for _ in range(chips):
                if on_chip:
                    on_chip()
            return [clean] * chips
        accs = []
        max_level = self.export.mapping.max_level
        for chip in range(chips):
            states = draw_chip_states(nonideality, self.export.cell_shapes, chip_rng(seed, rate, chip))
            faulty = [nonideality.apply(lv, st, max_level) for lv, st in zip(self.export.levels, states)]
            accs.append(self.accuracy(x, y, self.feeds_for(faulty)))
            if on_chip:
                on_chip()
        return accs


def _with_cell_inputs(export: ExportedModel) -> onnx.ModelProto:
    """An in-memory copy whose cell initializers are also graph inputs, so feeds override them."""
    proto = onnx.ModelProto()
    proto.CopyFrom(export.proto)
    for layer in export.layers:
        for name in layer["cells"]:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, layer["weight_shape"]))
    return proto


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --- evaluation data ----------------------------------------------------------------------------


@dataclass
class EvalData:
    """Normalised float32 images and int64 labels the chips are judged on, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    record: dict


def evaluation_data(export: ExportedModel, spec: str | None = None, val_split: int | None = None,
                    max_images: int | None = None) -> EvalData:  # fmt: skip
    """The validation part of ``spec`` (default: the embedded dataset), preprocessed with the
    file's normalisation; at most ``max_images``, a class-stratified subset (seed 0) in the
    dataset's order, because validation parts may be sorted by class."""
    from .data import SPLIT_SEED, load_validation, normalize_numpy

    _, height, width = export.image_shape
    if height != width:  # data.load_data resizes to square images only
        raise VerifyError(f"{export.path}: input is {height}x{width}; only square images are supported")
    bundle = load_validation(spec, val_split, image_size=height)  # a ValidationSet: training images stay undecoded
    classes = export.meta["classes"]
    if list(bundle.classes) != list(classes):
        raise VerifyError(f"data {bundle.spec}: classes {_short(bundle.classes)} differ from the model's {_short(classes)}")
    x, y = bundle.val_x.numpy(), bundle.val_y.numpy().astype(np.int64)
    if tuple(x.shape[1:]) != export.image_shape:
        raise VerifyError(f"data {bundle.spec}: images are {list(x.shape[1:])}, the model takes {list(export.image_shape)}")
    available = len(y)
    keep = subset_indices(y, max_images)
    if keep is not None:
        x, y = x[keep], y[keep]
    norm = export.meta["normalization"]
    record = {"spec": bundle.spec, "val_split": bundle.val_split, "split_seed": SPLIT_SEED, "images": int(len(y)),
              "val_images": int(available), "max_images": max_images, "description": bundle.description,
              "training_record": export.meta.get("data")}  # fmt: skip
    return EvalData(normalize_numpy(x, norm["mean"], norm["std"]), y, record)


def subset_indices(labels: np.ndarray, max_images: int | None) -> np.ndarray | None:
    """Indices of the evaluation subset: at most ``max_images``, as equal per class as possible
    (data.stratified_split, seed 0), in the dataset's order; None when every image is used."""
    from .data import stratified_split

    if subset_size(len(labels), max_images) == len(labels):
        return None
    return stratified_split(labels, max_images)[1]


def subset_size(n_images: int, max_images: int | None) -> int:
    """How many images :func:`subset_indices` keeps of ``n_images``, without drawing them."""
    return n_images if max_images is None else min(n_images, max_images)


def _short(names: list[str]) -> str:
    return f"[{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}] ({len(names)})"


# --- figures and verdicts -----------------------------------------------------------------------


def stability_score(acc_retrain: float, acc_pretrain: float, acc_defect: float) -> float:
    """SS = Acc_retrain / (Acc_pretrain − Acc_defect); +inf when the chips lose nothing."""
    drop = acc_pretrain - acc_defect
    return math.inf if drop <= 0 else acc_retrain / drop


def summarize_chips(accs: list[float]) -> dict:
    """Mean, sample std and 95 % Student-t CI of per-chip accuracies (std and CI need 2 chips)."""
    n = len(accs)
    mean = statistics.fmean(accs)
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(accs)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half]}


@dataclass
class Check:
    """One acceptance limit: the measured value next to its limit, the outcome and why."""

    name: str
    rate: float | None  # None: a fault-free limit
    value: float | None  # None only for an undefined (infinite) stability score
    limit: float
    comparison: str  # ">=" or "<=": what must hold for PASSED
    passed: bool
    reason: str
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    """Every check of a sign-off; passed when all pass (and when no limit is set)."""

    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        failed = sum(not c.passed for c in self.checks)
        if not self.checks:
            summary = "no acceptance limits set"
        elif failed:
            summary = f"{failed} of {len(self.checks)} limits failed"
        else:
            summary = f"{len(self.checks)} of {len(self.checks)} limits met"
        return {"passed": self.passed, "summary": summary, "checks": [c.to_dict() for c in self.checks]}


def _at_least(name, rate, value, limit, what) -> Check:
    ok = value >= limit
    reason = f"{what} {value:.2f} {'meets' if ok else 'is below'} the minimum {limit:.2f}"
    return Check(name, rate, value, limit, ">=", ok, reason)


def _at_most(name, rate, value, limit, what) -> Check:
    ok = value <= limit
    reason = f"{what} {value:.2f} {'is within' if ok else 'exceeds'} the maximum {limit:.2f}"
    return Check(name, rate, value, limit, "<=", ok, reason)


def judge(figures: dict, resolved: ResolvedProfile) -> Verdict:
    """Apply the profile's limits (signoff.min_acc_retrain_pct and each acceptance entry) to
    figures as :func:`verify_onnx` reports them."""
    signoff = resolved.profile.signoff
    verdict = Verdict()
    if signoff.min_acc_retrain_pct is not None:
        verdict.checks.append(_at_least("min_acc_retrain_pct", None, figures["acc_retrain"], signoff.min_acc_retrain_pct, "Acc_retrain"))  # fmt: skip
    by_rate = {r["rate"]: r for r in figures["rates"]}
    for lim in signoff.acceptance:
        r = by_rate[lim.rate]
        for name, limit in lim.limits().items():
            verdict.checks.append(_check_one(name, lim.rate, limit, r))
    return verdict


def _check_one(name: str, rate: float, limit: float, r: dict) -> Check:
    if name == "min_acc_defect_pct":
        return _at_least(name, rate, r["acc_defect_mean"], limit, "mean Acc_defect")
    if name == "min_acc_defect_lower_ci_pct":
        return _at_least(name, rate, r["acc_defect_ci95"][0], limit, "lower 95 % CI bound of Acc_defect")
    if name == "max_acc_drop_pct":
        return _at_most(name, rate, r["acc_drop"], limit, "Acc_pretrain − Acc_defect")
    if name == "min_stability":
        if r["stability"] is None:  # +inf: the chips lose nothing, any minimum is met
            return Check(name, rate, None, limit, ">=", True, f"stability score is +inf ({NO_DEGRADATION})", NO_DEGRADATION)
        return _at_least(name, rate, r["stability"], limit, "stability score")
    raise ConfigError(f"acceptance: unknown limit {name!r}")


# --- the sign-off -------------------------------------------------------------------------------


def verify_onnx(
    onnx_path: str | Path,
    resolved: ResolvedProfile,
    data_spec: str | None = None,
    chips: int | None = None,
    seed: int | None = None,
    *,
    val_split: int | None = None,
    max_images: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    progress=None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Sign off an ONNX export on simulated chips; return the report (a JSON-ready dict whose
    ``verdict.passed`` says whether every limit holds). ``chips``, ``seed`` and ``max_images``
    default to the profile's sign-off; ``batch_size`` (images per ONNX Runtime call) to
    :func:`default_batch_size`; ``threads`` (intra-op) to the cores this process may use.
    ``progress``: a rich Progress (one bar over all chips);
    ``log``: receives one plain line per rate. Raises ConfigError / VerifyError / DataError on
    bad input, before any chip runs."""
    signoff = resolved.profile.signoff
    chips = signoff.chips if chips is None else chips
    seed = signoff.seed if seed is None else seed
    max_images = signoff.max_images if max_images is None else max_images
    _check_run_options(resolved, chips, seed, max_images, batch_size)
    export = load_export(onnx_path)
    _check_same_target(export, resolved)
    data = evaluation_data(export, data_spec, val_split, max_images)

    runner = ChipRunner(export, threads, batch_size)
    t0 = time.perf_counter()
    acc_retrain = runner.accuracy(data.x, data.y)
    notes = []
    acc_pretrain = export.meta.get("acc_pretrain")
    pretrain_source = "file metadata (measured at training time on the training validation split)"
    if acc_pretrain is None:
        acc_pretrain = acc_retrain
        pretrain_source = "Acc_retrain (the file records no Acc_pretrain)"
        notes.append("The file records no Acc_pretrain; Acc_retrain is used in its place for drops and stability scores.")
    _say(log, f"Acc_retrain {acc_retrain:.2f} % on {len(data.y)} images (fault-free), Acc_pretrain {acc_pretrain:.2f} %")

    task = progress.add_task("chips", total=chips * len(signoff.rates)) if progress else None
    tick = (lambda: progress.advance(task)) if progress else None
    rates = []
    for rate in signoff.rates:
        t_rate = time.perf_counter()
        nonideality = StuckAt.from_total(rate, resolved.profile.faults.split)
        accs = runner.chip_accuracies(nonideality, rate, chips, seed, data.x, data.y, on_chip=tick)
        rates.append(rate_figures(rate, nonideality, accs, acc_pretrain, acc_retrain))
        _say(log, f"rate {rate:g}: Acc_defect {rates[-1]['acc_defect_mean']:.2f} % over {chips} chips "
                  f"({time.perf_counter() - t_rate:.1f} s)")  # fmt: skip
    _say(log, f"{chips * len(signoff.rates)} chips in {time.perf_counter() - t0:.1f} s")
    if any(r["stability"] is None for r in rates):
        notes.append(f"A stability score of +inf (null in JSON) means {NO_DEGRADATION}; SS is undefined there, "
                     "and any min_stability limit counts as met.")  # fmt: skip
    figures = {"acc_pretrain": acc_pretrain, "acc_pretrain_source": pretrain_source, "acc_retrain": acc_retrain, "rates": rates}
    verdict = judge(figures, resolved)
    return _report(export, resolved, data, chips, seed, figures, verdict, notes)


def _say(log, line: str) -> None:
    if log:
        log(line)


def check_chip_counts(chips: int, max_images: int | None) -> None:
    """Chips per rate and images to measure on, as sign-off and the sweep both take them."""
    if chips < 1:
        raise ConfigError(f"--chips: expected at least 1, found {chips}")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"--max-images: expected at least 1, found {max_images}")


def _check_run_options(resolved: ResolvedProfile, chips: int, seed: int, max_images: int | None, batch_size: int | None) -> None:
    check_chip_counts(chips, max_images)
    if seed < 0:
        raise ConfigError(f"--seed: expected a non-negative integer, found {seed}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size: expected at least 1, found {batch_size}")
    needs_ci = [lim.rate for lim in resolved.profile.signoff.acceptance if lim.min_acc_defect_lower_ci_pct is not None]
    if needs_ci and chips < 2:
        raise ConfigError(f"{resolved.profile_path}: min_acc_defect_lower_ci_pct needs a confidence interval: use --chips 2 or more")


def _check_same_target(export: ExportedModel, resolved: ResolvedProfile) -> None:
    """The profile's chips must be the chips the file was exported for (descriptions aside)."""
    mine = resolved.target.model_dump(mode="json", exclude={"description"})
    theirs = export.target.model_dump(mode="json", exclude={"description"})
    if mine != theirs:
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise VerifyError(f"{export.path}: exported for target {export.target.name!r}, but profile "
                          f"{resolved.profile.name!r} uses {resolved.target.name!r} (differs in {', '.join(differ)}); "
                          "export with this profile or verify with the export's")  # fmt: skip


def rate_figures(rate: float, nonideality: StuckAt, accs: list[float], acc_pretrain: float, acc_retrain: float) -> dict:
    """One test rate's figures as a report gives them and :func:`judge` reads them, from the
    accuracy (%) of every chip."""
    stats = summarize_chips(accs)
    ss = stability_score(acc_retrain, acc_pretrain, stats["mean"])
    return {
        "rate": rate,
        "stuck_off": nonideality.stuck_off,
        "stuck_on": nonideality.stuck_on,
        "chips": len(accs),
        "acc_defect_mean": stats["mean"],
        "acc_defect_std": stats["std"],
        "acc_defect_ci95": stats["ci95"],
        "acc_drop": acc_pretrain - stats["mean"],
        "stability": None if math.isinf(ss) else ss,
        "stability_note": NO_DEGRADATION if math.isinf(ss) else None,
        "chip_accuracies": accs,
    }


def _report(export, resolved, data, chips, seed, figures, verdict, notes) -> dict:
    """The report: everything needed to reproduce and audit the sign-off, no timestamps (same
    inputs and seed give a byte-identical report.json)."""
    import onnxruntime as ort

    meta = export.meta
    return {
        "schema": REPORT_SCHEMA,
        "tool": {"name": "ftdeploy", "version": __version__, "onnxruntime": ort.__version__},
        "model": {"file": str(export.path), "sha256": sha256_file(export.path), "content_sha256": meta.get("content_sha256"),
                  "format": meta.get("format"), "exported_by": meta.get("version"), "model": meta.get("model"),
                  "method": meta.get("method"), "schedule": meta.get("schedule"), "sparsity": meta.get("sparsity"),
                  "equalization": meta.get("equalization"), "training": meta.get("training"), "mapping": meta["mapping"]["description"],
                  "layers": len(export.layers), "cells": sum(int(np.prod(s)) for s in export.cell_shapes)},  # fmt: skip
        "profile": {"name": resolved.profile.name, "file": str(resolved.profile_path), "sha256": sha256_file(resolved.profile_path),
                    "extends": [{"file": str(b), "sha256": sha256_file(b)} for b in resolved.base_paths],
                    "target": resolved.target.name, "target_file": str(resolved.target_path),
                    "target_sha256": sha256_file(resolved.target_path), "resolved": resolved.to_dict()},  # fmt: skip
        "data": data.record,
        "signoff": {"seed": seed, "chips": chips, "rates": [r["rate"] for r in figures["rates"]],
                    "split": list(resolved.profile.faults.split),
                    "ci": "95 % two-sided Student t: mean ± t(0.975, chips−1)·std/√chips, std with chips−1"},  # fmt: skip
        "figures": figures,
        "verdict": verdict.to_dict(),
        "notes": notes,
    }
