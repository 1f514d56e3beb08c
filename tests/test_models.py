"""Model registry, CIFAR ResNets, conv->BN pairs and BatchNorm folding."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ftdeploy.errors import ModelError
from ftdeploy.models import (
    CifarResNet,
    conv_bn_pairs,
    count_weights,
    create_model,
    deployed_layers,
    fold_batchnorm,
    list_models,
)

#: Folding multiplies the BN scale into the weights before the convolution sums instead of
#: after, which reorders float32 rounding. The unfolded float32 ResNet-20 itself differs from a
#: float64 reference by ~2e-7 of its output range, so 1e-5 of the output range is what float32
#: can promise with a 50x margin; a wrong fold (e.g. a missed BN or eps) is off by >1e-2.
FOLD_RTOL_OF_RANGE = 1e-5


def _cifar_resnet_counts(depth: int, num_classes: int = 10) -> tuple[int, int]:
    """(all parameters, conv+linear weights) of a 6n+2 CIFAR ResNet with option-A shortcuts,
    counted from the architecture (He et al. 2016), independently of the code under test."""
    n = (depth - 2) // 6
    weights = 3 * 16 * 9
    bn = 2 * 16
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            weights += cin * width * 9 + width * width * 9
            bn += 2 * (2 * width)
            cin = width
    weights += 64 * num_classes
    return weights + num_classes + bn, weights


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_listing():
    names = [n for n, _ in list_models()]
    assert names == sorted(names)
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "democnn"} <= set(names)
    assert [n for n, _ in list_models("resnet*")] == ["resnet20", "resnet32", "resnet44", "resnet56"]
    assert list_models("nothing*") == []
    descriptions = dict(list_models())
    assert all(descriptions.values())
    assert "0.27 M" in descriptions["resnet20"] and "CIFAR-10" in descriptions["resnet20"]


def test_registry_descriptions_state_the_right_size():
    """`ftdeploy models` prints these lines; a size in them must match the model."""
    import re

    descriptions = dict(list_models())
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "democnn"):
        m = re.search(r"(\d+\.\d+) M weights", descriptions[name])
        assert m, descriptions[name]
        assert round(count_weights(create_model(name)) / 1e6, 2) == pytest.approx(float(m.group(1)), abs=0.005), name


@pytest.mark.parametrize("depth,millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)])
def test_cifar_resnet_sizes(depth, millions):
    model = create_model(f"resnet{depth}")
    total, weights = _cifar_resnet_counts(depth)
    assert _params(model) == total
    assert count_weights(model) == weights
    assert round(weights / 1e6, 2) == millions  # as the registry's description says
    convs = [m for _, m in deployed_layers(model) if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth - 1 and all(c.bias is None for c in convs)
    assert _params(create_model(f"resnet{depth}", num_classes=100)) == _cifar_resnet_counts(depth, 100)[0]


def test_resnet20_is_the_paper_size_and_runs():
    model = create_model("resnet20", num_classes=100)
    assert _params(model) == 275_572  # 269,722 with 10 classes; ~0.27 M
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 100)
    wide = create_model("resnet20", width=8)
    assert wide(torch.zeros(1, 3, 16, 16)).shape == (1, 10) and _params(wide) < _params(model)


def test_democnn():
    model = create_model("democnn", num_classes=7)
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 7)
    assert count_weights(model) == 3 * 16 * 9 + 16 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9 + 64 * 7


def test_bad_depth():
    with pytest.raises(ModelError, match="depth must be 6n\\+2, found 21"):
        CifarResNet(21)


def test_torchvision_model():
    model = create_model("tv:resnet18", num_classes=10)
    assert _params(model) == 11_181_642 and model.fc.out_features == 10
    with pytest.raises(ModelError, match=r"model 'tv:resnet1800': torchvision has no model 'resnet1800'"):
        create_model("tv:resnet1800")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"ftdeploy_user_models_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        import torch.nn as nn

        def tiny(num_classes=10, hidden=4):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

        def not_a_model(num_classes=10):
            return "a string"

        def broken(num_classes=10):
            raise RuntimeError("no weights for this size")
    '''))  # fmt: skip
    (tmp_path / f"{name}_bad.py").write_text("raise RuntimeError('this module needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_factory(user_module):
    model = create_model(f"{user_module}:tiny", num_classes=3, hidden=5)
    assert model(torch.zeros(2, 3, 4, 4)).shape == (2, 3)
    assert model[1].out_features == 5
    with pytest.raises(ModelError, match=f"model '{user_module}:nope': module '{user_module}' \\(.*\\) has no attribute 'nope'"):
        create_model(f"{user_module}:nope")
    with pytest.raises(ModelError, match="factory returned str, expected a torch.nn.Module"):
        create_model(f"{user_module}:not_a_model")
    with pytest.raises(ModelError, match="cannot import module 'no_such_package_xyz.models' \\(No module named 'no_such_package_xyz'\\)"):
        create_model("no_such_package_xyz.models:f")
    # the user's code failing in any way is still one ModelError line
    with pytest.raises(ModelError, match=f"module '{user_module}_bad' failed to import: RuntimeError: this module needs a GPU"):
        create_model(f"{user_module}_bad:f")
    with pytest.raises(ModelError, match=r"factory raised RuntimeError: no weights for this size"):
        create_model(f"{user_module}:broken")


@pytest.mark.parametrize("name", ["resnet21", "ResNet20", "vgg16", ""])
def test_unknown_name_says_what_to_type(name):
    with pytest.raises(ModelError) as exc:
        create_model(name)
    msg = str(exc.value)
    assert msg.startswith(f"model {name!r}: unknown; use one of democnn, resnet20, resnet32, resnet44, resnet56")
    assert "tv:NAME" in msg and "package.module:factory" in msg and "\n" not in msg


# --- conv -> BatchNorm pairs -------------------------------------------------------------------


def test_conv_bn_pairs_resnet20():
    model = create_model("resnet20")
    pairs = conv_bn_pairs(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(pairs) == len(convs) == 19
    assert pairs["conv1"] == "bn1"
    for conv, bn in pairs.items():
        assert conv.endswith(("conv1", "conv2")) and bn == conv[:-5] + "bn" + conv[-1]
        assert isinstance(dict(model.named_modules())[bn], nn.BatchNorm2d)


def test_conv_bn_pairs_democnn():
    assert conv_bn_pairs(create_model("democnn")) == {"0": "1", "4": "5", "8": "9", "12": "13"}


class _Tricky(nn.Module):
    """Only ``a`` -> ``bn_a`` is foldable: ``b`` has a ReLU before its BN, ``c`` feeds its BN
    and a skip, ``d`` has no BN, and ``bn_e`` normalises an input, not a conv."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.d = nn.Conv2d(4, 4, 1)
        self.bn_e = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.bn_a(self.a(self.bn_e(x)))
        y = self.bn_b(F.relu(self.b(y)))
        c = self.c(y)
        y = self.bn_c(c) + c
        return self.d(y)


