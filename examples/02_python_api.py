"""The Python API: load a profile, build the chip view of a model, and measure it on simulated
faulty chips with the torch fast path (the same chips `ftdeploy verify` simulates).

    python examples/02_python_api.py runs/example/progressive/model.pt
"""

import sys

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_data
from ftdeploy.faults import StuckAt
from ftdeploy.profiles import load_profile
from ftdeploy.train import load_checkpoint, model_from_checkpoint

resolved = load_profile("demo")
ckpt = load_checkpoint(sys.argv[1])
data = load_data()  # the embedded subset; its validation part was never trained on
net = DeployedNetwork(model_from_checkpoint(ckpt), resolved.target)
print(f"{len(net.layers)} crossbar layers, mapping: {net.mapping.describe()}")
print(f"fault-free: {net.accuracy(data.val_x, data.val_y, data.mean, data.std):.2f} %")
for rate in resolved.profile.signoff.rates:
    chips = net.chip_accuracies(StuckAt.from_total(rate, resolved.profile.faults.split), rate, 5, 0,
                                data.val_x, data.val_y, data.mean, data.std)
    print(f"P_sa={rate:g}: mean {sum(chips) / len(chips):.2f} % over {len(chips)} chips")
