"""Model registry, CIFAR ResNets, and the graph helpers that find what lands on crossbars.

Names resolve in order: a registered name (``resnet20``), ``tv:NAME`` for a torchvision model,
or ``package.module:factory`` for a user's own model. A name read from a file (a checkpoint, an
ONNX export) goes through :func:`model_from_file_name`, which imports a ``package.module:factory``
only when the caller says the user allowed it: a data file never runs code by naming it. Every Conv2d and Linear layer is a
*deployed layer*: its weights live in crossbar cells (an attention block's fused input projection
is made one: :class:`CrossbarMultiheadAttention`). A BatchNorm that directly follows a conv
is folded into it for deployment, as the chip computes with fixed statistics.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from fnmatch import fnmatch
from typing import Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import ModelError
from .files import reason_line

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``fn`` creatable by its name."""
    _REGISTRY[fn.__name__] = fn
    _DESCRIPTIONS[fn.__name__] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    return fn


def list_models(pattern: str = "*") -> list[tuple[str, str]]:
    return [(n, _DESCRIPTIONS[n]) for n in sorted(_REGISTRY) if fnmatch(n, pattern)]


#: The command-line option that lets a file's ``package.module:factory`` be imported.
TRUST_MODEL_CODE = "--trust-model-code"


def imports_code(name: str) -> bool:
    """Whether building model ``name`` would import a module: a ``package.module:factory``."""
    return name not in _REGISTRY and not name.startswith("tv:") and ":" in name


def check_model_code_allowed(name: str, source: str, allow_import: bool) -> None:
    """Refuse a ``package.module:factory`` read from ``source`` unless the user allowed imports.

    Importing a module runs its code, so a checkpoint or ONNX file that names one could run
    anything on the machine that opens it; only the registry and torchvision are safe to
    resolve from a file's say-so."""
    if imports_code(name) and not allow_import:
        raise ModelError(f"{source}: model factory {name!r} would import and run code from module "
                         f"{name.partition(':')[0]!r}; ftdeploy imports a model's code only when you name it: give "
                         f"{TRUST_MODEL_CODE} (or --model {name} where the command takes one) if you trust this file")  # fmt: skip


def model_from_file_name(name: str, source: str, *, allow_import: bool, num_classes: int = 10,
                         image_size: int | None = None) -> nn.Module:  # fmt: skip
    """The model a file names (``source``, said in errors): every checkpoint's and export's model
    string becomes a model here. ``allow_import``: the user allowed a ``package.module:factory``
    (:data:`TRUST_MODEL_CODE`); without it only registry names and ``tv:NAME`` resolve."""
    check_model_code_allowed(name, source, allow_import)
    return create_model(name, num_classes=num_classes, image_size=image_size)