def test_conv_bn_pairs_only_direct_single_use():
    assert conv_bn_pairs(_Tricky()) == {"a": "bn_a"}


def test_untraceable_model():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ModelError, match="cannot trace model to find conv→BatchNorm pairs"):
        conv_bn_pairs(Dynamic())


# --- BatchNorm folding ---------------------------------------------------------------------------


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


@pytest.mark.parametrize("name", ["resnet20", "democnn"])
def test_fold_batchnorm_preserves_eval_outputs(name):
    torch.manual_seed(0)
    model = _randomize_bn(create_model(name))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert model.training  # the caller's mode is restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert not folded.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert len(deployed_layers(folded)) == len(deployed_layers(model))
    assert all(m.bias is not None for _, m in deployed_layers(folded))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(x)
        got = folded(x)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= FOLD_RTOL_OF_RANGE * scale
    # and the statistics really were folded in: the same weights with identity BN differ a lot
    plain = create_model(name)
    plain.load_state_dict(model.state_dict())
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # mean 0, var 1, gamma 1, beta 0
    with torch.no_grad():
        assert (fold_batchnorm(plain)(x) - got).abs().max().item() > 100 * FOLD_RTOL_OF_RANGE * scale


def test_fold_keeps_unpaired_batchnorm():
    model = _randomize_bn(_Tricky()).eval()
    folded = fold_batchnorm(model)
    remaining = {n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert "bn_a" not in remaining and {"bn_b", "bn_c", "bn_e"} <= remaining
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-6)
