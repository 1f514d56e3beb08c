"""A user's own model for `--model examples.my_model:build` (run with PYTHONPATH=. from the
repository root). The factory takes num_classes and returns an nn.Module; every Conv2d and
Linear lands on crossbars. A BatchNorm right after a conv is placed as the profile's target says
(`batchnorm`): the demo profile's target, paper-diff8, applies it in the digital periphery after
the crossbar (the cells hold the conv weights); a `batchnorm: fold` target folds it into the cells.

    PYTHONPATH=. ftdeploy train --profile demo --model examples.my_model:build --method pretrain --out runs/mine
"""

import torch.nn as nn


def build(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes),
    )