def create_model(name: str, num_classes: int = 10, image_size: int | None = None, **kwargs) -> nn.Module:
    """Build a model by registry name, ``tv:NAME`` or ``package.module:factory``: a name the user
    typed (a file's names go through :func:`model_from_file_name`). ``image_size``: the side of
    its input images, given to the models whose shape depends on it (torchvision's vision
    transformers, whose position embedding has one entry per patch); the others ignore it."""
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes=num_classes, **kwargs)
    if name.startswith("tv:"):
        import torchvision.models as tvm

        tv_name = name[3:]
        if tv_name not in tvm.list_models():
            raise ModelError(f"model {name!r}: torchvision has no model {tv_name!r} (see torchvision.models.list_models())")
        if image_size is not None and takes_image_size(name):
            kwargs["image_size"] = image_size
        try:
            model = tvm.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
        except (ValueError, TypeError, AssertionError) as exc:  # e.g. an image size the patches do not divide
            raise ModelError(f"model {name!r}: torchvision cannot build it{_for_size(image_size)}: {reason_line(exc)}") from None
        return attention_projections_as_layers(model)
    if ":" in name:
        factory = _user_factory(name)
        try:
            model = factory(num_classes=num_classes, **kwargs)
        except Exception as exc:  # nor is the factory ours
            raise ModelError(f"model {name!r}: factory raised {type(exc).__name__}: {reason_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"model {name!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
        return attention_projections_as_layers(model)
    known = ", ".join(sorted(_REGISTRY))
    raise ModelError(f"model {name!r}: unknown; use one of {known}, tv:NAME (torchvision) or package.module:factory")


def takes_image_size(name: str) -> bool:
    """Whether torchvision model ``tv:NAME`` is built for one input size (a vision transformer:
    one position embedding per patch); convolutional models take any size."""
    if not name.startswith("tv:"):
        return False
    import torchvision.models as tvm

    return tvm.get_model_builder(name[3:]).__module__.endswith(".vision_transformer")


def _for_size(image_size: int | None) -> str:
    return f" for {image_size}x{image_size} images" if image_size is not None else ""


def _user_factory(name: str) -> Callable[..., nn.Module]:
    """The function ``package.module:factory`` names, its module imported; each way that fails is
    one line saying what to fix (the module not on the path, a module it needs missing, the
    module's own error, no such function in it)."""
    module_name, _, attr = name.partition(":")
    if not module_name or module_name.startswith(".") or not attr:
        raise ModelError(f"model {name!r}: expected package.module:factory (a module's full dotted name, a colon, "
                         "a function in it)")  # fmt: skip
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name.split(".")[0]:  # the module itself is not on the path
            raise ModelError(f"model {name!r}: cannot import module {module_name!r} ({exc}); is its folder on PYTHONPATH? "
                             f"set PYTHONPATH to the folder that holds {missing}/ (or {missing}.py): PYTHONPATH=. when "
                             "run from there") from None  # fmt: skip
        if module_name == missing or module_name.startswith(missing + "."):  # a package found, without this module
            parent = sys.modules.get(missing.rpartition(".")[0])
            where = f" (the package imported is {getattr(parent, '__file__', None) or parent})" if parent else ""
            raise ModelError(f"model {name!r}: cannot import module {module_name!r} ({exc}){where}; is its folder on "
                             "PYTHONPATH, ahead of any other package of the same name?") from None  # fmt: skip
        raise ModelError(f"model {name!r}: module {module_name!r} failed to import: {exc}, which it imports; install it, "
                         "or put its folder on PYTHONPATH") from None  # fmt: skip
    except Exception as exc:  # the user's module may fail to import in any way
        raise ModelError(f"model {name!r}: module {module_name!r} failed to import: {type(exc).__name__}: "
                         f"{reason_line(exc)}") from None  # fmt: skip
    if not hasattr(module, attr):
        close = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f"; did you mean {module_name}:{close[0]}?" if close else ""
        raise ModelError(f"model {name!r}: module {module_name!r} ({getattr(module, '__file__', None) or 'built in'}) "
                         f"has no attribute {attr!r}{hint}")  # fmt: skip
    factory = getattr(module, attr)
    if not callable(factory):
        raise ModelError(f"model {name!r}: {module_name}.{attr} is not a function (type {type(factory).__name__}); expected "
                         "a factory fn(num_classes=...) -> torch.nn.Module")  # fmt: skip
    return factory


# --- CIFAR ResNets (He et al. 2016, option A shortcuts: 16-32-64 channels, 6n+2 layers) -----


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: parameter-free shortcut (subsample + zero-pad channels), as in the paper
        # that defined ResNet-20..56; no extra crossbar cells.
        self.pad = planes - in_planes
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2, found {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register_model
def resnet20(num_classes: int = 10, **kw) -> nn.Module:
    """CIFAR ResNet-20 (0.27 M weights), the paper's CIFAR-10 model."""
    return CifarResNet(20, num_classes, **kw)


@register_model
def resnet32(num_classes: int = 10, **kw) -> nn.Module:
    """CIFAR ResNet-32 (0.46 M weights), the paper's CIFAR-100 model."""
    return CifarResNet(32, num_classes, **kw)


@register_model
def resnet44(num_classes: int = 10, **kw) -> nn.Module:
    """CIFAR ResNet-44 (0.66 M weights)."""
    return CifarResNet(44, num_classes, **kw)


@register_model
def resnet56(num_classes: int = 10, **kw) -> nn.Module:
    """CIFAR ResNet-56 (0.85 M weights)."""
    return CifarResNet(56, num_classes, **kw)


@register_model
def democnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    """Small 4-conv CNN for the 2-CPU-core demo (≈0.06 M weights)."""
    w = width

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, w), nn.MaxPool2d(2),
        *block(w, 2 * w), nn.MaxPool2d(2),
        *block(2 * w, 4 * w), nn.MaxPool2d(2),
        *block(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
    )  # fmt: skip


# --- attention's input projection as a layer -----------------------------------------------


class CrossbarMultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` whose fused query/key/value input projection is a
    ``Linear`` layer (``in_proj``) rather than a bare parameter, so that it is a crossbar layer
    like every other weight-stationary product: faulted in training, programmed into cells on
    export. It computes exactly what the original does (``in_proj_weight`` and ``in_proj_bias``
    read the layer's), and loads state dicts written either way."""

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias


#: State-dict names of the fused projection in ``torch.nn.MultiheadAttention`` and here.
FUSED_PROJECTION_KEYS = {"in_proj_weight": "in_proj.weight", "in_proj_bias": "in_proj.bias"}


def attention_projections_as_layers(model: nn.Module) -> nn.Module:
    """``model`` with every ``torch.nn.MultiheadAttention`` that fuses its input projection
    (query, key and value of one size) turned, in place, into a
    :class:`CrossbarMultiheadAttention` holding the same weights."""
    for module in model.modules():
        if type(module) is not nn.MultiheadAttention or not module._qkv_same_embed_dim:
            continue
        weight = module._parameters.pop("in_proj_weight")
        bias = module._parameters.pop("in_proj_bias", None)
        projection = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                               device=weight.device, dtype=weight.dtype)  # fmt: skip
        with torch.no_grad():
            projection.weight.copy_(weight)
            if bias is not None:
                projection.bias.copy_(bias)
        module.__class__ = CrossbarMultiheadAttention
        module.in_proj = projection
    return model


def with_layer_names(state: dict, model: nn.Module) -> dict:
    """``state`` with the fused attention projections' parameters under the names ``model``
    gives them (``...in_proj.weight``): a state dict saved from a plain torchvision model (its
    published weights) names them ``...in_proj_weight``."""
    prefixes = {name + "." for name, m in model.named_modules() if isinstance(m, CrossbarMultiheadAttention)}
    if not prefixes:
        return state
    renamed = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix + "." in prefixes and leaf in FUSED_PROJECTION_KEYS:
            key = f"{prefix}.{FUSED_PROJECTION_KEYS[leaf]}"
        renamed[key] = value
    return renamed


# --- what lands on the crossbars ------------------------------------------------------------

DEPLOYED_TYPES = (nn.Conv2d, nn.Linear)


def deployed_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear, in module order: the canonical order of layers in the chip,
    the ONNX metadata and the random stream of each simulated chip."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DEPLOYED_TYPES)]


def digital_parameters(model: nn.Module) -> list[dict]:
    """Every parameter that is not a crossbar layer's weight, by module: what the chip's digital
    periphery holds and computes with (biases, norms, a vision transformer's class token and
    position embedding). Products of two activations (attention's scores and their weighting of
    the values) have no weights and are digital too. Each record: module name, its type, the
    parameter names and their element count."""
    on_cells = {id(m.weight) for _, m in deployed_layers(model)}
    records = []
    for name, module in model.named_modules():
        own = [(p_name, p) for p_name, p in module.named_parameters(recurse=False) if id(p) not in on_cells]
        if own:
            records.append({"name": name or "(model)", "type": type(module).__name__,
                            "parameters": [p_name for p_name, _ in own], "values": sum(p.numel() for _, p in own)})  # fmt: skip
    return records


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """conv name -> name of the BatchNorm that consumes its output and nothing else.

    Found on the traced graph (torch.fx) rather than by naming convention, so a user's model
    works as long as it traces."""
    try:
        graph = _traced(model).graph
    except Exception as exc:  # fx raises many types; the user needs to know tracing failed
        raise ModelError(f"cannot trace model to find conv→BatchNorm pairs: {exc}") from None
    modules = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(modules.get(users[0].target), nn.BatchNorm2d):
            pairs[node.target] = users[0].target
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every conv→BN pair folded into the conv (BN removed): exactly
    the network a chip computes. Leaves ``model`` untouched."""
    import copy

    from torch.fx.experimental.optimization import fuse

    was_training = model.training
    model.eval()
    try:
        folded = fuse(_traced(copy.deepcopy(model)), inplace=True, no_trace=True)
    finally:
        model.train(was_training)
    return folded.eval()


class _Tracer(torch.fx.Tracer):
    """fx's tracer, keeping every attention block whole as it keeps torch's own (its forward
    branches on its inputs, which symbolic tracing cannot follow)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.MultiheadAttention) or super().is_leaf_module(m, module_qualified_name)


def _traced(model: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(model, _Tracer().trace(model))


def count_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in deployed_layers(model))
