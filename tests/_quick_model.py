"""A real (if weak) ftdeploy checkpoint in about a second: democnn after a few dozen SGD steps
on the embedded data, saved in train's checkpoint format. Used by the export and verify tests,
which need trained weights and BatchNorm statistics but not a good model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ftdeploy.data import DataBundle, normalize
from ftdeploy.models import create_model
from ftdeploy.profiles import Target
from ftdeploy.chip import deployed_accuracy
from ftdeploy.training.checkpoint import checkpoint_record, save_atomic
from ftdeploy.training.config import TrainConfig

STEPS = 30
BATCH = 32


def quick_checkpoint(bundle: DataBundle, target: Target, out: Path, seed: int = 0) -> Path:
    """Train democnn for STEPS steps (train-mode BN, so its statistics are real), write
    out/model.pt exactly as ``ftdeploy train --method pretrain`` would, and return its path."""
    torch.manual_seed(seed)
    model = create_model("democnn", num_classes=bundle.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(bundle.train_y), generator=torch.Generator().manual_seed(seed))
    model.train()
    for step in range(STEPS):
        idx = order[step * BATCH : (step + 1) * BATCH]
        loss = F.cross_entropy(model(normalize(bundle.train_x[idx], bundle.mean, bundle.std)), bundle.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    config = TrainConfig(model="democnn", method="pretrain", epochs=1, device="cpu", seed=seed)
    clean, _ = deployed_accuracy(model, target, bundle, "cpu")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = checkpoint_record(config, bundle, target, state, "demo", None, None, clean, 1)
    path = Path(out) / "model.pt"
    save_atomic(ckpt, path)
    return path


def tiny_vit(num_classes: int = 10) -> torch.nn.Module:
    """torchvision's VisionTransformer, vit_b_16's classes and graph at a ten-thousandth of its
    size (2 layers of width 32, 16-px patches of 32x32 images): ``_quick_model:tiny_vit``."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=num_classes)  # fmt: skip
