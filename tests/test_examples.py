"""The examples stay runnable: their profile validates and the user-model factory plugs in."""

import sys
from pathlib import Path

import torch

from ftdeploy.models import create_model, deployed_layers
from ftdeploy.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent


def test_example_profile_resolves_its_relative_target():
    r = load_profile(ROOT / "examples" / "profiles" / "my-chip.yaml")
    assert r.target.name == "offset-8"
    assert r.profile.faults.pair == (0.0005, 0.002)
    assert (r.profile.training.rate_warmup_epochs, r.profile.training.clean_steps) == (1, 0.25)


def test_user_model_factory_by_module_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.my_model", None)
    model = create_model("examples.my_model:build", num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [type(m).__name__ for _, m in deployed_layers(model)] == ["Conv2d", "Conv2d", "Linear"]
